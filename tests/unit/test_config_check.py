"""src/config_check.py: deploy.py builds Ray's real LLMConfig objects and checks
ENGINE_KWARGS against vLLM's engine arguments before anything starts.

The checks run the real Ray Serve LLM and vLLM (CPU build) of the test venv;
a `deploy.py --dry-run` process takes about 6 s on 2 cores, so most run
`main()` in the test process (support/deploy_main.py).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from config_check import engine_kwargs_problems
from support import REPO_ROOT, clean_env
from support.deploy_main import Ran, deploy_main


def dry_run(**environ: str) -> Ran:
    """deploy.py --dry-run, in this process (one import of vLLM per session)."""
    return deploy_main("--dry-run", **environ)


def dry_run_process(**environ: str) -> subprocess.CompletedProcess[str]:
    """deploy.py --dry-run as the command: what it imported shows in its output."""
    return subprocess.run([sys.executable, str(REPO_ROOT / "src" / "deploy.py"), "--dry-run"],
                          env=clean_env(**environ), text=True, capture_output=True, timeout=120, check=False)


def test_closest_valid_name_is_suggested() -> None:
    valid = {"max_num_batched_tokens", "enforce_eager", "max_model_len"}
    problems = engine_kwargs_problems({"max_num_batched_token": 1, "enforce_eager": True, "zzz": 1}, valid)
    assert len(problems) == 2
    assert "'max_num_batched_token'" in problems[0] and "did you mean 'max_num_batched_tokens'?" in problems[0]
    assert "'zzz'" in problems[1] and "did you mean" not in problems[1]
    assert engine_kwargs_problems({}, valid) == []


def test_engine_kwargs_typo_is_a_configuration_error() -> None:
    out = dry_run(ENGINE_KWARGS='{"max_num_batched_token": 4096, "enable_prefix_caching": false}')
    assert out.returncode == 2, out.stderr
    assert "configuration error, nothing was started" in out.stderr
    assert "ENGINE_KWARGS key 'max_num_batched_token' is not a vLLM engine or frontend argument" in out.stderr
    assert "did you mean 'max_num_batched_tokens'?" in out.stderr
    assert "enable_prefix_caching" not in out.stderr  # a real engine argument passes
    assert out.stdout == ""


def test_valid_engine_kwargs_reach_the_checked_config() -> None:
    out = dry_run(ENGINE_KWARGS='{"max_num_batched_tokens": 4096, "enforce_eager": true}')
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    kwargs = data["serving_args"]["llm_configs"][0]["engine_kwargs"]
    assert kwargs["max_num_batched_tokens"] == 4096 and kwargs["enforce_eager"] is True
    assert "checked with Ray Serve LLM's LLMConfig and vLLM's engine arguments" in out.stderr


def test_tool_calling_and_reasoning_arguments_pass_as_ray_splits_them() -> None:
    """vLLM's frontend arguments (FrontendArgs) are accepted next to the engine's,
    as a new user tries them (issue 26): Ray's own VLLMEngineConfig then puts
    them into frontend_kwargs and engine_kwargs."""
    kwargs = {"enable_auto_tool_choice": True, "tool_call_parser": "hermes", "reasoning_parser": "qwen3"}
    out = dry_run(ENGINE_KWARGS=json.dumps(kwargs))
    assert out.returncode == 0, out.stderr
    built = json.loads(out.stdout)["serving_args"]["llm_configs"][0]["engine_kwargs"]
    assert {k: built[k] for k in kwargs} == kwargs
    from ray.serve.llm import LLMConfig

    engine = LLMConfig(model_loading_config={"model_id": "m"}, engine_kwargs=kwargs,
                       accelerator_config={"kind": "cpu"}).get_engine_config()
    assert engine.frontend_kwargs == {"enable_auto_tool_choice": True, "tool_call_parser": "hermes"}
    assert engine.engine_kwargs["reasoning_parser"] == "qwen3"


def test_unknown_parsers_and_auto_choice_without_parser_are_refused() -> None:
    out = dry_run(ENGINE_KWARGS='{"tool_call_parser": "hermess", "reasoning_parser": "nope"}')
    assert out.returncode == 2, out.stderr
    assert "ENGINE_KWARGS tool_call_parser='hermess' is not a parser this vLLM knows: did you mean 'hermes'?" in out.stderr
    assert "ENGINE_KWARGS reasoning_parser='nope' is not a parser this vLLM knows: expected one of " in out.stderr
    out = dry_run(ENGINE_KWARGS='{"enable_auto_tool_choice": true, "tool_call_patser": "hermes"}')
    assert out.returncode == 2
    assert "'tool_call_patser' is not a vLLM engine or frontend argument: did you mean 'tool_call_parser'?" in out.stderr
    assert "enable_auto_tool_choice needs tool_call_parser too" in out.stderr


def test_ray_rejection_names_our_variable() -> None:
    """settings.py cannot know Ray's accelerator list; Ray's own LLMConfig model does."""
    out = dry_run(ACCELERATOR_TYPE="NOT-A-GPU")
    assert out.returncode == 2, out.stderr
    assert "ACCELERATOR_TYPE: Ray Serve LLM rejected accelerator_type" in out.stderr
    assert "NOT-A-GPU" in out.stderr and out.stdout == ""


@pytest.mark.parametrize("device", ["gpu", "cpu"])
def test_default_configuration_passes_rays_model(device: str) -> None:
    out = dry_run(DEVICE=device)
    assert out.returncode == 0, out.stderr
    assert "configuration checked with Ray Serve LLM's LLMConfig in" in out.stderr
    json.loads(out.stdout)  # stdout is the JSON alone, vLLM's import logs go to stderr


def test_pure_modules_import_without_ray_or_vllm() -> None:
    code = ("import sys; import settings, llm_config, config_check, openai_errors, engine_watchdog; "
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'vllm', 'torch')); "
            "print(heavy); sys.exit(1 if heavy else 0)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT / "src", env=clean_env(), text=True,
                         capture_output=True, timeout=60, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def test_bad_variable_fails_before_ray_is_imported() -> None:
    """The fast path: a bad setting is refused without the 5 s import."""
    out = dry_run_process(MAX_NUM_SEQS="lots")
    assert out.returncode == 2 and "MAX_NUM_SEQS='lots'" in out.stderr
    assert "configuration checked" not in out.stderr and "Triton" not in out.stderr


def test_direct_streaming_lever_builds_without_an_ingress_config() -> None:
    """build_openai_app refuses ingress_deployment_config with direct streaming (alpha lever)."""
    out = dry_run(DEVICE="cpu", RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING="1", STREAM_BATCHING_INTERVAL_MS="0")
    assert out.returncode == 0, out.stderr
    args = json.loads(out.stdout)["serving_args"]
    assert "ingress_deployment_config" not in args
    assert args["llm_configs"][0]["experimental_configs"] == {"stream_batching_interval_ms": 0,
                                                              "stream_first_chunk_at_once": True}
    bad = dry_run(RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING="yes")
    assert bad.returncode == 2 and "RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING='yes'" in bad.stderr


def test_prefix_cache_router_reaches_rays_deployment_config() -> None:
    out = dry_run(REQUEST_ROUTER="prefix-cache", REQUEST_ROUTER_KWARGS='{"imbalanced_threshold": 8}')
    assert out.returncode == 0, out.stderr
    config = json.loads(out.stdout)["serving_args"]["llm_configs"][0]["deployment_config"]
    assert config["request_router_config"] == {
        "request_router_class": "ray.serve.llm.request_router.PrefixCacheAffinityRouter",
        "request_router_kwargs": {"imbalanced_threshold": 8}}
    from ray.serve.config import RequestRouterConfig

    RequestRouterConfig(**config["request_router_config"])  # Ray's own model accepts it


def test_router_knobs_are_rays_own() -> None:
    """settings.PREFIX_ROUTER_KNOBS (pure, no Ray import) against the installed
    Ray: an upgrade that renames a knob fails here, loudly."""
    import inspect

    from ray.serve.llm.request_router import PrefixCacheAffinityRouter

    from settings import PREFIX_ROUTER_KNOBS, ROUTERS

    params = set(inspect.signature(PrefixCacheAffinityRouter.initialize_state).parameters) - {"self", "tree_actor"}
    assert params == set(PREFIX_ROUTER_KNOBS)
    import importlib

    for path in filter(None, ROUTERS.values()):
        module, _, name = path.rpartition(".")
        assert getattr(importlib.import_module(module), name)


def test_kv_aware_router_is_refused_without_dynamo() -> None:
    out = dry_run(REQUEST_ROUTER="kv-aware")
    assert out.returncode == 2
    assert "REQUEST_ROUTER=kv-aware (model Qwen/Qwen2.5-1.5B-Instruct) needs the ai-dynamo package" in out.stderr


def test_router_knob_typos_are_named() -> None:
    out = dry_run(REQUEST_ROUTER="prefix-cache", REQUEST_ROUTER_KWARGS='{"imbalance_threshold": 8}')
    assert out.returncode == 2
    assert "REQUEST_ROUTER_KWARGS key 'imbalance_threshold' is invalid: expected one of imbalanced_threshold" in out.stderr
    out = dry_run(REQUEST_ROUTER_KWARGS='{"imbalanced_threshold": 8}')
    assert "the pow2 router takes no knobs" in out.stderr
