"""MODELS_FILE: several models from one stack, validated per entry (no Ray needed
except where Ray's own models check the result)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

import llm_config
from support.deploy_main import Ran, deploy_main
from settings import DEFAULTS, ConfigError, parse_settings, read_models_file

TWO = """
models:
  - MODEL_ID: Qwen/Qwen2.5-1.5B-Instruct
    SERVED_MODEL_NAME: chat
    MAX_NUM_SEQS: 32
    ENGINE_KWARGS: {enable_prefix_caching: true}
  - MODEL_ID: Qwen/Qwen2.5-0.5B-Instruct
    SERVED_MODEL_NAME: small
    MAX_REPLICAS: 2
    GPU_MEMORY_UTILIZATION: 0.5
"""


def env(**overrides: str) -> dict[str, str]:
    """.env's defaults with the single model emptied, as MODELS_FILE needs."""
    return {**DEFAULTS, "MODEL_ID": "", "GPUS_PER_NODE": "4", **overrides}


def problems(text: str, **overrides: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_settings(env(**overrides), textwrap.dedent(text))
    return info.value.problems


def test_each_entry_gets_its_own_settings_over_the_env_defaults() -> None:
    s = parse_settings(env(MAX_MODEL_LEN="4096"), TWO)
    chat, small = s.served
    assert (chat.served_model_name, chat.model_id, chat.max_num_seqs) == ("chat", "Qwen/Qwen2.5-1.5B-Instruct", 32)
    assert chat.engine_kwargs == {"enable_prefix_caching": True}
    assert (small.served_model_name, small.max_replicas, small.gpu_memory_utilization) == ("small", 2, 0.5)
    # What an entry leaves out comes from .env.
    assert small.max_num_seqs == int(DEFAULTS["MAX_NUM_SEQS"]) and chat.max_model_len == small.max_model_len == 4096
    assert s.served_model_name == "chat" and s.models == s.served


def test_serving_args_hold_one_llm_config_per_model_behind_one_ingress() -> None:
    from ray.serve.llm import LLMServingArgs

    args = llm_config.serving_args(parse_settings(env(), TWO))
    names = [c["model_loading_config"]["model_id"] for c in args["llm_configs"]]
    assert names == ["chat", "small"]
    assert args["llm_configs"][1]["deployment_config"]["autoscaling_config"]["max_replicas"] == 2
    assert args["llm_configs"][0]["engine_kwargs"]["enable_prefix_caching"] is True
    assert args["ingress_deployment_config"]["num_replicas"] == 1
    LLMServingArgs.model_validate(args)


@pytest.mark.parametrize(("text", "expected"), [
    ("models: [", "MODELS_FILE is invalid: not YAML at line 1"),
    ("models: []", "expected a non-empty list under `models:`"),
    ("- MODEL_ID: a/b", "expected a non-empty list under `models:`"),
    ("models: [a/b]", "MODELS_FILE entry 1 is invalid: expected a mapping of variables"),
])
def test_a_malformed_file_is_named(text: str, expected: str) -> None:
    found = problems(text)
    assert len(found) == 1 and expected in found[0], found


def test_entry_errors_name_the_entry_and_the_field() -> None:
    found = problems("""
        models:
          - {MODEL_ID: a/one, SERVED_MODEL_NAME: one}
          - {MODEL_ID: a/two, SERVED_MODEL_NAME: chat, MAX_NUM_SEQS: x, DTYPE: fp7}
          - {MODEL_ID: a/three, RAY_API_PORT: 9000, COLOUR: red}
          - {SERVED_MODEL_NAME: nameless}
    """)
    assert "MODELS_FILE entry 2 (chat): MAX_NUM_SEQS='x' is invalid: expected an integer >= 1." in found
    assert any(p.startswith("MODELS_FILE entry 2 (chat): DTYPE='fp7' is invalid") for p in found), found
    assert any(p.startswith("MODELS_FILE entry 3 (a/three): RAY_API_PORT is the stack's own: set it in .env")
               for p in found), found
    assert any(p.startswith("MODELS_FILE entry 3 (a/three): COLOUR is not a per-model variable") for p in found)
    assert "MODELS_FILE entry 4 (nameless): MODEL_ID is missing: every entry names its model (a Hugging Face id)." \
        in found
    assert not any("entry 1" in p for p in found), found


def test_a_bad_env_default_is_reported_once_without_an_entry() -> None:
    found = problems(TWO, DTYPE="fp7", RAY_API_PORT="0")
    assert sorted(p.split("=")[0] for p in found) == ["DTYPE", "RAY_API_PORT"], found


@pytest.mark.parametrize("name", ["MODEL_ID", "SERVED_MODEL_NAME", "MODEL_SOURCE"])
def test_single_model_variables_and_models_file_together_are_refused(name: str) -> None:
    found = problems(TWO, **{name: "org/leftover"})
    assert len(found) == 1 and found[0].startswith(f"{name}='org/leftover' is set as well as MODELS_FILE"), found


def test_two_entries_with_one_name_are_refused() -> None:
    found = problems("models: [{MODEL_ID: a/b}, {MODEL_ID: c/d, SERVED_MODEL_NAME: a/b}]")
    assert found == ["MODELS_FILE entries 1 and 2 are both served as 'a/b': expected a different "
                     "SERVED_MODEL_NAME for each."]


def test_the_models_together_must_fit_the_cluster_gpus() -> None:
    text = """
        models:
          - {MODEL_ID: a/big, TENSOR_PARALLEL_SIZE: 2, MAX_REPLICAS: 1}
          - {MODEL_ID: a/small, MAX_REPLICAS: 2}
    """
    assert parse_settings(env(GPUS_PER_NODE="4"), textwrap.dedent(text)).served[0].tensor_parallel_size == 2
    found = problems(text, GPUS_PER_NODE="3")
    assert len(found) == 1 and "a/big 1x2 + a/small 2x1 = 4 GPUs at most" in found[0], found
    assert "GPUS_PER_NODE x NUM_NODES = 3 x 1 = 3" in found[0]
    # One entry too large on its own is that entry's error.
    alone = problems("models: [{MODEL_ID: a/huge, TENSOR_PARALLEL_SIZE: 8}]")
    assert alone[0].startswith("MODELS_FILE entry 1 (a/huge): TENSOR_PARALLEL_SIZE x PIPELINE_PARALLEL_SIZE"), alone
    # CPU replicas are not counted against GPUs.
    parse_settings(env(DEVICE="cpu", GPUS_PER_NODE="1"), textwrap.dedent(text))


def test_direct_streaming_serves_one_model_only() -> None:
    found = problems(TWO, RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING="1")
    assert found == ["RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING=1 serves exactly one model (Ray Serve LLM), but "
                     "MODELS_FILE lists 2: set it to 0, or list one model."]


def test_models_file_is_read_relative_to_the_compose_folder(tmp_path: Path) -> None:
    (tmp_path / "docker").mkdir()
    (tmp_path / "models.yaml").write_text(TWO)
    assert read_models_file({"MODELS_FILE": "../models.yaml"}, tmp_path / "docker") == TWO
    assert read_models_file({"MODELS_FILE": str(tmp_path / "models.yaml")}) == TWO
    assert read_models_file({"MODELS_FILE": " "}) is None
    with pytest.raises(ConfigError) as info:
        read_models_file({"MODELS_FILE": "../nowhere.yaml"}, tmp_path / "docker")
    assert info.value.problems[0].startswith("MODELS_FILE='../nowhere.yaml' cannot be read (")


def run_deploy(*args: str, **environ: str) -> Ran:
    return deploy_main(*args, **environ)


def test_dry_run_serves_every_model_and_checks_each_entrys_engine_kwargs(tmp_path: Path) -> None:
    models = tmp_path / "models.yaml"
    models.write_text(TWO)
    out = run_deploy("--dry-run", MODELS_FILE=str(models), MODEL_ID="", GPUS_PER_NODE="3")
    assert out.returncode == 0, out.stderr
    configs = json.loads(out.stdout)["serving_args"]["llm_configs"]
    assert [c["model_loading_config"]["model_id"] for c in configs] == ["chat", "small"]
    models.write_text(TWO.replace("enable_prefix_caching", "enable_prefix_cachin"))
    bad = run_deploy("--dry-run", MODELS_FILE=str(models), MODEL_ID="", GPUS_PER_NODE="3")
    assert bad.returncode == 2, bad.stderr
    assert ("MODELS_FILE entry 1 (chat): ENGINE_KWARGS key 'enable_prefix_cachin' is not a vLLM engine or frontend argument: "
            "did you mean 'enable_prefix_caching'?") in bad.stderr
    # The committed .env names a MODEL_ID: leaving it is the error, before Ray.
    both = run_deploy("--dry-run", MODELS_FILE=str(models), GPUS_PER_NODE="3")
    assert both.returncode == 2 and "MODEL_ID='Qwen/Qwen2.5-1.5B-Instruct' is set as well as MODELS_FILE" in both.stderr
