"""Unit tests for the pure settings parser and the config builder."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

import llm_config
from support import REPO_ROOT, clean_env
from support.deploy_main import deploy_main
from pydantic import ValidationError

from settings import DEFAULTS, SERVER_VARIABLES, ConfigError, parse_settings


def env(**overrides: str) -> dict[str, str]:
    return {**DEFAULTS, **overrides}


def problems(**overrides: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_settings(env(**overrides))
    return info.value.problems


def test_defaults_fit_a_single_gpu_box() -> None:
    s = parse_settings(env())
    assert s.device == "gpu"
    assert s.tensor_parallel_size == 1 and s.pipeline_parallel_size == 1
    assert s.served_model_name == s.model_id == "Qwen/Qwen2.5-1.5B-Instruct"
    assert s.ray_address is None


def test_settings_are_frozen() -> None:
    s = parse_settings(env())
    with pytest.raises(ValidationError, match="frozen"):
        s.model_id = "x"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("TENSOR_PARALLEL_SIZE", "two", "expected an integer >= 1"),
        ("TENSOR_PARALLEL_SIZE", "0", "expected an integer >= 1"),
        ("PIPELINE_PARALLEL_SIZE", "-1", "expected an integer >= 1"),
        ("MAX_NUM_SEQS", "1.5", "expected an integer >= 1"),
        ("MAX_MODEL_LEN", "0", "expected an integer >= 1"),
        ("TARGET_ONGOING_REQUESTS", "0", "expected an integer >= 1"),
        ("MIN_REPLICAS", "-1", "expected an integer >= 0"),
        ("MAX_REPLICAS", "0", "expected an integer >= 1"),
        ("GPUS_PER_NODE", "0", "expected an integer >= 1"),
        ("GPU_MEMORY_UTILIZATION", "0", "expected a number in (0, 1]"),
        ("GPU_MEMORY_UTILIZATION", "1.01", "expected a number in (0, 1]"),
        ("GPU_MEMORY_UTILIZATION", "ninety", "expected a number in (0, 1]"),
        ("ENGINE_KWARGS", "{not json", "expected a JSON object"),
        ("ENGINE_KWARGS", "[1, 2]", "expected a JSON object"),
        ("RAY_API_PORT", "0", "expected an integer from 1 to 65535"),
        ("RAY_DASHBOARD_PORT", "65536", "expected an integer from 1 to 65535"),
        ("DTYPE", "fp7", "expected one of auto, half, float16, bfloat16, float, float32"),
        ("DEVICE", "tpu", "expected one of gpu, cpu"),
        ("MODEL_ID", "", "must not be empty"),
        ("MODEL_ID", "a model", "must not contain whitespace"),
        ("QUANTIZATION", "awq;rm", "quantization method"),
        ("INGRESS_REPLICAS", "0", "expected an integer from 1 to 64"),
    ],
)
def test_each_bad_value_names_variable_value_and_rule(name: str, value: str, expected: str) -> None:
    found = problems(**{name: value})
    assert len(found) == 1, found
    assert found[0].startswith(f"{name}={value!r}"), found
    assert expected in found[0]


def test_min_greater_than_max_replicas() -> None:
    found = problems(MIN_REPLICAS="3", MAX_REPLICAS="2", GPUS_PER_NODE="8")
    assert found == ["MIN_REPLICAS=3 is greater than MAX_REPLICAS=2: expected MIN_REPLICAS <= MAX_REPLICAS."]


def test_clashing_ports() -> None:
    found = problems(RAY_API_PORT="8265")
    assert found == ["RAY_DASHBOARD_PORT=8265 clashes with RAY_API_PORT=8265: expected different ports."]
    assert "clashes with RAY_API_PORT" in problems(NGINX_HTTP_PORT="8000")[0]


def test_replica_larger_than_the_cluster_is_refused() -> None:
    found = problems(TENSOR_PARALLEL_SIZE="4", GPUS_PER_NODE="2")
    assert found == ["TENSOR_PARALLEL_SIZE x PIPELINE_PARALLEL_SIZE = 4 x 1 = 4 bundles per replica (1 GPU each), "
                     "but the cluster has GPUS_PER_NODE x NUM_NODES = 2 x 1 = 2 GPUs: one replica can never be "
                     "scheduled."]
    found = problems(MAX_REPLICAS="3", GPUS_PER_NODE="2")
    assert len(found) == 1 and "MAX_REPLICAS=3" in found[0] and "could never be scheduled" in found[0]
    # Two nodes of two GPUs hold TP=4, but not two such replicas.
    multi = {"NUM_NODES": "2", "GPUS_PER_NODE": "2", "TENSOR_PARALLEL_SIZE": "4", "RAY_AUTH_TOKEN": "t"}
    assert parse_settings(env(**multi)).spans_nodes
    assert "MAX_REPLICAS=2" in problems(**multi, MAX_REPLICAS="2")[0]


def test_placement_strategy_rules() -> None:
    base = {"NUM_NODES": "2", "GPUS_PER_NODE": "1", "RAY_AUTH_TOKEN": "t"}
    found = problems(**{**base, "PLACEMENT_STRATEGY": "STRICT_SPREAD", "TENSOR_PARALLEL_SIZE": "3", "GPUS_PER_NODE": "2"})
    assert any(p.startswith("PLACEMENT_STRATEGY=STRICT_SPREAD") and "NUM_NODES=2" in p for p in found), found
    found = problems(**{**base, "GPUS_PER_NODE": "2", "PLACEMENT_STRATEGY": "STRICT_PACK", "TENSOR_PARALLEL_SIZE": "4"})
    assert any(p.startswith("PLACEMENT_STRATEGY=STRICT_PACK") for p in found), found
    assert problems(**base, PLACEMENT_STRATEGY="sideways")[0].startswith("PLACEMENT_STRATEGY='sideways'")
    s = parse_settings(env(**base, PLACEMENT_STRATEGY="STRICT_SPREAD", TENSOR_PARALLEL_SIZE="2"))
    cfg = llm_config.llm_config(s)
    assert cfg["placement_group_config"] == {"bundles": [{"GPU": 1}, {"GPU": 1}], "strategy": "STRICT_SPREAD"}
    assert cfg["engine_kwargs"]["distributed_executor_backend"] == "ray"


def test_single_node_keeps_ray_defaults() -> None:
    cfg = llm_config.llm_config(parse_settings(env(TENSOR_PARALLEL_SIZE="2", GPUS_PER_NODE="2")))
    assert "placement_group_config" not in cfg
    assert "distributed_executor_backend" not in cfg["engine_kwargs"]


def test_multi_node_needs_a_shared_ray_token() -> None:
    found = problems(NUM_NODES="2")
    assert found == ["NUM_NODES=2 but RAY_AUTH_TOKEN is empty: every node of a multi-node cluster must share one "
                     "Ray token (set it in .secrets on each node)."]


def test_all_problems_are_reported_together() -> None:
    found = problems(MODEL_ID="", DTYPE="x", RAY_API_PORT="port")
    assert [p.split("=")[0] for p in found] == ["MODEL_ID", "DTYPE", "RAY_API_PORT"]


def test_cpu_device_rejects_accelerator_type() -> None:
    found = problems(DEVICE="cpu", ACCELERATOR_TYPE="A100")
    assert found == ["ACCELERATOR_TYPE='A100' is invalid: must be empty when DEVICE=cpu (it names a GPU type)."]


def test_api_key_with_special_characters_is_refused_without_echoing_it() -> None:
    for key in ('abc"def', "a b", "a$b", "x;y", "a{b}"):
        found = problems(OPENAI_API_KEY=key)
        assert len(found) == 1 and found[0].startswith("OPENAI_API_KEY")
        assert key not in found[0]
    assert parse_settings(env(OPENAI_API_KEY="sk-Ab_9.~+/=")).openai_api_key == "sk-Ab_9.~+/="


@pytest.mark.parametrize("name", ["HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HUGGINGFACE_TOKEN"])
def test_hf_token_accepts_older_names(name: str) -> None:
    assert parse_settings(env(**{name: "hf_x"})).hf_token == "hf_x"


def test_secrets_stay_out_of_repr() -> None:
    s = parse_settings(env(HF_TOKEN="hf_secret_1", OPENAI_API_KEY="sk-secret-2"))
    assert "hf_secret_1" not in repr(s) and "sk-secret-2" not in repr(s)


def test_ray_address_resolution() -> None:
    assert parse_settings(env(RAY_HEAD_HOST="10.0.0.1")).ray_address == "10.0.0.1:6379"
    assert parse_settings(env(RAY_ADDRESS="auto", RAY_HEAD_HOST="10.0.0.1")).ray_address == "auto"


def test_llm_config_data() -> None:
    s = parse_settings(env(SERVED_MODEL_NAME="chat", MODEL_SOURCE="/models/q", QUANTIZATION="awq",
                           ENGINE_KWARGS='{"max_num_seqs": 8, "enable_prefix_caching": true}',
                           ACCELERATOR_TYPE="L4", MAX_MODEL_LEN=""))
    cfg = llm_config.llm_config(s)
    assert cfg["model_loading_config"] == {"model_id": "chat", "model_source": "/models/q"}
    assert cfg["accelerator_type"] == "L4"
    kwargs = cfg["engine_kwargs"]
    assert kwargs["max_num_seqs"] == 8, "ENGINE_KWARGS must win"
    assert kwargs["enable_prefix_caching"] is True and kwargs["quantization"] == "awq"
    assert "max_model_len" not in kwargs
    assert cfg["deployment_config"]["graceful_shutdown_timeout_s"] == 50.0
    assert cfg["deployment_config"]["autoscaling_config"] == {
        "min_replicas": 1, "max_replicas": 1, "target_ongoing_requests": 32}


def test_cpu_config_requests_no_gpu() -> None:
    s = parse_settings(env(DEVICE="cpu"))
    args = llm_config.serving_args(s)
    cfg = args["llm_configs"][0]
    assert cfg["accelerator_config"] == {"kind": "cpu"}
    assert "accelerator_type" not in cfg and "gpu_memory_utilization" not in cfg["engine_kwargs"]
    assert args["ingress_deployment_config"] == {"ray_actor_options": {"num_cpus": 0},
                                                 "graceful_shutdown_timeout_s": 50.0, "num_replicas": 1}


def test_serve_transport_switches_parse_and_reach_rays_environment() -> None:
    """gRPC and HAProxy default on (docs/benchmarks.md); deploy.py writes the parsed
    values for Ray, so a missing variable still means the documented default."""
    import deploy

    transport = ("RAY_SERVE_USE_GRPC_BY_DEFAULT", "RAY_SERVE_ENABLE_HA_PROXY", "RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING")
    on = parse_settings(env())
    assert on.grpc_between_deployments and on.haproxy_ingress and not on.direct_streaming
    environ: dict[str, str] = {}
    deploy.export_for_workers(environ, on)
    assert [environ[name] for name in transport] == ["1", "1", "0"]
    off = parse_settings(env(RAY_SERVE_USE_GRPC_BY_DEFAULT="0", RAY_SERVE_ENABLE_HA_PROXY="0"))
    environ = {"RAY_SERVE_ENABLE_HA_PROXY": "1"}
    deploy.export_for_workers(environ, off)
    assert [environ[name] for name in transport] == ["0", "0", "0"]


@pytest.mark.parametrize("name", ["RAY_SERVE_USE_GRPC_BY_DEFAULT", "RAY_SERVE_ENABLE_HA_PROXY"])
def test_serve_transport_switch_takes_0_or_1(name: str) -> None:
    for value in ("yes", "2"):
        assert problems(**{name: value}) == [f"{name}='{value}' is invalid: expected 0 or 1."]


def test_direct_streaming_needs_the_haproxy_ingress() -> None:
    assert problems(RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING="1", RAY_SERVE_ENABLE_HA_PROXY="0") == [
        "RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING=1 needs RAY_SERVE_ENABLE_HA_PROXY=1: Ray Serve LLM's direct "
        "streaming runs behind the HAProxy ingress (set both, or direct streaming to 0)."]


def test_ingress_replicas_reach_the_ingress_not_the_direct_streaming_app() -> None:
    args = llm_config.serving_args(parse_settings(env(INGRESS_REPLICAS="2")))
    assert args["ingress_deployment_config"]["num_replicas"] == 2
    direct = llm_config.serving_args(parse_settings(env(INGRESS_REPLICAS="2",
                                                        RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING="1")))
    assert "ingress_deployment_config" not in direct


@pytest.mark.parametrize(("text", "seconds"), [("60s", 60), ("90", 90), ("2m", 120), ("1m30s", 90), ("1h", 3600)])
def test_stop_grace_period_durations(text: str, seconds: int) -> None:
    s = parse_settings(env(SERVE_STOP_GRACE_PERIOD=text))
    assert s.stop_grace_s == seconds
    drain = llm_config.llm_config(s)["deployment_config"]["graceful_shutdown_timeout_s"]
    assert drain == max(1, seconds - llm_config.SHUTDOWN_MARGIN_S)


@pytest.mark.parametrize("text", ["", "soon", "-5s", "0s", "1.5m"])
def test_bad_stop_grace_period(text: str) -> None:
    found = problems(SERVE_STOP_GRACE_PERIOD=text)
    assert len(found) == 1 and found[0].startswith(f"SERVE_STOP_GRACE_PERIOD={text!r}")


def test_ray_accepts_the_built_configs() -> None:
    """The plain data must be valid for Ray Serve LLM's own models (real Ray)."""
    from ray.serve.llm import LLMConfig, LLMServingArgs

    for overrides in ({}, {"DEVICE": "cpu"}, {"ACCELERATOR_TYPE": "A100", "TENSOR_PARALLEL_SIZE": "2",
                                                 "GPUS_PER_NODE": "2"},
                      {"NUM_NODES": "2", "TENSOR_PARALLEL_SIZE": "2", "RAY_AUTH_TOKEN": "t",
                       "PLACEMENT_STRATEGY": "STRICT_SPREAD"},
                      {"DEVICE": "cpu", "NUM_NODES": "2", "RAY_AUTH_TOKEN": "t"},
                      {"DEVICE": "cpu", "INGRESS_REPLICAS": "3"}):
        s = parse_settings(env(**overrides))
        args = llm_config.serving_args(s)
        LLMServingArgs.model_validate(args)
        config = LLMConfig(**args["llm_configs"][0])
        assert config.engine_kwargs["tensor_parallel_size"] == s.tensor_parallel_size


def run_deploy(*args: str, **environ: str) -> subprocess.CompletedProcess[str]:
    # Run from a temp cwd with a clean env so only these variables (plus the
    # repo's committed .env) apply.
    return subprocess.run([sys.executable, str(REPO_ROOT / "src" / "deploy.py"), *args],
                          env=clean_env(**environ), text=True, capture_output=True, timeout=60, check=False)


def test_dry_run_prints_resolved_config_with_secrets_redacted() -> None:
    out = run_deploy("--dry-run", HF_TOKEN="hf_dry_run_token_123", OPENAI_API_KEY="sk-dry-run-key-456",
                     RAY_AUTH_TOKEN="ray-dry-run-token-789", AWS_ACCESS_KEY_ID="AKIDDRYRUN",
                     AWS_SECRET_ACCESS_KEY="aws-dry-run-secret-012")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["http_options"] == {"host": "0.0.0.0", "port": 8000}
    assert data["serving_args"]["llm_configs"][0]["model_loading_config"]["model_id"] == "Qwen/Qwen2.5-1.5B-Instruct"
    # The API keys are Nginx's: the model server never reads them.
    assert data["secrets"] == {"HF_TOKEN": "<set, redacted>", "RAY_AUTH_TOKEN": "<set, redacted>",
                               "AWS_SECRET_ACCESS_KEY": "<set, redacted>"}
    for secret in ("hf_dry_run_token_123", "sk-dry-run-key-456", "ray-dry-run-token-789", "aws-dry-run-secret-012"):
        assert secret not in out.stdout + out.stderr


def test_environment_wins_over_env_file() -> None:
    out = deploy_main("--dry-run", MODEL_ID="org/from-shell", RAY_API_PORT="9100")
    data = json.loads(out.stdout)
    assert data["serving_args"]["llm_configs"][0]["model_loading_config"]["model_id"] == "org/from-shell"
    assert data["http_options"]["port"] == 9100


def test_bad_config_exits_2_and_starts_nothing() -> None:
    out = run_deploy(MODEL_ID="", GPU_MEMORY_UTILIZATION="2")
    assert out.returncode == 2
    assert "configuration error, nothing was started" in out.stderr
    assert "MODEL_ID=''" in out.stderr and "GPU_MEMORY_UTILIZATION='2'" in out.stderr
    assert out.stdout == ""
    # Validation happens before Ray is imported: no Ray banner, no cluster.
    assert "ray" not in out.stderr.lower().replace("ray_", "").replace("(ray", "")


def test_help_documents_every_variable() -> None:
    out = run_deploy("--help")
    assert out.returncode == 0
    for v in SERVER_VARIABLES:
        assert re.search(rf"^\s+{v.name}\s", out.stdout, re.M), v.name


def test_lora_adapters_path_turns_on_ray_lora_config_and_vllm_lora() -> None:
    """LORA_ADAPTERS_PATH gives Ray its lora_config (checked by Ray's own
    LLMConfig in --dry-run) and vLLM enable_lora; ENGINE_KWARGS still wins."""
    out = deploy_main("--dry-run", DEVICE="cpu", LORA_ADAPTERS_PATH="s3://adapters/base/",
                      LORA_MAX_ADAPTERS_PER_REPLICA="3", ENGINE_KWARGS='{"max_lora_rank": 64}')
    assert out.returncode == 0, out.stderr
    config = json.loads(out.stdout)["serving_args"]["llm_configs"][0]
    assert config["lora_config"] == {"dynamic_lora_loading_path": "s3://adapters/base/",
                                     "max_num_adapters_per_replica": 3}
    assert config["engine_kwargs"]["enable_lora"] is True and config["engine_kwargs"]["max_lora_rank"] == 64
    plain = json.loads(deploy_main("--dry-run", DEVICE="cpu").stdout)["serving_args"]["llm_configs"][0]
    assert "lora_config" not in plain and "enable_lora" not in plain["engine_kwargs"]


@pytest.mark.parametrize(("environ", "said"), [
    ({"LORA_ADAPTERS_PATH": "/srv/adapters"}, "LORA_ADAPTERS_PATH='/srv/adapters' is invalid: expected a store folder"),
    ({"LORA_MAX_ADAPTERS_PER_REPLICA": "0"}, "LORA_MAX_ADAPTERS_PER_REPLICA='0' is invalid: expected an integer >= 1"),
    ({"AWS_ACCESS_KEY_ID": "AKIDONLY"}, "AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is empty"),
    ({"AWS_SECRET_ACCESS_KEY": "only-the-secret"}, "AWS_SECRET_ACCESS_KEY is set but AWS_ACCESS_KEY_ID is empty"),
    ({"AWS_ENDPOINT_URL_S3": "minio:9000"}, "AWS_ENDPOINT_URL_S3='minio:9000' is invalid: expected an http(s) URL"),
])
def test_adapter_store_settings_are_refused_with_their_names(environ: dict[str, str], said: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_settings({"MODEL_ID": "m", **environ})
    assert any(p.startswith(said) for p in err.value.problems), err.value.problems
    assert "only-the-secret" not in str(err.value)
