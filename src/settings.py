"""Parse and validate the deployment's environment.

Pure: a mapping of environment variables goes in, a frozen ``Settings`` comes
out, or a ``ConfigError`` listing every bad variable. Never imports Ray.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

T = TypeVar("T")

# Compose's duration syntax, the one every duration setting takes.
DURATION = re.compile(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s?)?")


def duration_seconds(value: str) -> int | None:
    """Seconds of a Compose-style duration (90, 90s, 2m, 1m30s, 1h), or None.
    The one parser: settings use it, and scripts/local-stack.sh runs it
    (`python3 src/settings.py duration VALUE`)."""
    match = DURATION.fullmatch(value)
    if not value or match is None:
        return None
    hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    return hours * 3600 + minutes * 60 + seconds


# Defaults the Ray-side modules read too (engine_watchdog.py, request_bounds.py
# import them from here: the pure settings import nothing of the glue).
DEFAULT_WATCHDOG_TIMEOUT_S = 30
# The second bound (deploy.py): the whole app unhealthy this long -> exit.
DEFAULT_RECOVERY_TIMEOUT_S = 900
DEFAULT_MAX_N = 8
DEFAULT_MAX_TOKENS = 4096

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
    Variable("MODELS_FILE", "", "YAML file listing several models (keys: the per-model variables); "
             "MODEL_ID, SERVED_MODEL_NAME and MODEL_SOURCE must be empty then. Relative to docker/."),
    Variable("VLLM_CPU_KVCACHE_SPACE", "1", "DEVICE=cpu only: KV-cache size in GiB."),
    Variable("RAY_SERVE_USE_GRPC_BY_DEFAULT", "1", "Ray Serve sends requests and streamed tokens between deployments over gRPC (1) or as Ray actor calls (0)."),
    Variable("RAY_SERVE_ENABLE_HA_PROXY", "1", "Alpha upstream: Ray's HAProxy takes HTTP in front of the ingress replicas (1), or Serve's Python proxy (0)."),
    Variable("RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING", "0", "Alpha upstream: the model replica serves HTTP itself behind Ray's HAProxy ingress (1, needs RAY_SERVE_ENABLE_HA_PROXY=1) or not (0)."),
    Variable("STREAM_BATCHING_INTERVAL_MS", str(DEFAULT_STREAM_BATCHING_INTERVAL_MS), "Ray Serve LLM writes streamed tokens in batches this often (ms); 0 = each token at once."),
    Variable("REQUEST_MAX_N", str(DEFAULT_MAX_N), "Largest n (and best_of) one request may ask for; above it: 400 naming the parameter."),
    Variable("REQUEST_MAX_TOKENS", str(DEFAULT_MAX_TOKENS), "Largest max_tokens (and max_completion_tokens) one request may ask for; above it: 400."),
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
# What one MODELS_FILE entry may set: the variables of one model. The rest
# (device, cluster, ports, ingress, watchdog, secrets) is the stack's own.
MODEL_IDENTITY = ("MODEL_ID", "SERVED_MODEL_NAME", "MODEL_SOURCE")
MODEL_VARIABLES = (*MODEL_IDENTITY, "TENSOR_PARALLEL_SIZE", "PIPELINE_PARALLEL_SIZE", "ACCELERATOR_TYPE",
                   "MIN_REPLICAS", "MAX_REPLICAS", "TARGET_ONGOING_REQUESTS", "MAX_MODEL_LEN",
                   "GPU_MEMORY_UTILIZATION", "MAX_NUM_SEQS", "DTYPE", "QUANTIZATION", "ENGINE_KWARGS",
                   "PLACEMENT_STRATEGY", "STREAM_BATCHING_INTERVAL_MS")
# Relative paths in .env are relative to the compose file's folder (docker/).
COMPOSE_DIR = Path(__file__).resolve().parent.parent / "docker"


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
    request_max_n: int = DEFAULT_MAX_N
    request_max_tokens: int = DEFAULT_MAX_TOKENS
    direct_streaming: bool = False
    grpc_between_deployments: bool = True
    haproxy_ingress: bool = True
    ingress_replicas: int = 1
    hf_token: str | None = field(default=None, repr=False)
    openai_api_key: str | None = field(default=None, repr=False)
    ray_auth_token: str | None = field(default=None, repr=False)
    # MODELS_FILE's entries, each a whole Settings (the stack's own fields are
    # the same in all); empty for the single-model variables. The outer
    # object's model fields are the first entry's.
    models: tuple["Settings", ...] = ()

    @property
    def served(self) -> tuple["Settings", ...]:
        """Every model this stack serves, each with its own model fields."""
        return self.models or (self,)

    @property
    def labelled(self) -> tuple[tuple[str, "Settings"], ...]:
        """(prefix of its problems, model) for every served model: "" for the
        single-model variables, "MODELS_FILE entry N (name): " otherwise."""
        if not self.models:
            return (("", self),)
        return tuple((entry_prefix(i, m.served_model_name), m) for i, m in enumerate(self.models, 1))

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
        total = duration_seconds(value)
        if total is None:
            self.problem(name, value, "expected a duration such as 60s, 2m or 1m30s")
            return 60
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


def entry_prefix(index: int, name: str) -> str:
    """How every problem of one MODELS_FILE entry starts."""
    return f"MODELS_FILE entry {index} ({name}): "


def read_models_file(environ: Mapping[str, str], base: Path = COMPOSE_DIR) -> str | None:
    """The text of MODELS_FILE (relative to docker/, like .env's other paths), None when unset."""
    name = (environ.get("MODELS_FILE") or "").strip()
    if not name:
        return None
    path = base / name
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError([f"MODELS_FILE={name!r} cannot be read ({path}: {getattr(err, 'strerror', None) or err}): "
                           "expected a YAML file; relative paths start at docker/, like MODELS_DIR"]) from None


def _entry_values(index: int, entry: Any, problems: list[str]) -> tuple[str, dict[str, str]] | None:
    """One MODELS_FILE entry as (problem prefix, {VARIABLE: text}); None when unusable."""
    if not isinstance(entry, dict):
        problems.append(f"MODELS_FILE entry {index} is invalid: expected a mapping of variables "
                        f"(MODEL_ID: ..., MAX_NUM_SEQS: ...), not a {type(entry).__name__}.")
        return None
    values: dict[str, str] = {}
    name = str(entry.get("SERVED_MODEL_NAME") or entry.get("MODEL_ID") or "?")
    label = entry_prefix(index, name)
    for key, value in entry.items():
        if key not in MODEL_VARIABLES:
            where = "is the stack's own: set it in .env" if key in DEFAULTS else "is not a per-model variable"
            problems.append(f"{label}{key} {where}; an entry may set {', '.join(MODEL_VARIABLES)}.")
        elif key == "ENGINE_KWARGS" and isinstance(value, dict):
            values[key] = json.dumps(value)
        elif isinstance(value, (dict, list)):
            problems.append(f"{label}{key} is invalid: expected a single value, not a {type(value).__name__}.")
        else:
            values[key] = "" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
    return label, values


def _parse_models(environ: Mapping[str, str], models_yaml: str) -> Settings:
    """Settings with one entry per model of MODELS_FILE (see parse_settings)."""
    import yaml

    problems: list[str] = []
    try:
        document = yaml.safe_load(models_yaml)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError([f"MODELS_FILE is invalid: not YAML{where} ({getattr(err, 'problem', None) or err})."]) from None
    entries = document.get("models") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ConfigError(["MODELS_FILE is invalid: expected a non-empty list under `models:` "
                           "(see .env for an example)."])
    for name in MODEL_IDENTITY:
        if (environ.get(name) or "").strip():
            problems.append(f"{name}={environ[name].strip()!r} is set as well as MODELS_FILE: expected one of the two "
                            f"(empty {name} in .env; with the cpu profile, CPU_MODEL_ID for MODEL_ID), and each "
                            "model's name and source in MODELS_FILE.")
    base = {k: v for k, v in environ.items() if k not in MODEL_IDENTITY}
    # The stack's own variables (and .env's defaults for every model) once,
    # without an entry's name in front; an entry reports only its own.
    shared: list[str] = []
    try:
        _parse_one({**base, "MODEL_ID": "MODELS_FILE"})
    except ConfigError as err:
        shared = err.problems
    problems.extend(shared)
    parsed: list[Settings] = []
    for index, entry in enumerate(entries, 1):
        found = _entry_values(index, entry, problems)
        if found is None:
            continue
        label, values = found
        if not values.get("MODEL_ID", "").strip():
            problems.append(f"{label}MODEL_ID is missing: every entry names its model (a Hugging Face id).")
            continue
        try:
            parsed.append(_parse_one({**base, **values}))
        except ConfigError as err:
            problems.extend(f"{label}{p}" for p in err.problems if p not in shared)
    if problems:
        raise ConfigError(problems)
    problems.extend(_across_models(parsed))
    if problems:
        raise ConfigError(problems)
    return dataclasses.replace(parsed[0], models=tuple(parsed))


def _across_models(models: list[Settings]) -> list[str]:
    """What only the whole list can get wrong: names, direct streaming, the GPUs they all need."""
    problems: list[str] = []
    seen: dict[str, int] = {}
    for index, m in enumerate(models, 1):
        if m.served_model_name in seen:
            problems.append(f"MODELS_FILE entries {seen[m.served_model_name]} and {index} are both served as "
                            f"{m.served_model_name!r}: expected a different SERVED_MODEL_NAME for each.")
        seen.setdefault(m.served_model_name, index)
    first = models[0]
    if first.direct_streaming and len(models) > 1:
        problems.append(f"RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING=1 serves exactly one model (Ray Serve LLM), but "
                        f"MODELS_FILE lists {len(models)}: set it to 0, or list one model.")
    if first.device == "gpu" and len(models) > 1:
        cluster = first.gpus_per_node * first.num_nodes
        need = [m.max_replicas * m.bundles_per_replica for m in models]
        if sum(need) > cluster:
            parts = " + ".join(f"{m.served_model_name} {m.max_replicas}x{m.bundles_per_replica}"
                               for m in models)
            problems.append(f"MODELS_FILE needs MAX_REPLICAS x TENSOR_PARALLEL_SIZE x PIPELINE_PARALLEL_SIZE = "
                            f"{parts} = {sum(need)} GPUs at most, but the cluster has GPUS_PER_NODE x NUM_NODES = "
                            f"{first.gpus_per_node} x {first.num_nodes} = {cluster}: every replica takes whole "
                            "GPUs, so the models cannot share them (lower MAX_REPLICAS, or add GPUs).")
    return problems


def parse_settings(environ: Mapping[str, str], models_yaml: str | None = None) -> Settings:
    """Build Settings from an environment mapping or raise ConfigError.

    With MODELS_FILE's text (read_models_file), each entry is parsed by the
    same rules over .env's values with the entry's own on top, and its
    problems are named "MODELS_FILE entry N (name): ...".
    """
    if models_yaml is not None:
        return _parse_models(environ, models_yaml)
    return _parse_one(environ)


def _parse_one(environ: Mapping[str, str]) -> Settings:
    r = _Reader(environ)

    model_id = r.raw("MODEL_ID")
    if not model_id:
        r.problem("MODEL_ID", model_id, "must not be empty; set a Hugging Face id such as Qwen/Qwen2.5-1.5B-Instruct, "
                  "or list models in MODELS_FILE")
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

    direct_streaming = r.integer("RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING", 0, 1) == 1
    haproxy_ingress = r.integer("RAY_SERVE_ENABLE_HA_PROXY", 0, 1) == 1
    if direct_streaming and not haproxy_ingress:
        r.problems.append("RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING=1 needs RAY_SERVE_ENABLE_HA_PROXY=1: Ray Serve LLM's "
                          "direct streaming runs behind the HAProxy ingress (set both, or direct streaming to 0).")

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
        request_max_n=r.integer("REQUEST_MAX_N", 1, 16384),
        request_max_tokens=r.integer("REQUEST_MAX_TOKENS", 1, 10_000_000),
        direct_streaming=direct_streaming,
        grpc_between_deployments=r.integer("RAY_SERVE_USE_GRPC_BY_DEFAULT", 0, 1) == 1,
        haproxy_ingress=haproxy_ingress,
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


if __name__ == "__main__":
    # `settings.py duration VALUE`: the seconds, or exit 2 (for the shell side).
    import sys

    if len(sys.argv) == 3 and sys.argv[1] == "duration":
        parsed = duration_seconds(sys.argv[2])
        if parsed is None:
            sys.exit(2)
        print(parsed)
    else:
        sys.exit("usage: settings.py duration VALUE")
