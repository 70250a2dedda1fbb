"""Every setting of the stack, declared once, and the parser of the server's.

Each variable is one pydantic field: its name (the alias), its rule (type
and bounds, with the sentence users read), its default as `.env` writes it,
its one-line meaning, and which layer reads it (the model it belongs to).
From these come parsing and validation, `deploy.py --help`, the generated
docs/configuration.md (tools/make-config-reference.py) and the tests that
keep `.env`, `.secrets.example` and the compose file in agreement.

Pure: a mapping of environment variables goes in, a frozen ``Settings``
comes out, or a ``ConfigError`` listing every problem. Never imports Ray.
Needs pydantic 2 (and PyYAML for MODELS_FILE), nothing else.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, ClassVar, Iterator, Mapping, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import PydanticCustomError, core_schema

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


# Defaults the Ray-side modules read too (engine_watchdog.py and
# request_bounds.py import them from here; this module imports no glue).
DEFAULT_WATCHDOG_TIMEOUT_S = 30
DEFAULT_RECOVERY_TIMEOUT_S = 900
DEFAULT_MAX_N = 8
DEFAULT_MAX_TOKENS = 4096
# Twice Ray Serve LLM's 50: with the first chunk at once (STREAM_FIRST_CHUNK_AT_ONCE)
# the interval no longer delays the first token, and at 100 the stack's c16
# throughput rose from 0.80x to 0.94x of bare vLLM, c1 unchanged (docs/benchmarks.md).
DEFAULT_STREAM_BATCHING_INTERVAL_MS = 100
# Shortest hang bound accepted: a heartbeat waits for the engine's current step.
MIN_WATCHDOG_TIMEOUT_S = 10

DTYPES = ("auto", "half", "float16", "bfloat16", "float", "float32")
DEVICES = ("gpu", "cpu")
PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
# Characters allowed in API keys and Ray's token: safe inside an nginx string
# and a shell word. The Nginx entrypoint applies the same rule (a unit test
# runs both over one table).
API_KEY_PATTERN = re.compile(r"^[A-Za-z0-9._~+/=-]+$")
API_KEY_ALLOWED = "letters, digits and . _ ~ + / = -"
# REQUEST_ROUTER's names and Ray's public router classes (ray.serve.llm.request_router);
# None = Ray Serve's default (power of two choices).
ROUTERS: dict[str, str | None] = {
    "pow2": None,
    "prefix-cache": "ray.serve.llm.request_router.PrefixCacheAffinityRouter",
    "kv-aware": "ray.serve.llm.request_router.KVAwareRouter",
}
# PrefixCacheAffinityRouter.initialize_state's knobs in Ray 2.60 (a unit test
# compares them with the installed Ray's signature).
PREFIX_ROUTER_KNOBS = ("imbalanced_threshold", "match_rate_threshold", "do_eviction", "eviction_threshold_chars",
                       "eviction_target_chars", "eviction_interval_secs")
HF_TOKEN_NAMES = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HUGGINGFACE_TOKEN")
# The LoRA adapter store's keys (.secrets), as boto3 reads them.
ADAPTER_STORE_SECRETS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
# Relative paths in .env are relative to the compose file's folder (docker/).
COMPOSE_DIR = Path(__file__).resolve().parent.parent / "docker"


class ConfigError(Exception):
    """Every problem found in the environment, one line per variable."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


# --- Rules: what a variable accepts ------------------------------------------


class Refused(ValueError):
    """A parser's own words for a bad value (any other ValueError: "expected"
    and the rule's allowed text)."""


@dataclass(frozen=True)
class Rule:
    """What one variable accepts: the words users read (in errors and the
    docs) and the parser of its text. A pydantic validator of its own."""

    allowed: str
    parse: Callable[[str], Any]

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(self.validate)

    def validate(self, value: Any) -> Any:
        if not isinstance(value, str):
            return value  # already parsed (a copy of a parsed model)
        try:
            return self.parse(value.strip())
        except Refused as err:
            why = str(err)
        except ValueError:
            why = f"expected {self.allowed}"
        raise PydanticCustomError("setting", "{why}", {"why": why})


def integer(minimum: int, maximum: int | None = None, *, empty: bool = False, digits: int = 9) -> Rule:
    """ASCII digits only, at most `digits` of them, as the shell side reads
    them (int() would also take "+80", "8_0" and other scripts' digits)."""
    bound = f"an integer >= {minimum}" if maximum is None else f"an integer from {minimum} to {maximum}"
    digits_only = re.compile(rf"-?[0-9]{{1,{digits}}}")

    def parse(text: str) -> int | None:
        if empty and not text:
            return None
        if not digits_only.fullmatch(text):
            raise ValueError
        number = int(text)
        if number < minimum or (maximum is not None and number > maximum):
            raise ValueError
        return number

    return Rule(bound + (", or empty" if empty else ""), parse)


def flag() -> Rule:
    return Rule("0 or 1", lambda text: integer(0, 1).parse(text) == 1)


def fraction() -> Rule:
    def parse(text: str) -> float:
        number = float(text)  # its ValueError: the rule's own words
        if not 0.0 < number <= 1.0:
            raise ValueError
        return number

    return Rule("a number in (0, 1], e.g. 0.90", parse)


def choice(values: tuple[str, ...], *, upper: bool = False) -> Rule:
    def parse(text: str) -> str:
        normal = text.upper() if upper else text.lower()
        if normal not in values:
            raise Refused("expected one of " + ", ".join(values))
        return normal

    return Rule("one of " + ", ".join(values), parse)


def duration() -> Rule:
    def parse(text: str) -> int:
        total = duration_seconds(text)
        if total is None:
            raise Refused("expected a duration such as 60s, 2m or 1m30s")
        if total < 1:
            raise Refused("expected a duration of at least 1s")
        return total

    return Rule("a duration such as 60s, 2m or 1m30s", parse)


def json_object() -> Rule:
    def parse(text: str) -> dict[str, Any]:
        try:
            parsed = json.loads(text or "{}")
        except json.JSONDecodeError as exc:
            raise Refused(f"expected a JSON object, e.g. {{\"enable_prefix_caching\": true}} ({exc.msg})") from None
        if not isinstance(parsed, dict):
            raise Refused("expected a JSON object ({...}), not a " + type(parsed).__name__)
        return parsed

    return Rule("a JSON object", parse)


def pattern(regex: str, allowed: str, *, empty: bool = True) -> Rule:
    compiled = re.compile(regex)

    def parse(text: str) -> str | None:
        if not text and empty:
            return None
        if not compiled.fullmatch(text):
            raise Refused(f"expected {allowed}")
        return text

    return Rule(allowed + (", or empty" if empty else ""), parse)


def text(*, empty_is: str | None = None) -> Rule:
    return Rule("text", lambda t: t or empty_is)


def model_name(*, required: bool) -> Rule:
    def parse(value: str) -> str:
        if not value and required:
            raise Refused("must not be empty; set a Hugging Face id such as Qwen/Qwen2.5-1.5B-Instruct, "
                          "or list models in MODELS_FILE")
        if any(c.isspace() for c in value):
            raise Refused("must not contain whitespace")
        return value

    return Rule("a name without whitespace", parse)


def watchdog_timeout() -> Rule:
    seconds_rule = integer(0)

    def parse(value: str) -> int:
        try:
            seconds = seconds_rule.parse(value)
        except ValueError:
            raise Refused(f"expected {seconds_rule.allowed}") from None
        if 0 < seconds < MIN_WATCHDOG_TIMEOUT_S:
            raise Refused(f"expected 0 (off) or at least {MIN_WATCHDOG_TIMEOUT_S} seconds (one heartbeat can "
                          "take a whole engine step)")
        return seconds

    return Rule(f"0 (off) or an integer >= {MIN_WATCHDOG_TIMEOUT_S}", parse)


def secret() -> Rule:
    def parse(value: str) -> str | None:
        if value and not API_KEY_PATTERN.fullmatch(value):
            raise Refused(f"allowed characters are {API_KEY_ALLOWED}")
        return value or None

    return Rule(API_KEY_ALLOWED, parse)


PORT = integer(1, 65535, digits=5)
OPTIONAL = text(empty_is=None)
ANY = text(empty_is="")
SIZE = pattern(r"\d+[kKmMgG]?", "a size such as 10m or 512k", empty=False)
NGINX_TIME = pattern(r"\d+(ms|s|m|h|d)?", "a time such as 30s or 10m", empty=False)
NGINX_RATE = pattern(r"0|\d+r/[sm]", "a rate such as 10r/s or 600r/m, or 0")
URL = pattern(r"https?://\S+", "an http(s) URL")


def var(default: str, meaning: str, *, alias: str | None = None, secret: bool = False, model: bool = False) -> Any:
    """One variable: its default as .env writes it, and what it means.
    model=True: a MODELS_FILE entry may set it per model."""
    extra = {"secret": secret, "per_model": model}
    return Field(default, alias=alias, description=meaning, validate_default=True, repr=not secret,
                 json_schema_extra=extra)


def _upper(name: str) -> str:
    return name.upper()


class Layer(BaseModel):
    """The variables one part of the stack reads (READER)."""

    model_config = ConfigDict(frozen=True, extra="ignore", alias_generator=_upper, populate_by_name=False)
    READER: ClassVar[str]


# --- The server's settings (src/deploy.py) ------------------------------------


class Settings(Layer):
    """The validated configuration of the model server."""

    READER: ClassVar[str] = "src/deploy.py"

    model_id: Annotated[str, model_name(required=True)] = var(
        "Qwen/Qwen2.5-1.5B-Instruct", "Hugging Face model id; the served name unless SERVED_MODEL_NAME is set.",
        model=True)
    served_name: Annotated[str, model_name(required=False)] = var(
        "", "Name clients pass as 'model'. Empty = MODEL_ID.", alias="SERVED_MODEL_NAME", model=True)
    model_source: Annotated[str | None, OPTIONAL] = var(
        "", "Local path of pre-downloaded weights (e.g. /models/NAME). Empty = download MODEL_ID.", model=True)
    models_file: Annotated[str | None, OPTIONAL] = var(
        "", "YAML file listing several models (keys: the per-model variables), relative to docker/; "
        "MODEL_ID, SERVED_MODEL_NAME and MODEL_SOURCE must be empty then.")
    device: Annotated[str, choice(DEVICES)] = var("gpu", "Where the engine runs: gpu or cpu.")
    gpus_per_node: Annotated[int, integer(1)] = var(
        "1", "GPUs on each node for serving (Compose GPU reservation).")
    tensor_parallel_size: Annotated[int, integer(1)] = var(
        "1", "GPUs one replica is split across (tensor parallelism).", model=True)
    pipeline_parallel_size: Annotated[int, integer(1)] = var(
        "1", "Pipeline stages one replica is split into.", model=True)
    accelerator_type: Annotated[str | None, OPTIONAL] = var(
        "", "Ray accelerator type (A100, H100, L4...) to pin replicas to. Empty = any GPU.", model=True)
    min_replicas: Annotated[int, integer(0)] = var(
        "1", "Autoscaling lower bound (0 allows scale to zero).", model=True)
    max_replicas: Annotated[int, integer(1)] = var("1", "Autoscaling upper bound, >= MIN_REPLICAS.", model=True)
    target_ongoing_requests: Annotated[int, integer(1)] = var(
        "32", "Ongoing requests per replica the autoscaler aims for.", model=True)
    max_model_len: Annotated[int | None, integer(1, empty=True)] = var(
        "8192", "Maximum context length (prompt + output). Empty = the model's own.", model=True)
    gpu_memory_utilization: Annotated[float, fraction()] = var(
        "0.90", "Fraction of each GPU's memory vLLM may use.", model=True)
    max_num_seqs: Annotated[int, integer(1)] = var("64", "Maximum sequences batched per replica.", model=True)
    dtype: Annotated[str, choice(DTYPES)] = var("auto", "Model weights and activations dtype.", model=True)
    quantization: Annotated[str | None, pattern(r"[A-Za-z0-9_-]+", "a vLLM quantization method name such as "
                                                "awq, gptq or fp8")] = var(
        "", "vLLM quantization method. Empty = none, or the model's own.", model=True)
    engine_kwargs: Annotated[dict[str, Any], json_object()] = var(
        "{}", "JSON object of any other vLLM engine arguments, merged last; an unknown key is refused, naming "
        "the closest one.", model=True)
    request_router: Annotated[str, choice(tuple(ROUTERS))] = var(
        "pow2", "How a request picks a model replica: pow2 (Ray's default, the shorter of two queues), "
        "prefix-cache (a shared prompt prefix goes where it is cached) or kv-aware (alpha upstream; "
        "needs ai-dynamo, which the image lacks).", model=True)
    request_router_kwargs: Annotated[dict[str, Any], json_object()] = var(
        "{}", "JSON object of the router's knobs; prefix-cache: " + ", ".join(PREFIX_ROUTER_KNOBS) + ".",
        model=True)
    lora_adapters_path: Annotated[str | None, pattern(r"(s3|gs|abfss|azure)://\S+", "a store folder such as "
                                                      "s3://bucket/adapters (s3://, gs://, abfss:// or azure://)")] = var(
        "", "LoRA adapters: the store folder whose subfolders are adapters, served as MODEL:SUBFOLDER. "
        "Empty = off.", model=True)
    lora_max_adapters_per_replica: Annotated[int, integer(1)] = var(
        "16", "LoRA adapters one replica keeps loaded (least recently used goes first).", model=True)
    aws_endpoint_url_s3: Annotated[str | None, URL] = var(
        "", "Upstream (boto3): an S3-compatible store (MinIO, Ceph) for LORA_ADAPTERS_PATH. Empty = AWS.")
    cpu_kvcache_gib: Annotated[int, integer(1)] = var(
        "1", "DEVICE=cpu only: KV-cache size in GiB.", alias="VLLM_CPU_KVCACHE_SPACE")
    stream_batching_interval_ms: Annotated[int, integer(0, 1000)] = var(
        str(DEFAULT_STREAM_BATCHING_INTERVAL_MS),
        "Ray Serve LLM writes streamed tokens in batches this often (ms); 0 = each token at once.", model=True)
    stream_first_chunk_at_once: Annotated[bool, flag()] = var(
        "1", "1 = the first chunk of every answer leaves the model replica as soon as the engine makes it; "
        "later chunks keep STREAM_BATCHING_INTERVAL_MS. 0 = Ray's own (the first waits for the first tick).",
        model=True)
    request_max_n: Annotated[int, integer(1, 16384)] = var(
        str(DEFAULT_MAX_N), "Largest n (and best_of) one request may ask for; above it: 400 naming the parameter.")
    request_max_tokens: Annotated[int, integer(1, 10_000_000)] = var(
        str(DEFAULT_MAX_TOKENS), "Largest max_tokens (and max_completion_tokens) one request may ask for; "
        "above it: 400.")
    grpc_between_deployments: Annotated[bool, flag()] = var(
        "1", "Ray Serve's deployments pass requests and tokens over gRPC (1) or as Ray actor calls (0).",
        alias="RAY_SERVE_USE_GRPC_BY_DEFAULT")
    haproxy_ingress: Annotated[bool, flag()] = var(
        "1", "Alpha upstream: Ray's HAProxy takes HTTP in front of the ingress replicas (1), or Serve's "
        "Python proxy (0).", alias="RAY_SERVE_ENABLE_HA_PROXY")
    direct_streaming: Annotated[bool, flag()] = var(
        "0", "Alpha upstream: the model replica serves HTTP itself behind Ray's HAProxy (1; needs "
        "RAY_SERVE_ENABLE_HA_PROXY=1) or not (0).", alias="RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING")
    ingress_replicas: Annotated[int, integer(1, 64)] = var(
        "1", "Replicas of Ray Serve's OpenAI ingress (the hop every token passes); ignored with direct streaming.")
    api_host: Annotated[str, text(empty_is="0.0.0.0")] = var(
        "0.0.0.0", "Address Ray Serve's HTTP server and the dashboard bind.", alias="RAY_API_HOST")
    api_port: Annotated[int, PORT] = var("8000", "Port of Ray Serve's HTTP API (behind Nginx).",
                                         alias="RAY_API_PORT")
    dashboard_port: Annotated[int, PORT] = var("8265", "Port of the Ray dashboard.", alias="RAY_DASHBOARD_PORT")
    metrics_port: Annotated[int, PORT] = var(
        "8080", "Port of Ray's Prometheus metrics (Serve and vLLM engine) on each node.", alias="RAY_METRICS_PORT")
    cluster_address: Annotated[str | None, OPTIONAL] = var(
        "", "Existing Ray cluster to join (host:port). Empty = start one.", alias="RAY_ADDRESS")
    head_host: Annotated[str | None, OPTIONAL] = var(
        "", "Multi-node: the head node's IP; with RAY_HEAD_PORT, the address when RAY_ADDRESS is empty.",
        alias="RAY_HEAD_HOST")
    head_port: Annotated[int, PORT] = var("6379", "Port of the head's Ray GCS (what workers join).",
                                          alias="RAY_HEAD_PORT")
    nginx_http_port: Annotated[int, PORT] = var("80", "Public HTTP port of Nginx.")
    nginx_https_port: Annotated[int, PORT] = var(
        "443", "Public HTTPS port of Nginx; served only when a certificate and key are mounted.")
    num_nodes: Annotated[int, integer(1)] = var("1", "Nodes in the Ray cluster (multi-node: head + workers).")
    placement_strategy: Annotated[str, choice(PLACEMENT_STRATEGIES, upper=True)] = var(
        "PACK", "Placement of one replica's bundles (1 GPU each).", model=True)
    node_wait_timeout_s: Annotated[int, integer(1)] = var(
        "600", "Seconds deploy.py (head) waits for NUM_NODES nodes to join before giving up.",
        alias="NODE_WAIT_TIMEOUT")
    stop_grace_s: Annotated[int, duration()] = var(
        "60s", "On stop, time in-flight requests get to finish (Compose's stop_grace_period too).",
        alias="SERVE_STOP_GRACE_PERIOD")
    watchdog_timeout_s: Annotated[int, watchdog_timeout()] = var(
        str(DEFAULT_WATCHDOG_TIMEOUT_S), "Seconds a running engine may leave its heartbeat unanswered before it "
        "is killed and its replica replaced (0 = off).", alias="WATCHDOG_TIMEOUT")
    watchdog_recovery_timeout_s: Annotated[int, integer(0)] = var(
        str(DEFAULT_RECOVERY_TIMEOUT_S), "Seconds the app may stay unhealthy before deploy.py exits non-zero "
        "for a full restart (0 = never).", alias="WATCHDOG_RECOVERY_TIMEOUT")
    hf_token: Annotated[str | None, OPTIONAL] = var(
        "", "Hugging Face token for gated models. Also read: HUGGING_FACE_HUB_TOKEN, HUGGINGFACE_TOKEN.",
        secret=True)
    openai_api_key: Annotated[str | None, secret()] = var(
        "", "The API key named 'default' that Nginx requires as 'Bearer'; more as API_KEY_<NAME>.", secret=True)
    ray_auth_token: Annotated[str | None, secret()] = var(
        "", "Ray cluster token shared by every node and Nginx. Required for multi-node and the dashboard.",
        secret=True)
    aws_access_key_id: Annotated[str | None, OPTIONAL] = var(
        "", "The S3 key id of LORA_ADAPTERS_PATH's store (with AWS_SECRET_ACCESS_KEY). Empty = boto3's own "
        "chain (an instance role).", secret=True)
    aws_secret_access_key: Annotated[str | None, OPTIONAL] = var(
        "", "The S3 secret key of LORA_ADAPTERS_PATH's store.", secret=True)
    # MODELS_FILE's entries, each a whole Settings (the stack's own fields are
    # the same in all); empty for the single-model variables. The outer
    # object's model fields are the first entry's. Not a variable.
    models: tuple["Settings", ...] = Field(default=(), alias="__models__", exclude=True)

    @property
    def served_model_name(self) -> str:
        return self.served_name or self.model_id

    @property
    def ray_address(self) -> str | None:
        """RAY_ADDRESS wins; else RAY_HEAD_HOST:RAY_HEAD_PORT; else None (start locally)."""
        if self.cluster_address:
            return self.cluster_address
        if self.head_host:
            return f"{self.head_host}:{self.head_port}"
        return None

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


# --- The other layers: declared here, read elsewhere --------------------------


class ComposeSettings(Layer):
    """What docker compose itself reads: the project, images, builds, mounts."""

    READER: ClassVar[str] = "docker compose (docker/docker-compose.yml)"

    compose_file: Annotated[str, ANY] = var("docker/docker-compose.yml", "Lets plain `docker compose` work from "
                                            "the repo root.")
    compose_project_name: Annotated[str, ANY] = var("ray-llm", "Name prefix of containers, volumes and the "
                                                    "network.")
    compose_profiles: Annotated[str, ANY] = var(
        "single", "What this machine runs: single, cpu, head or worker, plus monitoring or tunnel (comma-separated).")
    secrets_file: Annotated[str, ANY] = var("../.secrets", "Host path of the secrets file (relative to docker/), "
                                            "mounted read-only as a Compose secret.")
    llm_image: Annotated[str, ANY] = var("ray-llm-serve:local", "Tag of the GPU image built from docker/Dockerfile.")
    llm_cpu_image: Annotated[str, ANY] = var("ray-llm-serve:cpu-local", "Tag of the CPU image (profile cpu).")
    cuda_base_image: Annotated[str, ANY] = var(
        "nvidia/cuda:13.0.2-runtime-ubuntu24.04", "CUDA runtime base of the GPU image (CUDA 13 wheels: driver 580+).")
    cpu_base_image: Annotated[str, ANY] = var("debian:bookworm-slim", "Base of the CPU image (Python 3.11).")
    uv_image: Annotated[str, ANY] = var("ghcr.io/astral-sh/uv:0.13.9", "Image the uv binary is copied from.")
    cpu_torch_index_url: Annotated[str | None, pattern(r"https?://\S+", "an http(s) URL")] = var(
        "https://download.pytorch.org/whl/cpu", "Where the CPU image build gets torch+cpu. Empty = only "
        "CPU_WHEELS_DIR and PyPI.")
    cpu_wheels_dir: Annotated[str, ANY] = var("./cpu-wheels", "Folder of extra wheels for the CPU image build "
                                              "(relative to docker/).")
    build_ca_bundle: Annotated[str, ANY] = var(
        "", "PEM file of a TLS-inspecting proxy's CA, trusted inside image builds only. Empty = none.")
    nginx_image: Annotated[str, ANY] = var("ray-llm-nginx:local", "Tag of the project's Nginx image.")
    nginx_base_image: Annotated[str, ANY] = var("nginx:1.29-alpine", "Official Nginx image it is built on.")
    cpu_model_id: Annotated[str, model_name(required=False)] = var(
        "Qwen/Qwen2.5-0.5B-Instruct", "Model of the cpu profile, in place of MODEL_ID.")
    models_dir: Annotated[str, ANY] = var("../models", "Host folder mounted read-only at /models.")
    hf_hub_offline: Annotated[str | None, pattern(r"[01]", "0 or 1")] = var(
        "", "Upstream: 1 = the engine never contacts the Hub (weights from MODEL_SOURCE or the cache).")
    hf_endpoint: Annotated[str | None, URL] = var("https://huggingface.co", "Upstream: the Hub, or your mirror.")
    ray_usage_stats_enabled: Annotated[str, pattern(r"[01]", "0 or 1", empty=False)] = var(
        "0", "Upstream: Ray's usage report (and its cloud-metadata probes); Ray's own default is on.")
    shm_size: Annotated[str, SIZE] = var("16g", "Shared memory of the serving container (object store, NCCL).")
    serve_start_period: Annotated[int, duration()] = var(
        "30m", "How long the serving container may take to become healthy (weights download included).")
    ray_publish_address: Annotated[str, ANY] = var(
        "127.0.0.1", "Host address of the head's Serve and dashboard ports, and of Prometheus and Grafana.")
    nginx_bind_address: Annotated[str, ANY] = var(
        "0.0.0.0", "Host address Nginx publishes on; not loopback = an API key is required.")
    nginx_certs_dir: Annotated[str, ANY] = var("../certs", "Host folder with tls.crt and tls.key (HTTPS).")
    nginx_tmp_size: Annotated[str, SIZE] = var("256m", "Size of Nginx's /tmp tmpfs (request bodies), counted "
                                               "as memory.")
    prometheus_image: Annotated[str, ANY] = var("prom/prometheus:v3.5.0", "Profile monitoring: Prometheus.")
    nginx_exporter_image: Annotated[str, ANY] = var("nginx/nginx-prometheus-exporter:1.4.2",
                                                    "Profile monitoring: Nginx's exporter.")
    grafana_image: Annotated[str, ANY] = var("grafana/grafana:12.1.0", "Profile monitoring: Grafana.")
    prometheus_port: Annotated[int, PORT] = var("9090", "Host port of Prometheus (on RAY_PUBLISH_ADDRESS).")
    grafana_port: Annotated[int, PORT] = var("3000", "Host port of Grafana (on RAY_PUBLISH_ADDRESS).")
    grafana_admin_user: Annotated[str, ANY] = var("admin", "Grafana's admin user.")
    prometheus_scrape_interval: Annotated[int, duration()] = var("15s", "How often Prometheus scrapes.")
    prometheus_retention: Annotated[str, pattern(r"\d+[smhdwy]", "a time such as 15d", empty=False)] = var(
        "15d", "How long Prometheus keeps samples.")
    prometheus_ray_targets: Annotated[str, ANY] = var(
        "", "Ray metrics endpoints, host:port comma-separated. Empty = the serving container.")
    prometheus_nginx_target: Annotated[str, ANY] = var("nginx-exporter:9113", "The Nginx exporter, host:port.")
    nginx_exporter_port: Annotated[int, PORT] = var("9113", "Profile monitoring-head: the exporter's loopback "
                                                    "port.")
    cloudflared_image: Annotated[str, ANY] = var("cloudflare/cloudflared:2025.8.1", "Profile tunnel: cloudflared.")
    grafana_admin_password: Annotated[str | None, OPTIONAL] = var(
        "", "Profile monitoring: Grafana's admin password (required there).", secret=True)
    cloudflare_tunnel_token: Annotated[str | None, OPTIONAL] = var(
        "", "Profile tunnel: the Cloudflare Tunnel token (required there).", secret=True)


class NodeSettings(Layer):
    """Multi-node: what docker/ray-node.sh and the libraries (NCCL, gloo) read
    on each node. Values marked PER NODE differ on every node."""

    READER: ClassVar[str] = "docker/ray-node.sh, NCCL and torch.distributed"

    ray_head_wait_timeout: Annotated[int, integer(1)] = var(
        "300", "Seconds a worker waits for the head's GCS port before it exits (and restarts).")
    vllm_host_ip: Annotated[str, ANY] = var("", "PER NODE: this node's IP on the RDMA fabric.")
    ray_start_args: Annotated[str, ANY] = var("", "PER NODE: extra `ray start` arguments, e.g. --num-cpus=8.")
    nccl_socket_ifname: Annotated[str, ANY] = var("", "PER NODE: interface(s) for NCCL's bootstrap traffic.")
    gloo_socket_ifname: Annotated[str, ANY] = var("", "PER NODE: interface for torch.distributed's gloo.")
    nccl_ib_hca: Annotated[str, ANY] = var("", "PER NODE: RDMA HCA(s) NCCL may use, e.g. mlx5_0.")
    nccl_ib_gid_index: Annotated[str, ANY] = var("", "PER NODE: RoCE GID index (often 3).")
    nccl_net_gdr_level: Annotated[str, ANY] = var("", "GPUDirect RDMA level, e.g. PHB. Empty = NCCL decides.")
    nccl_ib_tc: Annotated[str, ANY] = var("", "RoCE traffic class. Empty = NCCL's default.")
    nccl_ib_sl: Annotated[str, ANY] = var("", "InfiniBand service level / RoCE priority. Empty = NCCL's default.")
    nccl_ib_timeout: Annotated[str, ANY] = var("", "IB verbs timeout exponent. Empty = NCCL's default.")
    nccl_ib_retry_cnt: Annotated[str, ANY] = var("", "IB verbs retry count. Empty = NCCL's default.")
    nccl_debug: Annotated[str, ANY] = var("WARN", "NCCL log level: WARN, or INFO to debug.")


class GatewaySettings(Layer):
    """What the Nginx image reads (docker/nginx/entrypoint.d/05-ray-llm.envsh
    validates these when the container starts)."""

    READER: ClassVar[str] = "Nginx (docker/nginx)"

    nginx_allow_open_api: Annotated[bool, flag()] = var(
        "0", "DANGEROUS: 1 serves /v1 with no API key on a non-loopback NGINX_BIND_ADDRESS.")
    nginx_status_port: Annotated[int, PORT] = var("8081", "Port of Nginx's status counters; never published.")
    nginx_tunnel_port: Annotated[int, PORT] = var(
        "8082", "The tunnel's door: the client's address from CF-Connecting-IP; never published.")
    nginx_upstream_host: Annotated[str, ANY] = var("ray-serve", "Host name of the Ray Serve service.")
    nginx_worker_processes: Annotated[str, pattern(r"auto|[1-9]\d*", "a number or auto", empty=False)] = var(
        "auto", "Nginx worker processes.")
    nginx_client_max_body_size: Annotated[str, SIZE] = var("10m", "Largest request body (413 above it).")
    nginx_proxy_read_timeout: Annotated[str, NGINX_TIME] = var(
        "600s", "Longest wait between two reads from Ray Serve (slow generations).")
    nginx_proxy_send_timeout: Annotated[str, NGINX_TIME] = var(
        "600s", "Longest wait between two writes of a request to Ray Serve.")
    nginx_client_header_timeout: Annotated[str, NGINX_TIME] = var(
        "15s", "Longest time a client may take to send its headers.")
    nginx_client_body_timeout: Annotated[str, NGINX_TIME] = var(
        "30s", "Longest pause between two reads of a request body.")
    nginx_key_rate_limit: Annotated[str | None, NGINX_RATE] = var(
        "", "Requests per API key per second or minute (429 above it). Empty or 0 = no limit.")
    nginx_key_rate_burst: Annotated[int, integer(0)] = var("20", "Burst above NGINX_KEY_RATE_LIMIT.")
    nginx_key_conn_limit: Annotated[int, integer(0)] = var(
        "64", "Requests in flight per API key (429 above it). 0 = no limit.")
    nginx_rate_limit: Annotated[str | None, NGINX_RATE] = var(
        "", "Requests per client address per second or minute. Empty or 0 = no limit.")
    nginx_rate_burst: Annotated[int, integer(0)] = var("20", "Burst above NGINX_RATE_LIMIT.")
    nginx_conn_limit: Annotated[int, integer(0)] = var(
        "256", "Requests in flight per client address, counted before the key. 0 = no limit.")
    nginx_dashboard_user: Annotated[str | None, OPTIONAL] = var(
        "", "Ray dashboard at /dashboard/ behind basic auth: the user (both set = on).", secret=True)
    nginx_dashboard_password: Annotated[str | None, OPTIONAL] = var(
        "", "Ray dashboard at /dashboard/: the password.", secret=True)


LAYERS: tuple[type[Layer], ...] = (Settings, GatewaySettings, ComposeSettings, NodeSettings)
# Names read by pattern, documented in .secrets.example.
API_KEY_PREFIX = "API_KEY_"


# --- The declaration, as data ------------------------------------------------


@dataclass(frozen=True)
class Variable:
    """One declared variable, for --help, the docs and the agreement tests."""

    name: str
    default: str
    help: str
    allowed: str
    layer: type[Layer]
    secret: bool = False
    per_model: bool = False


def _variables(layer: type[Layer]) -> Iterator[Variable]:
    for field in layer.model_fields.values():
        extra = field.json_schema_extra
        if not isinstance(extra, dict) or field.alias is None:
            continue
        rule = next(m for m in field.metadata if isinstance(m, Rule))
        yield Variable(field.alias, str(field.default), field.description or "", rule.allowed, layer,
                       bool(extra["secret"]), bool(extra["per_model"]))


VARIABLES: tuple[Variable, ...] = tuple(v for layer in LAYERS for v in _variables(layer))
SERVER_VARIABLES: tuple[Variable, ...] = tuple(v for v in VARIABLES if v.layer is Settings)
DEFAULTS: dict[str, str] = {v.name: v.default for v in VARIABLES}
SECRET_NAMES = frozenset(v.name for v in VARIABLES if v.secret)
# What one MODELS_FILE entry may set: the variables of one model. The rest
# (device, cluster, ports, ingress, watchdog, secrets) is the stack's own.
MODEL_IDENTITY = ("MODEL_ID", "SERVED_MODEL_NAME", "MODEL_SOURCE")
MODEL_VARIABLES = tuple(v.name for v in SERVER_VARIABLES if v.per_model)


def help_text() -> str:
    """The variable reference printed by `deploy.py --help`."""
    width = max(len(v.name) for v in SERVER_VARIABLES)
    lines = ["environment variables (from the environment, then .env and .secrets):"]
    for v in SERVER_VARIABLES:
        default = "secret, from .secrets" if v.secret else f"default: {v.default or '(empty)'}"
        lines.append(f"  {v.name:<{width}}  {v.help} [{default}]")
    return "\n".join(lines)


# --- Parsing -----------------------------------------------------------------


def first_secret(environ: Mapping[str, str], names: tuple[str, ...]) -> str | None:
    """The first of these variables that is set and not blank, stripped."""
    for name in names:
        value = (environ.get(name) or "").strip()
        if value:
            return value
    return None


def _validate(layer: type[Layer], environ: Mapping[str, str]) -> tuple[Any, list[str], set[str]]:
    """(model with defaults in place of bad values, problems, bad names)."""
    try:
        return layer.model_validate(environ), [], set()
    except ValidationError as err:
        problems, bad = [], set()
        for error in err.errors():
            name = str(error["loc"][0])
            bad.add(name)
            # Never echo a secret: name the variable and the rule only.
            shown = " (value hidden)" if name in SECRET_NAMES else f"={str(error['input']).strip()!r}"
            problems.append(f"{name}{shown} is invalid: {error['msg']}.")
        fallback = layer.model_validate({k: v for k, v in environ.items() if k not in bad})
        return fallback, problems, bad


def replica_bounds(s: Settings) -> list[str]:
    if s.min_replicas > s.max_replicas:
        return [f"MIN_REPLICAS={s.min_replicas} is greater than MAX_REPLICAS={s.max_replicas}: "
                "expected MIN_REPLICAS <= MAX_REPLICAS."]
    return []


def schedulability(s: Settings) -> list[str]:
    return schedulability_problems(s.device, s.gpus_per_node, s.num_nodes, s.placement_strategy,
                                   s.tensor_parallel_size, s.pipeline_parallel_size, s.max_replicas)


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


def accelerator_on_cpu(s: Settings) -> list[str]:
    if s.device == "cpu" and s.accelerator_type:
        return [f"ACCELERATOR_TYPE={s.accelerator_type!r} is invalid: must be empty when DEVICE=cpu "
                "(it names a GPU type)."]
    return []


def distinct_ports(s: Settings) -> list[str]:
    problems: list[str] = []
    seen: dict[int, str] = {}
    for name in ("RAY_API_PORT", "RAY_DASHBOARD_PORT", "RAY_HEAD_PORT", "RAY_METRICS_PORT", "NGINX_HTTP_PORT",
                 "NGINX_HTTPS_PORT"):
        port = getattr(s, _FIELD_OF[name])
        if port in seen:
            problems.append(f"{name}={port} clashes with {seen[port]}={port}: expected different ports.")
        else:
            seen[port] = name
    return problems


def cluster_token(s: Settings) -> list[str]:
    if s.num_nodes > 1 and not s.ray_auth_token:
        return [f"NUM_NODES={s.num_nodes} but RAY_AUTH_TOKEN is empty: every node of a multi-node cluster must "
                "share one Ray token (set it in .secrets on each node)."]
    return []


def router_knobs(s: Settings) -> list[str]:
    if s.request_router == "pow2" and s.request_router_kwargs:
        return [f"REQUEST_ROUTER_KWARGS={json.dumps(s.request_router_kwargs)!r} is invalid: the pow2 router takes no "
                "knobs (set REQUEST_ROUTER=prefix-cache, or leave it {})."]
    if s.request_router == "prefix-cache":
        return [f"REQUEST_ROUTER_KWARGS key {key!r} is invalid: expected one of {', '.join(PREFIX_ROUTER_KNOBS)}."
                for key in s.request_router_kwargs if key not in PREFIX_ROUTER_KNOBS]
    return []


def direct_streaming_needs_haproxy(s: Settings) -> list[str]:
    if s.direct_streaming and not s.haproxy_ingress:
        return ["RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING=1 needs RAY_SERVE_ENABLE_HA_PROXY=1: Ray Serve LLM's "
                "direct streaming runs behind the HAProxy ingress (set both, or direct streaming to 0)."]
    return []


def adapter_store_keys(s: Settings) -> list[str]:
    if bool(s.aws_access_key_id) != bool(s.aws_secret_access_key):
        given, missing = (("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY") if s.aws_access_key_id
                          else ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID"))
        return [f"{given} is set but {missing} is empty: the adapter store needs both (in .secrets), or neither."]
    return []


# Rules across variables, each a named function of the parsed settings.
CROSS_FIELD_RULES: tuple[Callable[[Settings], list[str]], ...] = (
    accelerator_on_cpu, replica_bounds, schedulability, distinct_ports, cluster_token,
    direct_streaming_needs_haproxy, router_knobs, adapter_store_keys)
_FIELD_OF = {field.alias: name for name, field in Settings.model_fields.items()}


def _parse_one(environ: Mapping[str, str]) -> Settings:
    data = {k: v for k, v in environ.items() if k not in HF_TOKEN_NAMES}
    data["HF_TOKEN"] = first_secret(environ, HF_TOKEN_NAMES) or ""
    settings, problems, bad = _validate(Settings, data)
    # A rule across variables speaks only of values that are valid themselves.
    for rule in CROSS_FIELD_RULES:
        problems.extend(p for p in rule(settings) if not any(name in p for name in bad))
    if problems:
        raise ConfigError(problems)
    return settings


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
    return parsed[0].model_copy(update={"models": tuple(parsed)})


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


LayerT = TypeVar("LayerT", bound=Layer)


def parse_layer(layer: type[LayerT], environ: Mapping[str, str]) -> LayerT:
    """One of the other layers (ComposeSettings, NodeSettings, GatewaySettings)
    from an environment mapping, or ConfigError naming every bad variable."""
    parsed, problems, _ = _validate(layer, environ)
    if problems:
        raise ConfigError(problems)
    return parsed  # type: ignore[no-any-return]


def layer_values(layer: type[Layer], environ: Mapping[str, str]) -> dict[str, str]:
    """The layer's non-secret variables as their reader gets them: the
    environment's text, else the declared default."""
    return {v.name: environ.get(v.name, v.default) for v in VARIABLES if v.layer is layer and not v.secret}


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
