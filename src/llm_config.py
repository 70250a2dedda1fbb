"""Turn Settings into plain data for Ray Serve LLM.

Returns dicts only (no Ray imports), so the exact configuration can be
printed by --dry-run and checked by unit tests.
"""

from __future__ import annotations

from typing import Any

from engine_watchdog import HEALTH_CHECK_PERIOD_S, PROBE_TIMEOUT_S, WATCHDOG_TIMEOUT_VAR
from first_chunk import FIRST_CHUNK_FLAG, FIRST_CHUNK_SERVER_CLS
from node_init import NODE_INIT_CALLBACK_CLS
from proxy_middlewares import PROXY_CALLBACK, PROXY_CALLBACK_VAR
from settings import ROUTERS, Settings

# Application name and route of the OpenAI app in Ray Serve.
APP_NAME = "llm"
ROUTE_PREFIX = "/"
# Ray Serve LLM's app builder, as a Serve config's import_path names it.
APP_IMPORT_PATH = "ray.serve.llm:build_openai_app"
# One Serve HTTP proxy, on the head: Nginx is the only client that needs it.
PROXY_LOCATION = "HeadOnly"
# The model server with the hang watchdog (src/engine_watchdog.py), as the
# import path LLMConfig.server_cls takes. Ray's workers import it from src/
# (deploy.py and ray-node.sh put src/ on PYTHONPATH).
WATCHED_SERVER_CLS = "engine_watchdog:WatchedLLMServer"
# Seconds of SERVE_STOP_GRACE_PERIOD kept back for tearing Ray down after the
# replicas drained, so Docker's SIGKILL never lands mid-shutdown.
SHUTDOWN_MARGIN_S = 10


def drain_timeout_s(s: Settings) -> float:
    """How long replicas wait for in-flight requests when shutting down."""
    return float(max(1, s.stop_grace_s - SHUTDOWN_MARGIN_S))


def engine_kwargs(s: Settings) -> dict[str, Any]:
    """vLLM engine arguments; ENGINE_KWARGS is merged last and wins."""
    kwargs: dict[str, Any] = {
        "tensor_parallel_size": s.tensor_parallel_size,
        "pipeline_parallel_size": s.pipeline_parallel_size,
        "max_num_seqs": s.max_num_seqs,
        "dtype": s.dtype,
    }
    if s.device == "gpu":
        kwargs["gpu_memory_utilization"] = s.gpu_memory_utilization
    if s.max_model_len is not None:
        kwargs["max_model_len"] = s.max_model_len
    if s.quantization:
        kwargs["quantization"] = s.quantization
    if s.lora_adapters_path:
        # Ray Serve LLM loads the adapters into vLLM; vLLM must expect them.
        kwargs["enable_lora"] = True
    if s.spans_nodes:
        # vLLM's multiprocessing executor is single-node; Ray's spans nodes.
        kwargs["distributed_executor_backend"] = "ray"
    kwargs.update(s.engine_kwargs)
    return kwargs


def placement_group_config(s: Settings) -> dict[str, Any] | None:
    """TP x PP bundles with the configured strategy; None = Ray Serve LLM's default.

    The default (PACK on one node) is kept for a single node so single-GPU
    boxes get exactly what Ray Serve LLM would do on its own.
    """
    if s.num_nodes <= 1 and s.placement_strategy == "PACK":
        return None
    bundle = {"GPU": 1} if s.device == "gpu" else {"CPU": 1}
    return {"bundles": [dict(bundle) for _ in range(s.bundles_per_replica)], "strategy": s.placement_strategy}


def llm_config(s: Settings) -> dict[str, Any]:
    """Keyword arguments for ray.serve.llm.LLMConfig."""
    config: dict[str, Any] = {
        "model_loading_config": {
            "model_id": s.served_model_name,
            "model_source": s.model_source or s.model_id,
        },
        "deployment_config": {
            "graceful_shutdown_timeout_s": drain_timeout_s(s),
            "autoscaling_config": {
                "min_replicas": s.min_replicas,
                "max_replicas": s.max_replicas,
                "target_ongoing_requests": s.target_ongoing_requests,
            },
        },
        "engine_kwargs": engine_kwargs(s),
        # How often the replica hands streamed tokens to the ingress (Ray's
        # default 50 ms adds up to that much to time-to-first-token).
        "experimental_configs": {"stream_batching_interval_ms": s.stream_batching_interval_ms,
                                 FIRST_CHUNK_FLAG: s.stream_first_chunk_at_once},
        # Ray's per-node download task only when a cloud mirror needs it
        # (src/node_init.py: 7.6 s of every replica start here).
        "callback_config": {"callback_class": NODE_INIT_CALLBACK_CLS},
    }
    if s.lora_adapters_path:
        # Clients ask for MODEL:ADAPTER; Ray lists the store's subfolders in
        # /v1/models and loads each on first use (multiplexed over replicas).
        config["lora_config"] = {"dynamic_lora_loading_path": s.lora_adapters_path,
                                 "max_num_adapters_per_replica": s.lora_max_adapters_per_replica}
    router = ROUTERS[s.request_router]
    if router is not None:
        config["deployment_config"]["request_router_config"] = {
            "request_router_class": router, "request_router_kwargs": dict(s.request_router_kwargs)}
    if s.watchdog_timeout_s:
        # Heartbeat every health check; Serve's own timeout only backs up the
        # probe's (PROBE_TIMEOUT_S), which check_health enforces itself.
        config["server_cls"] = WATCHED_SERVER_CLS
        config["deployment_config"]["health_check_period_s"] = HEALTH_CHECK_PERIOD_S
        config["deployment_config"]["health_check_timeout_s"] = PROBE_TIMEOUT_S + 10
    else:
        # Ray's batching unless STREAM_FIRST_CHUNK_AT_ONCE; no usage records
        # while usage stats are off (src/no_telemetry.py), as with the watchdog.
        config["server_cls"] = FIRST_CHUNK_SERVER_CLS
    if s.device == "cpu":
        # CPU-only bundles: no GPU is requested, vLLM uses its CPU backend.
        config["accelerator_config"] = {"kind": "cpu"}
        # The replica actor only waits on its engine process; Ray Serve LLM
        # adds its 1 CPU to the engine's bundle, so a model would take 2 CPUs
        # and two models could never schedule on a 2-core box.
        config["deployment_config"]["ray_actor_options"] = {"num_cpus": 0}
    elif s.accelerator_type:
        config["accelerator_type"] = s.accelerator_type
    placement = placement_group_config(s)
    if placement is not None:
        config["placement_group_config"] = placement
    return config


def serving_args(s: Settings) -> dict[str, Any]:
    """Arguments for ray.serve.llm.build_openai_app (an LLMServingArgs dict):
    one LLMConfig per served model (MODELS_FILE), behind one ingress."""
    configs = [llm_config(model) for model in s.served]
    if s.direct_streaming:
        # The model replica is the HTTP ingress; build_openai_app refuses an
        # ingress configuration then.
        return {"llm_configs": configs}
    # The ingress holds the client's stream, so it drains as long as the model.
    ingress: dict[str, Any] = {"graceful_shutdown_timeout_s": drain_timeout_s(s),
                               "num_replicas": s.ingress_replicas}
    if s.device == "cpu":
        # On a 2-core box the model server takes every CPU; an ingress asking
        # for 1 CPU would never schedule. It only routes requests.
        ingress["ray_actor_options"] = {"num_cpus": 0}
    return {"llm_configs": configs, "ingress_deployment_config": ingress}


def http_options(s: Settings) -> dict[str, Any]:
    """Ray Serve HTTP options (serve.start)."""
    return {"host": s.api_host, "port": s.api_port}


def node_env(s: Settings) -> dict[str, str]:
    """What every Ray process reads from its environment, so what each node's
    `ray start` (or deploy.py's ray.init) must be given: how requests and tokens
    cross Ray Serve, the hang watchdog's bound, and the HTTP proxy's middleware
    (errors in OpenAI's shape, /readyz). No secrets."""
    return {
        "RAY_SERVE_USE_GRPC_BY_DEFAULT": "1" if s.grpc_between_deployments else "0",
        "RAY_SERVE_ENABLE_HA_PROXY": "1" if s.haproxy_ingress else "0",
        "RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING": "1" if s.direct_streaming else "0",
        WATCHDOG_TIMEOUT_VAR: str(s.watchdog_timeout_s),
        PROXY_CALLBACK_VAR: PROXY_CALLBACK,
    }


def serve_config(s: Settings) -> dict[str, Any]:
    """The same app as a Ray Serve config file (ServeDeploySchema): what
    `serve deploy` and KubeRay's serveConfigV2 take."""
    return {
        "proxy_location": PROXY_LOCATION,
        "http_options": http_options(s),
        "applications": [{"name": APP_NAME, "route_prefix": ROUTE_PREFIX, "import_path": APP_IMPORT_PATH,
                          "args": serving_args(s)}],
    }


def ray_init_kwargs(s: Settings) -> dict[str, Any]:
    """Arguments for ray.init: join RAY_ADDRESS, or start a private cluster."""
    if s.ray_address:
        return {"address": s.ray_address}
    return {
        # "local" always starts a private cluster; without it Ray would join
        # whatever `ray start` last recorded in /tmp/ray on this machine.
        "address": "local",
        "include_dashboard": True,
        "dashboard_host": s.api_host,
        "dashboard_port": s.dashboard_port,
        # Fixed, so Prometheus (Compose profile monitoring) finds it.
        "_metrics_export_port": s.metrics_port,
    }


def resolved(s: Settings) -> dict[str, Any]:
    """Everything deploy.py will do, as printable data. Secrets are redacted."""
    return {
        "app": {"name": APP_NAME, "route_prefix": ROUTE_PREFIX},
        "cluster": {"expected_nodes": s.num_nodes, "node_wait_timeout_s": s.node_wait_timeout_s},
        "serving_args": serving_args(s),
        "http_options": http_options(s),
        "ray_init": ray_init_kwargs(s),
        "secrets": {
            "HF_TOKEN": "<set, redacted>" if s.hf_token else "<unset>",
            "RAY_AUTH_TOKEN": "<set, redacted>" if s.ray_auth_token else "<unset: Ray generates one per cluster>",
            "AWS_SECRET_ACCESS_KEY": "<set, redacted>" if s.aws_secret_access_key else "<unset>",
        },
    }
