"""Parse and validate the deployment's environment.

Pure: a mapping of environment variables goes in, a frozen ``Settings`` comes
out, or a ``ConfigError`` listing every bad variable. Never imports Ray.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, TypeVar

from engine_watchdog import DEFAULT_RECOVERY_TIMEOUT_S, DEFAULT_WATCHDOG_TIMEOUT_S

T = TypeVar("T")

DTYPES = ("auto", "half", "float16", "bfloat16", "float", "float32")
DEVICES = ("gpu", "cpu")
PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
# Characters allowed in OPENAI_API_KEY: safe inside an nginx string and a shell
# word. The Nginx entrypoint (docker/nginx/entrypoint.d) applies the same rule.
API_KEY_PATTERN = re.compile(r"^[A-Za-z0-9._~+/=-]+$")
API_KEY_ALLOWED = "letters, digits and . _ ~ + / = -"
HF_TOKEN_NAMES = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HUGGINGFACE_TOKEN")
# Shortest hang bound accepted: a heartbeat waits for the engine's current step.
MIN_WATCHDOG_TIMEOUT_S = 10
# Ray Serve LLM's own default; docs/benchmarks.md measured 0 against it.
DEFAULT_STREAM_BATCHING_INTERVAL_MS = 50


@dataclass(frozen=True)
class Variable:
    """One documented environment variable (drives --help and the docs test)."""

    name: str
    default: str
    help: str
    secret: bool = False


VARIABLES: tuple[Variable, ...] = (
    Variable("MODEL_ID", "Qwen/Qwen2.5-1.5B-Instruct", "Hugging Face model id; the served name unless SERVED_MODEL_NAME is set."),
    Variable("SERVED_MODEL_NAME", "", "Name clients pass as 'model'. Empty = MODEL_ID."),
    Variable("MODEL_SOURCE", "", "Local path of pre-downloaded weights. Empty = download MODEL_ID."),
    Variable("DEVICE", "gpu", "Where the engine runs: gpu or cpu."),
    Variable("GPUS_PER_NODE", "1", "GPUs on each node for serving (Compose GPU reservation)."),
    Variable("TENSOR_PARALLEL_SIZE", "1", "GPUs one replica is split across (tensor parallelism)."),
    Variable("PIPELINE_PARALLEL_SIZE", "1", "Pipeline stages one replica is split into."),
    Variable("ACCELERATOR_TYPE", "", "Ray accelerator type (A100, H100, L4...). Empty = any GPU."),
    Variable("MIN_REPLICAS", "1", "Autoscaling lower bound (0 allows scale to zero)."),
    Variable("MAX_REPLICAS", "1", "Autoscaling upper bound, >= MIN_REPLICAS."),
    Variable("TARGET_ONGOING_REQUESTS", "32", "Ongoing requests per replica the autoscaler aims for."),
    Variable("MAX_MODEL_LEN", "8192", "Maximum context length. Empty = the model's own."),
    Variable("GPU_MEMORY_UTILIZATION", "0.90", "Fraction of GPU memory vLLM may use, in (0, 1]."),
    Variable("MAX_NUM_SEQS", "64", "Maximum sequences batched per replica."),
    Variable("DTYPE", "auto", "Model dtype: " + ", ".join(DTYPES) + "."),
    Variable("QUANTIZATION", "", "vLLM quantization method (awq, gptq, fp8...). Empty = none."),
    Variable("ENGINE_KWARGS", "{}", "JSON object of extra vLLM engine arguments, merged last."),
    Variable("VLLM_CPU_KVCACHE_SPACE", "1", "DEVICE=cpu only: KV-cache size in GiB."),
    Variable("RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING", "0", "Alpha upstream: the model replica serves HTTP itself behind Ray's HAProxy ingress (1) or not (0)."),
    Variable("STREAM_BATCHING_INTERVAL_MS", str(DEFAULT_STREAM_BATCHING_INTERVAL_MS), "Ray Serve LLM writes streamed tokens in batches this often (ms); 0 = each token at once."),
    Variable("INGRESS_REPLICAS", "1", "Replicas of Ray Serve's OpenAI ingress (the hop every token passes); ignored with direct streaming."),
    Variable("RAY_API_HOST", "0.0.0.0", "Address Ray Serve's HTTP server and the dashboard bind."),
    Variable("RAY_API_PORT", "8000", "Port of the OpenAI-compatible API (Ray Serve HTTP)."),
    Variable("RAY_DASHBOARD_PORT", "8265", "Port of the Ray dashboard."),
    Variable("RAY_METRICS_PORT", "8080", "Port of Ray's Prometheus metrics (Serve and vLLM engine metrics) on each node."),
    Variable("RAY_ADDRESS", "", "Existing Ray cluster to join (host:port). Empty = start one."),
    Variable("RAY_HEAD_HOST", "", "Head node IP; with RAY_HEAD_PORT forms the address when RAY_ADDRESS is empty."),
    Variable("RAY_HEAD_PORT", "6379", "Ray head GCS port."),
    Variable("NGINX_HTTP_PORT", "80", "Public HTTP port of Nginx (checked against Ray's ports)."),
    Variable("NGINX_HTTPS_PORT", "443", "Public HTTPS port of Nginx (checked against Ray's ports)."),
    Variable("NUM_NODES", "1", "Nodes expected in the Ray cluster (multi-node: head + workers)."),
    Variable("PLACEMENT_STRATEGY", "PACK", "Placement of one replica's bundles: " + ", ".join(PLACEMENT_STRATEGIES) + "."),
    Variable("NODE_WAIT_TIMEOUT", "600", "Seconds deploy.py waits for NUM_NODES nodes to join before giving up."),
    Variable("SERVE_STOP_GRACE_PERIOD", "60s", "On SIGTERM, time in-flight requests get to finish (e.g. 60s, 2m)."),
    Variable("WATCHDOG_TIMEOUT", str(DEFAULT_WATCHDOG_TIMEOUT_S), "Seconds a running engine may leave its heartbeat unanswered before it is killed and its replica replaced (0 = off)."),
    Variable("WATCHDOG_RECOVERY_TIMEOUT", str(DEFAULT_RECOVERY_TIMEOUT_S), "Seconds the app may stay unhealthy before deploy.py exits non-zero for a full restart (0 = never)."),
    Variable("HF_TOKEN", "", "Hugging Face token (.secrets). Also read: HUGGING_FACE_HUB_TOKEN, HUGGINGFACE_TOKEN.", secret=True),
    Variable("OPENAI_API_KEY", "", f"API key Nginx requires as 'Bearer' (.secrets). Allowed: {API_KEY_ALLOWED}.", secret=True),
    Variable("RAY_AUTH_TOKEN", "", "Ray cluster token shared by every node and Nginx (.secrets). Required for multi-node.", secret=True),
)
DEFAULTS: dict[str, str] = {v.name: v.default for v in VARIABLES}


class ConfigError(Exception):
    """Every problem found in the environment, one line per variable."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Settings:
    model_id: str
    served_model_name: str
    model_source: str | None
    device: str
    gpus_per_node: int
    tensor_parallel_size: int
    pipeline_parallel_size: int
    accelerator_type: str | None
    min_replicas: int
    max_replicas: int
    target_ongoing_requests: int
    max_model_len: int | None
    gpu_memory_utilization: float
    max_num_seqs: int
    dtype: str
    quantization: str | None
    engine_kwargs: Mapping[str, Any]
    cpu_kvcache_gib: int
    api_host: str
    api_port: int
    dashboard_port: int
    ray_address: str | None
    metrics_port: int = 8080
    num_nodes: int = 1
    placement_strategy: str = "PACK"
    node_wait_timeout_s: int = 600
    stop_grace_s: int = 60
    watchdog_timeout_s: int = DEFAULT_WATCHDOG_TIMEOUT_S
    watchdog_recovery_timeout_s: int = DEFAULT_RECOVERY_TIMEOUT_S
    stream_batching_interval_ms: int = DEFAULT_STREAM_BATCHING_INTERVAL_MS
    direct_streaming: bool = False
    ingress_replicas: int = 1
    hf_token: str | None = field(default=None, repr=False)
    openai_api_key: str | None = field(default=None, repr=False)
    ray_auth_token: str | None = field(default=None, repr=False)

    @property
    def bundles_per_replica(self) -> int:
        return self.tensor_parallel_size * self.pipeline_parallel_size

    @property
    def spans_nodes(self) -> bool:
        """True when one replica's bundles may land on more than one node."""
        if self.num_nodes <= 1 or self.bundles_per_replica <= 1:
            return False
        if self.placement_strategy in ("SPREAD", "STRICT_SPREAD"):
            return True
        if self.placement_strategy == "STRICT_PACK":
            return False
        return self.device == "gpu" and self.bundles_per_replica > self.gpus_per_node


class _Reader:
    """Reads variables, collecting every problem instead of stopping at the first."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ
        self.problems: list[str] = []

    def raw(self, name: str) -> str:
        value = self.environ.get(name)
        if value is None:
            value = DEFAULTS.get(name, "")
        return value.strip()

    def problem(self, name: str, value: str, allowed: str) -> None:
        self.problems.append(f"{name}={value!r} is invalid: {allowed}.")

    def _parse(self, name: str, convert: Callable[[str], T], allowed: str, fallback: T) -> T:
        value = self.raw(name)
        try:
            return convert(value)
        except ValueError:
            self.problem(name, value, allowed)
            return fallback

    def integer(self, name: str, minimum: int, maximum: int | None = None) -> int:
        bound = f"an integer >= {minimum}" if maximum is None else f"an integer from {minimum} to {maximum}"

        def convert(text: str) -> int:
            number = int(text)
            if number < minimum or (maximum is not None and number > maximum):
                raise ValueError(text)
            return number

        return self._parse(name, convert, f"expected {bound}", minimum)

    def optional_integer(self, name: str, minimum: int) -> int | None:
        if not self.raw(name):
            return None
        return self.integer(name, minimum)

    def fraction(self, name: str) -> float:
        def convert(text: str) -> float:
            number = float(text)
            if not 0.0 < number <= 1.0:
                raise ValueError(text)
            return number

        return self._parse(name, convert, "expected a number in (0, 1], e.g. 0.90", 1.0)

    def choice(self, name: str, choices: tuple[str, ...], *, lower: bool = True) -> str:
        value = self.raw(name)
        normalized = value.lower() if lower else value.upper()
        if normalized not in choices:
            self.problem(name, value, "expected one of " + ", ".join(choices))
            return choices[0]
        return normalized

    def duration_s(self, name: str) -> int:
        """Compose-style duration: 90, 90s, 2m, 1m30s, 1h."""
        value = self.raw(name)
        match = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s?)?", value)
        if not value or match is None:
            self.problem(name, value, "expected a duration such as 60s, 2m or 1m30s")
            return 60
        hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
        total = hours * 3600 + minutes * 60 + seconds
        if total < 1:
            self.problem(name, value, "expected a duration of at least 1s")
            return 60
        return total

    def optional(self, name: str) -> str | None:
        return self.raw(name) or None

    def json_object(self, name: str) -> dict[str, Any]:
        value = self.raw(name) or "{}"
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError as exc:
            self.problem(name, value, f"expected a JSON object, e.g. {{\"enable_prefix_caching\": true}} ({exc.msg})")
            return {}
        if not isinstance(parsed, dict):
            self.problem(name, value, "expected a JSON object ({...}), not a " + type(parsed).__name__)
            return {}
        return parsed

    def first_secret(self, names: tuple[str, ...]) -> str | None:
        return first_secret(self.environ, names)


def first_secret(environ: Mapping[str, str], names: tuple[str, ...]) -> str | None:
    """The first of these variables that is set and not blank, stripped."""
    for name in names:
        value = (environ.get(name) or "").strip()
        if value:
            return value
    return None


def schedulability_problems(device: str, gpus_per_node: int, num_nodes: int, strategy: str,
                            tp: int, pp: int, max_replicas: int) -> list[str]:
    """Configurations Ray could never schedule (they would stay pending forever)."""
    problems: list[str] = []
    bundles = tp * pp
    shape = f"TENSOR_PARALLEL_SIZE x PIPELINE_PARALLEL_SIZE = {tp} x {pp} = {bundles} bundles per replica"
    if strategy == "STRICT_SPREAD" and bundles > num_nodes:
        problems.append(f"PLACEMENT_STRATEGY=STRICT_SPREAD puts each bundle on its own node, but {shape} "
                        f"and NUM_NODES={num_nodes}. Use PACK or SPREAD, or add nodes.")
    if device != "gpu":
        return problems
    cluster_gpus = gpus_per_node * num_nodes
    if strategy == "STRICT_PACK" and bundles > gpus_per_node:
        problems.append(f"PLACEMENT_STRATEGY=STRICT_PACK keeps a replica on one node, but {shape} "
                        f"and GPUS_PER_NODE={gpus_per_node}.")
    if bundles > cluster_gpus:
        problems.append(f"{shape} (1 GPU each), but the cluster has GPUS_PER_NODE x NUM_NODES = "
                        f"{gpus_per_node} x {num_nodes} = {cluster_gpus} GPUs: one replica can never be scheduled.")
    elif max_replicas * bundles > cluster_gpus:
        problems.append(f"MAX_REPLICAS={max_replicas} replicas x {bundles} GPUs each = {max_replicas * bundles} GPUs, "
                        f"but the cluster has {cluster_gpus} GPUs (GPUS_PER_NODE x NUM_NODES): the extra replicas "
                        "could never be scheduled.")
    return problems


def resolve_ray_address(ray_address: str | None, head_host: str | None, head_port: int) -> str | None:
    """RAY_ADDRESS wins; else RAY_HEAD_HOST:RAY_HEAD_PORT; else None (start locally)."""
    if ray_address:
        return ray_address
    if head_host:
        return f"{head_host}:{head_port}"
    return None


def parse_settings(environ: Mapping[str, str]) -> Settings:
    """Build Settings from an environment mapping or raise ConfigError."""
    r = _Reader(environ)

    model_id = r.raw("MODEL_ID")
    if not model_id:
        r.problem("MODEL_ID", model_id, "must not be empty; set a Hugging Face id such as Qwen/Qwen2.5-1.5B-Instruct")
    elif any(c.isspace() for c in model_id):
        r.problem("MODEL_ID", model_id, "must not contain whitespace")
    served = r.raw("SERVED_MODEL_NAME") or model_id
    if r.raw("SERVED_MODEL_NAME") and any(c.isspace() for c in served):
        r.problem("SERVED_MODEL_NAME", served, "must not contain whitespace")

    device = r.choice("DEVICE", DEVICES)
    accelerator_type = r.optional("ACCELERATOR_TYPE")
    if device == "cpu" and accelerator_type:
        r.problem("ACCELERATOR_TYPE", accelerator_type, "must be empty when DEVICE=cpu (it names a GPU type)")

    gpus_per_node = r.integer("GPUS_PER_NODE", 1)
    num_nodes = r.integer("NUM_NODES", 1)
    strategy = r.choice("PLACEMENT_STRATEGY", PLACEMENT_STRATEGIES, lower=False)
    tp = r.integer("TENSOR_PARALLEL_SIZE", 1)
    pp = r.integer("PIPELINE_PARALLEL_SIZE", 1)
    min_replicas = r.integer("MIN_REPLICAS", 0)
    max_replicas = r.integer("MAX_REPLICAS", 1)
    if min_replicas > max_replicas:
        r.problems.append(
            f"MIN_REPLICAS={min_replicas} is greater than MAX_REPLICAS={max_replicas}: "
            "expected MIN_REPLICAS <= MAX_REPLICAS."
        )
    r.problems.extend(schedulability_problems(device, gpus_per_node, num_nodes, strategy, tp, pp, max_replicas))

    dtype = r.choice("DTYPE", DTYPES)
    quantization = r.optional("QUANTIZATION")
    if quantization and not re.fullmatch(r"[A-Za-z0-9_-]+", quantization):
        r.problem("QUANTIZATION", quantization, "expected a vLLM quantization method name such as awq, gptq or fp8")

    api_port = r.integer("RAY_API_PORT", 1, 65535)
    dashboard_port = r.integer("RAY_DASHBOARD_PORT", 1, 65535)
    head_port = r.integer("RAY_HEAD_PORT", 1, 65535)
    metrics_port = r.integer("RAY_METRICS_PORT", 1, 65535)
    http_port = r.integer("NGINX_HTTP_PORT", 1, 65535)
    https_port = r.integer("NGINX_HTTPS_PORT", 1, 65535)
    ports = {
        "RAY_API_PORT": api_port,
        "RAY_DASHBOARD_PORT": dashboard_port,
        "RAY_HEAD_PORT": head_port,
        "RAY_METRICS_PORT": metrics_port,
        "NGINX_HTTP_PORT": http_port,
        "NGINX_HTTPS_PORT": https_port,
    }
    seen: dict[int, str] = {}
    for name, port in ports.items():
        if port in seen:
            r.problems.append(f"{name}={port} clashes with {seen[port]}={port}: expected different ports.")
        else:
            seen[port] = name

    api_key = r.first_secret(("OPENAI_API_KEY",))
    ray_token = r.first_secret(("RAY_AUTH_TOKEN",))
    for name, secret in (("OPENAI_API_KEY", api_key), ("RAY_AUTH_TOKEN", ray_token)):
        if secret and not API_KEY_PATTERN.fullmatch(secret):
            # Never echo a secret: name the variable and the rule only.
            r.problems.append(f"{name} (value hidden) is invalid: allowed characters are {API_KEY_ALLOWED}.")
    if num_nodes > 1 and not ray_token:
        r.problems.append(
            f"NUM_NODES={num_nodes} but RAY_AUTH_TOKEN is empty: every node of a multi-node cluster must share "
            "one Ray token (set it in .secrets on each node)."
        )

    watchdog_timeout = r.integer("WATCHDOG_TIMEOUT", 0)
    if 0 < watchdog_timeout < MIN_WATCHDOG_TIMEOUT_S:
        r.problem("WATCHDOG_TIMEOUT", str(watchdog_timeout),
                  f"expected 0 (off) or at least {MIN_WATCHDOG_TIMEOUT_S} seconds (one heartbeat can take "
                  "a whole engine step)")

    settings = Settings(
        model_id=model_id,
        served_model_name=served,
        model_source=r.optional("MODEL_SOURCE"),
        device=device,
        gpus_per_node=gpus_per_node,
        tensor_parallel_size=tp,
        pipeline_parallel_size=pp,
        accelerator_type=accelerator_type,
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        target_ongoing_requests=r.integer("TARGET_ONGOING_REQUESTS", 1),
        max_model_len=r.optional_integer("MAX_MODEL_LEN", 1),
        gpu_memory_utilization=r.fraction("GPU_MEMORY_UTILIZATION"),
        max_num_seqs=r.integer("MAX_NUM_SEQS", 1),
        dtype=dtype,
        quantization=quantization,
        engine_kwargs=r.json_object("ENGINE_KWARGS"),
        cpu_kvcache_gib=r.integer("VLLM_CPU_KVCACHE_SPACE", 1),
        api_host=r.raw("RAY_API_HOST") or "0.0.0.0",
        api_port=api_port,
        dashboard_port=dashboard_port,
        metrics_port=metrics_port,
        ray_address=resolve_ray_address(r.optional("RAY_ADDRESS"), r.optional("RAY_HEAD_HOST"), head_port),
        num_nodes=num_nodes,
        placement_strategy=strategy,
        node_wait_timeout_s=r.integer("NODE_WAIT_TIMEOUT", 1),
        stop_grace_s=r.duration_s("SERVE_STOP_GRACE_PERIOD"),
        watchdog_timeout_s=watchdog_timeout,
        watchdog_recovery_timeout_s=r.integer("WATCHDOG_RECOVERY_TIMEOUT", 0),
        stream_batching_interval_ms=r.integer("STREAM_BATCHING_INTERVAL_MS", 0, 1000),
        direct_streaming=r.integer("RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING", 0, 1) == 1,
        ingress_replicas=r.integer("INGRESS_REPLICAS", 1, 64),
        hf_token=r.first_secret(HF_TOKEN_NAMES),
        openai_api_key=api_key,
        ray_auth_token=ray_token,
    )
    if r.problems:
        raise ConfigError(r.problems)
    return settings


def help_text() -> str:
    """The variable reference printed by `deploy.py --help`."""
    width = max(len(v.name) for v in VARIABLES)
    lines = ["environment variables (from the environment, then .env and .secrets):"]
    for v in VARIABLES:
        default = "secret, from .secrets" if v.secret else f"default: {v.default or '(empty)'}"
        lines.append(f"  {v.name:<{width}}  {v.help} [{default}]")
    return "\n".join(lines)
