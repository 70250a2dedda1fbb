#!/usr/bin/env python3
"""Read-only preflight for one node, run before `docker compose up`.

    scripts/doctor.sh                 # checks for the profile in COMPOSE_PROFILES (.env)
    scripts/doctor.sh --profile head  # or for another profile
    scripts/doctor.sh --json          # the same results as data

First the configuration, with the code deploy.py uses (.env, .secrets, every
variable validated), then the host: Docker and Compose versions, the NVIDIA
driver and Container Toolkit, the GPUs against the parallelism, the
accelerator type, shared memory, disk, ports, the secrets file, and on head
and worker nodes the RDMA devices, the fabric interfaces and the head's port.
Each check prints pass, warn or fail with a one-line fix; the exit code is 1
when any check fails. Nothing is changed: no file is written, and the only
container it may start is a throwaway one (`docker compose run --rm
--no-deps`) that runs deploy.py --dry-run in the built image, when .env sets
ENGINE_KWARGS or LORA_ADAPTERS_PATH (vLLM's and Ray's own checks). The host
is a `Host` object (root of /dev, /sys, /proc, and the nvidia-smi, docker and
ip programs), so tests run every check on fake trees.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, MutableMapping, Sequence

from dotenv_files import REPO_ROOT, env_files, insecure_secrets, load_env_files
from model_source import offline
from settings import COMPOSE_DIR, ConfigError, Settings, parse_settings, read_models_file

PROFILES = ("single", "cpu", "head", "worker")
# The README's "What a GPU box needs" table.
MIN_DOCKER = (25, 0)
MIN_COMPOSE = (2, 24)
MIN_BUILDX = (0, 17)
# torch 2.13's CUDA 13 wheels (docker/Dockerfile) need driver 580 or newer.
MIN_DRIVER = 580
MIN_SHM_BYTES = 1 << 30
# Free disk below this warns when the model's size is not known here.
UNKNOWN_MODEL_FREE_BYTES = 20 << 30
LOOPBACK = ("127.", "::1", "localhost")
PASS, WARN, FAIL = "pass", "warn", "fail"


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    message: str
    fix: str = ""


def _port_free(host: str, port: int) -> bool:
    """True when nothing listens on host:port (a bind, no traffic)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except PermissionError:
            return True  # a privileged port: Docker's proxy binds it as root
        except OSError:
            return False
    return True


def _disk_free(path: Path) -> int | None:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def _reachable(host: str, port: int, timeout_s: float) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _ray_accelerator_types() -> set[str] | None:
    """Ray's own list of accelerator type names, or None when Ray is not installed here."""
    try:
        from ray.util.accelerators import accelerators
    except ImportError:
        return None
    return {v for k, v in vars(accelerators).items() if k.isupper() and isinstance(v, str)}


@dataclass(frozen=True)
class Host:
    """Everything the doctor reads from the machine."""

    root: Path = Path("/")
    nvidia_smi: str = "nvidia-smi"
    docker: str = "docker"
    ip: str = "ip"
    disk_free: Callable[[Path], int | None] = field(default=_disk_free)
    port_free: Callable[[str, int], bool] = field(default=_port_free)
    reachable: Callable[[str, int, float], bool] = field(default=_reachable)
    accelerator_types: Callable[[], set[str] | None] = field(default=_ray_accelerator_types)

    def path(self, absolute: str) -> Path:
        return self.root / absolute.lstrip("/")

    def run(self, argv: Sequence[str], timeout_s: float = 20, cwd: Path | None = None,
            env: Mapping[str, str] | None = None) -> tuple[int, str]:
        """(exit code, stdout + stderr); 127 when the program is missing."""
        try:
            done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout_s, check=False,
                                  stdin=subprocess.DEVNULL, cwd=cwd, env=None if env is None else dict(env))
        except FileNotFoundError:
            return 127, f"{argv[0]}: not found"
        except subprocess.TimeoutExpired:
            return 124, f"{argv[0]}: no answer within {timeout_s:.0f}s"
        return done.returncode, (done.stdout + done.stderr).strip()


def version_tuple(text: str) -> tuple[int, ...] | None:
    match = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    return tuple(int(g) for g in match.groups() if g is not None) if match else None


def size_bytes(text: str) -> int | None:
    """Compose's byte sizes: 16g, 512m, 1gb, 1073741824."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)b?\s*", text.lower())
    if not match:
        return None
    return int(float(match.group(1)) * 1024 ** " kmgt".index(match.group(2) or " "))


def gib(n: int) -> str:
    return f"{n / (1 << 30):.1f} GiB"


# --- Configuration -----------------------------------------------------------------

def load_config(environ: MutableMapping[str, str], profile: str | None) -> tuple[list[Check], Settings | None, str]:
    """deploy.py's own loading and validation of .env and .secrets, with what
    the profile's service sets itself (the cpu service: DEVICE=cpu, CPU_MODEL_ID)."""
    dotenv_file, secrets_file = env_files(environ)
    checks = []
    bad_secrets = insecure_secrets(secrets_file)
    if bad_secrets:
        checks.append(Check("secrets", FAIL, bad_secrets, f"chmod 600 {secrets_file}"))
    elif not secrets_file.is_file():
        checks.append(Check("secrets", WARN, f"{secrets_file} does not exist (no API key, no HF token)",
                            "cp .secrets.example .secrets && chmod 600 .secrets, then fill it in"))
    else:
        checks.append(Check("secrets", PASS, f"{secrets_file} is private to its owner"))
    load_env_files(environ, (dotenv_file, secrets_file))
    profile = profile or (environ.get("COMPOSE_PROFILES") or "single").split(",")[0].strip()
    if profile not in PROFILES:
        checks.append(Check("profile", FAIL, f"COMPOSE_PROFILES={profile} is not one of {', '.join(PROFILES)}",
                            "set COMPOSE_PROFILES in .env"))
        return checks, None, profile
    if profile == "cpu":
        environ["DEVICE"] = "cpu"
        # As the cpu service does: MODEL_ID is CPU_MODEL_ID (empty with MODELS_FILE).
        environ["MODEL_ID"] = environ.get("CPU_MODEL_ID", "")
    try:
        settings = parse_settings(environ, read_models_file(environ))
    except ConfigError as err:
        for problem in err.problems:
            checks.append(Check("config", FAIL, problem, "fix that variable in .env (or .secrets)"))
        return checks, None, profile
    checks.append(Check("config", PASS, f".env and .secrets are valid for the {profile} profile "
                        f"(model {', '.join(repr(m.served_model_name) for m in settings.served)})"))
    return checks, settings, profile


def api_key_names(environ: Mapping[str, str], settings: Settings) -> list[str]:
    """Names of the API keys Nginx will accept (OPENAI_API_KEY is 'default')."""
    names = ["default"] if settings.openai_api_key else []
    return names + sorted(n.removeprefix("API_KEY_") for n, v in environ.items() if n.startswith("API_KEY_") and v)


def open_api(environ: Mapping[str, str], settings: Settings) -> Check:
    bind = environ.get("NGINX_BIND_ADDRESS", "0.0.0.0")
    names = api_key_names(environ, settings)
    if names:
        return Check("api-key", PASS, f"{len(names)} API key(s) ({', '.join(names)}): Nginx requires one")
    if bind.startswith(LOOPBACK):
        return Check("api-key", WARN, f"no API key, but Nginx binds {bind} only",
                     "set OPENAI_API_KEY (or API_KEY_<NAME>) in .secrets before exposing the port")
    if environ.get("NGINX_ALLOW_OPEN_API") == "1":
        return Check("api-key", FAIL, f"no API key, NGINX_BIND_ADDRESS={bind} and NGINX_ALLOW_OPEN_API=1: "
                     "anyone who can reach the port can use the API",
                     "set OPENAI_API_KEY (or API_KEY_<NAME>) in .secrets and NGINX_ALLOW_OPEN_API=0")
    return Check("api-key", FAIL, f"no API key and Nginx binds {bind}: Nginx will refuse to start "
                 "(it would let anyone who can reach the port use the API)",
                 "set OPENAI_API_KEY in .secrets (openssl rand -hex 32), or NGINX_BIND_ADDRESS=127.0.0.1")


def ray_ports_private(environ: Mapping[str, str]) -> Check:
    """Ray Serve's HTTP port answers completions with no key: it must stay on loopback."""
    address = environ.get("RAY_PUBLISH_ADDRESS", "127.0.0.1")
    if address.startswith(LOOPBACK):
        return Check("ray-ports", PASS, f"Ray's Serve, dashboard and monitoring ports stay on {address}")
    return Check("ray-ports", WARN, f"RAY_PUBLISH_ADDRESS={address}: on the head, Ray Serve's port answers "
                 "completions to anyone who reaches it, with no API key",
                 "set RAY_PUBLISH_ADDRESS=127.0.0.1 (Nginx is the door; docs/operations.md)")


def tls(environ: Mapping[str, str]) -> Check:
    """Keys cross the network in clear without TLS (a tunnel does its own)."""
    bind = environ.get("NGINX_BIND_ADDRESS", "0.0.0.0")
    certs = host_path(environ, "NGINX_CERTS_DIR")
    if (certs / "tls.crt").is_file() and (certs / "tls.key").is_file():
        return Check("tls", PASS, f"HTTPS on NGINX_HTTPS_PORT with {certs}/tls.crt; plain HTTP /v1 is redirected")
    if bind.startswith(LOOPBACK):
        return Check("tls", PASS, f"plain HTTP on {bind} only (no certificate in {certs})")
    return Check("tls", WARN, f"no tls.crt and tls.key in {certs} (NGINX_CERTS_DIR): Nginx serves {bind} over "
                 "plain HTTP, so API keys and prompts cross the network in clear",
                 f"put tls.crt and tls.key in {certs} (docs/operations.md, TLS), or use the tunnel profile")


# Pages any host that reaches a node can read, with host networking (head,
# worker): measured by tests/integration/cluster/test_fabric_outsider.py and
# listed in docs/operations.md, "Multi-node: what the fabric sees".
HEAD_ONLY_PAGES = {44227: "dashboard metrics", 44217: "autoscaler metrics", 8404: "HAProxy stats",
                   9101: "HAProxy metrics"}


def fabric_ports(environ: Mapping[str, str], profile: str) -> Check:
    """Host networking: what stays readable without credentials needs the firewall."""
    pages = [f"{environ.get('RAY_METRICS_PORT', '8080')} (RAY_METRICS_PORT)"]
    if profile == "head":
        pages += [f"{port} ({what})" for port, what in HEAD_ONLY_PAGES.items()]
    return Check("fabric-ports", WARN, f"readable by any host that reaches this node: {', '.join(pages)}; "
                 "vLLM's engine sockets on VLLM_HOST_IP take no credentials",
                 "firewall every port but Nginx's from hosts outside the cluster "
                 "(docs/operations.md, \"Multi-node: what the fabric sees\")")


def gateway_limits(environ: Mapping[str, str]) -> Check:
    """Warns when a protection of the shared gateway is turned off."""
    off = [name for name in ("NGINX_KEY_CONN_LIMIT", "NGINX_CONN_LIMIT") if environ.get(name, "").strip() in ("", "0")]
    if off:
        return Check("limits", WARN, f"{' and '.join(off)} off (0 or empty): one consumer or address can take "
                     "every slot of the engine", "set them (.env documents the defaults)")
    return Check("limits", PASS, f"requests in flight capped per key ({environ['NGINX_KEY_CONN_LIMIT']}) "
                 f"and per address ({environ['NGINX_CONN_LIMIT']})")


# --- Docker ------------------------------------------------------------------------

def docker_info(host: Host) -> dict:
    """`docker info` as data, read once ({} when the daemon does not answer)."""
    code, out = host.run([host.docker, "info", "--format", "{{json .}}"])
    try:
        info = json.loads(out) if code == 0 else {}
    except ValueError:
        return {}
    return info if isinstance(info, dict) else {}


def docker_checks(host: Host, gpu: bool, info: dict) -> list[Check]:
    code, out = host.run([host.docker, "version", "--format", "{{.Server.Version}}"])
    if code == 127:
        return [Check("docker", FAIL, "the docker command is not installed",
                      "install Docker Engine 25+ (docs.docker.com/engine/install)")]
    if code != 0:
        return [Check("docker", FAIL, f"cannot reach the Docker daemon: {out.splitlines()[-1] if out else code}",
                      "start Docker (systemctl start docker) or add yourself to the docker group")]
    checks = []
    version = version_tuple(out)
    if version is None or version[:2] < MIN_DOCKER:
        checks.append(Check("docker", FAIL, f"Docker Engine {out or '?'} is older than {'.'.join(map(str, MIN_DOCKER))}"
                            " (healthcheck start_interval)", "upgrade Docker Engine"))
    else:
        checks.append(Check("docker", PASS, f"Docker Engine {out}"))
    for name, argv, minimum, fix in (
        ("compose", [host.docker, "compose", "version", "--short"], MIN_COMPOSE, "install the docker-compose-plugin (Compose v2.24+)"),
        ("buildx", [host.docker, "buildx", "version"], MIN_BUILDX, "install docker-buildx-plugin 0.17+"),
    ):
        code, out = host.run(argv)
        version = version_tuple(out) if code == 0 else None
        wanted = ".".join(map(str, minimum))
        if version is None:
            checks.append(Check(name, FAIL, f"docker {name} is missing ({out.splitlines()[-1] if out else code})", fix))
        elif version[:2] < minimum:
            checks.append(Check(name, FAIL, f"docker {name} {'.'.join(map(str, version))} is older than {wanted}", fix))
        else:
            checks.append(Check(name, PASS, f"docker {name} {'.'.join(map(str, version))}"))
    if gpu:
        if "nvidia" in (info.get("Runtimes") or {}):
            checks.append(Check("toolkit", PASS, "the nvidia runtime is registered with Docker"))
        else:
            checks.append(Check("toolkit", FAIL, "Docker has no nvidia runtime: the NVIDIA Container Toolkit is "
                                "missing or not configured", "install nvidia-container-toolkit, run "
                                "`nvidia-ctk runtime configure --runtime=docker` and restart Docker"))
    return checks


# --- GPUs --------------------------------------------------------------------------

@dataclass(frozen=True)
class Gpu:
    name: str
    driver: str
    memory_mib: int


def list_gpus(host: Host) -> tuple[list[Gpu] | None, str]:
    code, out = host.run([host.nvidia_smi, "--query-gpu=name,driver_version,memory.total",
                          "--format=csv,noheader,nounits"])
    if code != 0:
        return None, out
    gpus = []
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3:
            gpus.append(Gpu(parts[0], parts[1], int(float(parts[2])) if parts[2].replace(".", "").isdigit() else 0))
    return gpus, out


def accelerator_matches(accelerator: str, gpu_name: str) -> bool:
    """Ray names a GPU by a model token of its product name (H100, A100-80G, L40S...)."""
    token = accelerator.split("-")[0].upper()
    return token in re.sub(r"[^A-Z0-9]+", " ", gpu_name.upper()).split()


def replica_too_wide(prefix: str, model: Settings, count: int) -> Check | None:
    """A FAIL when one replica of this model needs more GPUs than it may use on this node."""
    bundles = model.bundles_per_replica
    if model.num_nodes == 1 and bundles > count:
        return Check("gpu-count", FAIL, f"{prefix}TENSOR_PARALLEL_SIZE x PIPELINE_PARALLEL_SIZE = {bundles} GPUs per "
                     f"replica, but this node has {count}", "lower the parallelism or add nodes (head/worker)")
    if model.placement_strategy == "STRICT_PACK" and bundles > count:
        return Check("gpu-count", FAIL, f"{prefix}PLACEMENT_STRATEGY=STRICT_PACK needs {bundles} GPUs on one node, "
                     f"this node has {count}", "use PACK, or lower the parallelism")
    return None


def gpu_checks(host: Host, settings: Settings) -> list[Check]:
    gpus, out = list_gpus(host)
    if gpus is None or not gpus:
        why = "nvidia-smi is not installed" if gpus is None and "not found" in out else (out.splitlines()[-1] if out else "nvidia-smi found no GPU")
        return [Check("gpu", FAIL, f"no NVIDIA GPU on this machine ({why})",
                      "install the NVIDIA driver (580+); without a GPU use COMPOSE_PROFILES=cpu")]
    checks = []
    driver = version_tuple(gpus[0].driver)
    if driver is None or driver[0] < MIN_DRIVER:
        checks.append(Check("driver", FAIL, f"NVIDIA driver {gpus[0].driver} is older than {MIN_DRIVER} "
                            "(the image's torch is built for CUDA 13)", f"upgrade the driver to {MIN_DRIVER} or newer"))
    else:
        checks.append(Check("driver", PASS, f"NVIDIA driver {gpus[0].driver}"))
    names = sorted({g.name for g in gpus})
    count = len(gpus)
    if count < settings.gpus_per_node:
        checks.append(Check("gpu-count", FAIL, f"GPUS_PER_NODE={settings.gpus_per_node} but this node has {count} "
                            f"GPU(s): {', '.join(names)}", f"set GPUS_PER_NODE={count} (and the parallelism to fit)"))
    else:
        too_wide = [replica_too_wide(prefix, model, count) for prefix, model in settings.labelled]
        checks += [check for check in too_wide if check]
        if not any(too_wide):
            widest = max(model.bundles_per_replica for model in settings.served)
            checks.append(Check("gpu-count", PASS, f"{count} GPU(s) ({', '.join(names)}) for GPUS_PER_NODE="
                                f"{settings.gpus_per_node}, {widest} per replica"
                                + (" (the widest model)" if settings.models else "")))
    wanted = [(prefix, model.accelerator_type) for prefix, model in settings.labelled if model.accelerator_type]
    if wanted:
        known = host.accelerator_types()  # once: Ray's list, the same for every model
        checks += [accelerator_check(prefix, accelerator, known, gpus, ", ".join(names))
                   for prefix, accelerator in wanted]
    return checks


def accelerator_check(prefix: str, accelerator: str, known: set[str] | None, gpus: Sequence[Gpu],
                      names: str) -> Check:
    if known is not None and accelerator not in known:
        return Check("accelerator", FAIL, f"{prefix}ACCELERATOR_TYPE={accelerator} is not one of Ray's accelerator "
                     "types", "leave it empty, or use a name from ray.util.accelerators (H100, A100-80G, L40S...)")
    if not any(accelerator_matches(accelerator, g.name) for g in gpus):
        return Check("accelerator", FAIL, f"{prefix}ACCELERATOR_TYPE={accelerator} matches none of this node's GPUs "
                     f"({names}): the deployment would stay pending forever",
                     "leave ACCELERATOR_TYPE empty or set the type of these GPUs")
    return Check("accelerator", PASS, f"{prefix}ACCELERATOR_TYPE={accelerator} matches {names}")


# --- Memory, disk, ports -----------------------------------------------------------

def mem_total(host: Host) -> int | None:
    try:
        for line in host.path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def shm_check(host: Host, environ: Mapping[str, str]) -> Check:
    raw = environ.get("SHM_SIZE", "")
    wanted = size_bytes(raw)
    if wanted is None:
        return Check("shm", FAIL, f"SHM_SIZE={raw!r} is not a size", "set SHM_SIZE=16g (or another size like 8g)")
    if wanted < MIN_SHM_BYTES:
        return Check("shm", WARN, f"SHM_SIZE={raw} is small: vLLM and NCCL use /dev/shm for tensors between "
                     "processes", "set SHM_SIZE=16g, at least 1g")
    total = mem_total(host)
    if total is not None and wanted > total:
        return Check("shm", WARN, f"SHM_SIZE={raw} is more than this node's {gib(total)} of memory "
                     "(/dev/shm is memory)", "lower SHM_SIZE")
    return Check("shm", PASS, f"SHM_SIZE={raw}" + (f" of {gib(total)} memory" if total else ""))


def host_path(environ: Mapping[str, str], name: str) -> Path:
    """A path from .env as Compose sees it: relative to docker/."""
    return (COMPOSE_DIR / environ.get(name, "")).resolve()


def weights_check(environ: Mapping[str, str], prefix: str, model: Settings) -> Check | None:
    """Where one served model's weights come from, when this host can tell."""
    source = model.model_source
    if source and source.startswith("/models/"):
        local = host_path(environ, "MODELS_DIR") / source[len("/models/"):]
        if not (local / "config.json").is_file():
            return Check("model", FAIL, f"{prefix}MODEL_SOURCE={source} is {local} on this host (MODELS_DIR), which "
                         "holds no config.json", f"scripts/download-model.sh --dest models/{local.name}, "
                         "or fix MODEL_SOURCE")
        return Check("model", PASS, f"{prefix}MODEL_SOURCE={source}: weights in {local}")
    if source:
        return Check("model", WARN, f"{prefix}MODEL_SOURCE={source} is outside /models, so this host cannot see "
                     "it; it must exist inside the container", "put the weights under MODELS_DIR and use "
                     "MODEL_SOURCE=/models/<folder>")
    if offline(environ):
        return Check("model", WARN, f"{prefix}HF_HUB_OFFLINE=1 with no MODEL_SOURCE: {model.model_id} must already "
                     "be in the model-cache volume", "scripts/download-model.sh (no --dest) fills that volume ahead of time")
    return None


def disk_check(host: Host, info: dict, model_ids: Sequence[str]) -> list[Check]:
    """Free space where Docker keeps the model-cache volume, once for every model it downloads."""
    root_dir = str(info.get("DockerRootDir") or "")
    if not root_dir.startswith("/"):
        return []
    root = Path(root_dir)
    free = host.disk_free(host.path(str(root)))
    if free is None:
        return [Check("disk", WARN, f"cannot see Docker's data root {root} from here (remote or rootless "
                      "Docker?): free disk not checked", "check free space where Docker keeps volumes")]
    if free < UNKNOWN_MODEL_FREE_BYTES:
        return [Check("disk", WARN, f"{gib(free)} free under {root} (Docker's volumes) and the size of "
                      f"{', '.join(model_ids)} is not known here", "free disk space, or pre-download with "
                      "scripts/download-model.sh to learn the size")]
    return [Check("disk", PASS, f"{gib(free)} free under {root} for the model cache")]


# The service that runs deploy.py in each profile, and its image's variable.
DEPLOY_SERVICE = {"single": ("ray-serve", "LLM_IMAGE"), "cpu": ("ray-serve-cpu", "LLM_CPU_IMAGE"),
                  "head": ("ray-head", "LLM_IMAGE")}
# How long deploy.py --dry-run may take in a container (vLLM's import, 2 cores: ~20 s).
DRY_RUN_TIMEOUT_S = 300


def engine_args_check(host: Host, environ: Mapping[str, str], settings: Settings, profile: str) -> list[Check]:
    """ENGINE_KWARGS (vLLM's engine and frontend arguments: a typo, a tool or
    reasoning parser vLLM lacks) and the LoRA settings, as Ray Serve LLM and
    vLLM read them: `deploy.py --dry-run` in the built image, with the
    service's own environment. Only when one of them is set."""
    if profile not in DEPLOY_SERVICE or not any(m.engine_kwargs or m.lora_adapters_path for m in settings.served):
        return []
    service, image_var = DEPLOY_SERVICE[profile]
    image = environ.get(image_var, "")
    if host.run([host.docker, "image", "inspect", "--format", "{{.Id}}", image])[0] != 0:
        return [Check("engine-args", WARN, f"ENGINE_KWARGS/LORA_ADAPTERS_PATH not checked against vLLM and Ray: "
                      f"{image_var}={image} is not built yet", "docker compose build, then run the doctor again")]
    code, out = host.run([host.docker, "compose", "run", "--rm", "--no-deps", "-T", service, "python",
                          "/app/src/deploy.py", "--dry-run"], timeout_s=DRY_RUN_TIMEOUT_S, cwd=REPO_ROOT,
                          env={**os.environ, **environ})
    if code == 0:
        return [Check("engine-args", PASS, f"ENGINE_KWARGS and LoRA settings accepted by vLLM and Ray Serve LLM "
                      f"in {image}")]
    problems = [line.strip()[2:] for line in out.splitlines() if line.strip().startswith("- ")]
    if code == 2 and problems:
        return [Check("engine-args", FAIL, problem, "fix that variable in .env (or MODELS_FILE)")
                for problem in problems]
    last = out.strip().splitlines()[-1] if out.strip() else "no output"
    return [Check("engine-args", WARN, f"deploy.py --dry-run in {image} could not run (exit {code}: {last})",
                  f"docker compose run --rm --no-deps {service} python /app/src/deploy.py --dry-run")]


def adapter_store_checks(settings: Settings) -> list[Check]:
    """Each model's LoRA adapter store: an s3:// store with no keys in .secrets
    works only where boto3 finds credentials of its own (an instance role)."""
    checks = []
    for prefix, model in settings.labelled:
        path = model.lora_adapters_path
        if not path:
            continue
        where = f"on {model.aws_endpoint_url_s3}" if model.aws_endpoint_url_s3 else "on AWS"
        if path.startswith("s3://") and not model.aws_access_key_id:
            checks.append(Check("lora", WARN, f"{prefix}LORA_ADAPTERS_PATH={path} ({where}) but AWS_ACCESS_KEY_ID "
                                "and AWS_SECRET_ACCESS_KEY are empty: only an instance role can read it",
                                "set both in .secrets (an on-prem store always needs them)"))
        else:
            checks.append(Check("lora", PASS, f"{prefix}LORA_ADAPTERS_PATH={path}" +
                                (f" ({where}, keys in .secrets)" if path.startswith("s3://") else "")))
    return checks


def model_checks(host: Host, environ: Mapping[str, str], settings: Settings, info: dict) -> list[Check]:
    """Each served model's weights; free disk once, for those the model cache downloads."""
    checks = [c for prefix, model in settings.labelled if (c := weights_check(environ, prefix, model))]
    downloaded = [model.model_id for model in settings.served if not model.model_source]
    return checks + (disk_check(host, info, downloaded) if downloaded else [])


def ports_to_check(environ: Mapping[str, str], settings: Settings, profile: str) -> list[tuple[str, str, int]]:
    nginx_bind = environ.get("NGINX_BIND_ADDRESS", "0.0.0.0")
    publish = environ.get("RAY_PUBLISH_ADDRESS", "127.0.0.1")
    if profile in ("head", "worker"):  # host networking: every port is the host's
        metrics = [("RAY_METRICS_PORT", "0.0.0.0", settings.metrics_port)]
        if profile == "worker":
            return metrics
        ports = [("RAY_HEAD_PORT", "0.0.0.0", int(environ.get("RAY_HEAD_PORT", "6379") or 6379)), *metrics,
                 ("RAY_API_PORT", "0.0.0.0", settings.api_port), ("RAY_DASHBOARD_PORT", "0.0.0.0", settings.dashboard_port),
                 # nginx-head's status page and tunnel door, on the host's loopback.
                 ("NGINX_STATUS_PORT", "127.0.0.1", int(environ.get("NGINX_STATUS_PORT", "8081") or 8081)),
                 ("NGINX_TUNNEL_PORT", "127.0.0.1", int(environ.get("NGINX_TUNNEL_PORT", "8082") or 8082))]
    else:
        ports = [("RAY_API_PORT", publish, settings.api_port), ("RAY_DASHBOARD_PORT", publish, settings.dashboard_port)]
    bind = "0.0.0.0" if nginx_bind in ("", "*") else nginx_bind
    return ports + [("NGINX_HTTP_PORT", bind, int(environ.get("NGINX_HTTP_PORT", "80"))),
                    ("NGINX_HTTPS_PORT", bind, int(environ.get("NGINX_HTTPS_PORT", "443")))]


def port_checks(host: Host, environ: Mapping[str, str], settings: Settings, profile: str) -> list[Check]:
    busy = [f"{name}={port} ({addr})" for name, addr, port in ports_to_check(environ, settings, profile)
            if not host.port_free(addr, port)]
    if busy:
        return [Check("ports", FAIL, f"already in use: {', '.join(busy)}",
                      "stop what listens there (ss -ltnp) or change the port in .env")]
    return [Check("ports", PASS, "the configured ports are free")]


# --- Multi-node --------------------------------------------------------------------

def interfaces(host: Host) -> list[str]:
    net = host.path("/sys/class/net")
    return sorted(p.name for p in net.iterdir()) if net.is_dir() else []


def matching_interfaces(spec: str, present: Iterable[str]) -> list[str] | None:
    """NCCL's *_SOCKET_IFNAME syntax: prefixes, '=' for exact names, '^' to exclude (None: not checkable)."""
    if spec.startswith("^"):
        return None
    exact = spec.startswith("=")
    wanted = [w for w in spec.lstrip("=").split(",") if w]
    return [i for i in present if any(i == w if exact else i.startswith(w) for w in wanted)]


def addresses(host: Host, ifname: str) -> list[str]:
    code, out = host.run([host.ip, "-o", "addr", "show", "dev", ifname])
    if code != 0:
        return []
    return [m.group(1) for m in re.finditer(r"\binet6? ([0-9a-fA-F.:]+)/", out)]


def multinode_checks(host: Host, environ: Mapping[str, str], settings: Settings, profile: str) -> list[Check]:
    checks = []
    ib = host.path("/sys/class/infiniband")
    devices = sorted(p.name for p in ib.iterdir()) if ib.is_dir() else []
    if not devices or not host.path("/dev/infiniband").is_dir():
        checks.append(Check("rdma", FAIL, "no RDMA device (/sys/class/infiniband, /dev/infiniband); Compose maps "
                            "/dev/infiniband into the container", "load the NIC's RDMA driver (mlx5_ib) and "
                            "rdma-core, or use the single profile"))
    else:
        hca = environ.get("NCCL_IB_HCA", "").strip()
        named = [] if hca.startswith("^") else [h.split(":")[0] for h in hca.lstrip("=").split(",") if h]
        missing = [h for h in named if not any(d.startswith(h) for d in devices)]
        if missing:
            checks.append(Check("rdma", FAIL, f"NCCL_IB_HCA={hca} names no RDMA device here ({', '.join(devices)})",
                                f"set NCCL_IB_HCA to one of {', '.join(devices)}"))
        else:
            checks.append(Check("rdma", PASS, f"RDMA devices: {', '.join(devices)}"))
    host_ip = environ.get("VLLM_HOST_IP", "").strip()
    present = interfaces(host)
    for var in ("NCCL_SOCKET_IFNAME", "GLOO_SOCKET_IFNAME"):
        spec = environ.get(var, "").strip()
        if not spec:
            checks.append(Check(var.lower(), WARN, f"{var} is empty: the library picks an interface itself",
                                f"set {var} to the fabric interface that holds VLLM_HOST_IP"))
            continue
        matched = matching_interfaces(spec, present)
        if matched is None:
            checks.append(Check(var.lower(), PASS, f"{var}={spec} (an exclude list; not checked)"))
        elif not matched:
            checks.append(Check(var.lower(), FAIL, f"{var}={spec} matches no interface on this node "
                                f"({', '.join(present) or 'none'})", f"set {var} to one of: {', '.join(present)}"))
        elif host_ip and not any(host_ip in addresses(host, i) for i in matched):
            checks.append(Check(var.lower(), FAIL, f"VLLM_HOST_IP={host_ip} is not an address of {var}={spec} "
                                f"({', '.join(matched)})", "set VLLM_HOST_IP to this node's address on that interface"))
        else:
            checks.append(Check(var.lower(), PASS, f"{var}={spec} ({', '.join(matched)}) holds VLLM_HOST_IP={host_ip}"))
    if not host_ip:
        checks.append(Check("host-ip", FAIL, "VLLM_HOST_IP is empty: each node must be pinned to its fabric IP",
                            "set VLLM_HOST_IP to this node's address on the RDMA fabric"))
    if not settings.ray_auth_token:
        checks.append(Check("ray-auth", FAIL, "RAY_AUTH_TOKEN is empty: the cluster would accept any client",
                            "put the same RAY_AUTH_TOKEN in .secrets on every node"))
    else:
        checks.append(Check("ray-auth", PASS, "RAY_AUTH_TOKEN is set"))
    checks.append(fabric_ports(environ, profile))
    if profile == "worker":
        head = environ.get("RAY_HEAD_HOST", "").strip()
        port = int(environ.get("RAY_HEAD_PORT", "6379") or 6379)
        if not head:
            checks.append(Check("head", FAIL, "RAY_HEAD_HOST is empty", "set RAY_HEAD_HOST to the head's fabric IP"))
        elif host.reachable(head, port, 3.0):
            checks.append(Check("head", PASS, f"the head answers on {head}:{port}"))
        else:
            checks.append(Check("head", FAIL, f"nothing answers on {head}:{port} (RAY_HEAD_HOST:RAY_HEAD_PORT)",
                                "start the head first (COMPOSE_PROFILES=head) and check the firewall"))
    return checks


# --- Putting it together -----------------------------------------------------------

def run_checks(environ: MutableMapping[str, str], host: Host, profile: str | None = None) -> list[Check]:
    checks, settings, profile = load_config(environ, profile)
    if profile not in PROFILES:
        return checks
    gpu = profile != "cpu" and (settings is None or settings.device == "gpu")
    info = docker_info(host)
    checks += docker_checks(host, gpu, info)
    if settings is None:
        return checks
    checks.append(open_api(environ, settings))
    checks.append(gateway_limits(environ))
    checks.append(tls(environ))
    checks.append(ray_ports_private(environ))
    if gpu:
        checks += gpu_checks(host, settings)
    checks.append(shm_check(host, environ))
    checks += model_checks(host, environ, settings, info)
    checks += adapter_store_checks(settings)
    checks += engine_args_check(host, environ, settings, profile)
    checks += port_checks(host, environ, settings, profile)
    if profile in ("head", "worker"):
        checks += multinode_checks(host, environ, settings, profile)
    checks += monitoring_checks(environ, profile)
    return checks


def monitoring_checks(environ: Mapping[str, str], profile: str) -> list[Check]:
    """The monitoring profile that fits the serving profile, with targets it can reach."""
    added = {p.strip() for p in (environ.get("COMPOSE_PROFILES") or "").split(",")} & {"monitoring", "monitoring-head"}
    if not added:
        return []
    wanted = "monitoring-head" if profile == "head" else "monitoring"
    if profile == "worker":
        return [Check("monitoring", FAIL, f"COMPOSE_PROFILES adds {', '.join(sorted(added))} to a worker: "
                      "monitoring runs on the head only (its Prometheus scrapes every node)",
                      "set COMPOSE_PROFILES=worker here, and head,monitoring-head on the head")]
    if added != {wanted}:
        return [Check("monitoring", FAIL, f"COMPOSE_PROFILES adds {', '.join(sorted(added))} to {profile}, "
                      f"which takes {wanted}", f"set COMPOSE_PROFILES={profile},{wanted}")]
    if profile != "head":
        return [Check("monitoring", PASS, f"profile monitoring beside {profile}")]
    problems = []
    if not (environ.get("PROMETHEUS_RAY_TARGETS") or "").strip():
        problems.append("PROMETHEUS_RAY_TARGETS is empty (it would scrape ray-serve, a name host networking "
                        "cannot resolve)")
    nginx_target = (environ.get("PROMETHEUS_NGINX_TARGET") or "").strip()
    if not nginx_target.startswith(("127.", "localhost:")):
        problems.append(f"PROMETHEUS_NGINX_TARGET={nginx_target} is not the exporter on the head's loopback")
    if problems:
        port = environ.get("NGINX_EXPORTER_PORT") or "9113"
        return [Check("monitoring", FAIL, "profile monitoring-head: " + "; ".join(problems),
                      "in .env: PROMETHEUS_RAY_TARGETS=<every node's VLLM_HOST_IP>:RAY_METRICS_PORT, comma-separated, "
                      f"and PROMETHEUS_NGINX_TARGET=127.0.0.1:{port}")]
    return [Check("monitoring", PASS, "profile monitoring-head scrapes "
                  f"{environ.get('PROMETHEUS_RAY_TARGETS')} and {nginx_target}")]


def render(checks: Sequence[Check]) -> str:
    lines = []
    for c in checks:
        line = f"{c.status.upper():4}  {c.name:<18} {c.message}"
        if c.fix and c.status != PASS:
            line += f"\n      {'':<18} fix: {c.fix}"
        lines.append(line)
    fails = sum(c.status == FAIL for c in checks)
    warns = sum(c.status == WARN for c in checks)
    lines.append(f"\n{fails} failed, {warns} warnings, {len(checks) - fails - warns} passed")
    return "\n".join(lines)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="doctor", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", choices=PROFILES, help="check for this profile (default: COMPOSE_PROFILES)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--root", type=Path, default=Path("/"), help="read /dev, /sys and /proc under this root (tests)")
    p.add_argument("--nvidia-smi", default="nvidia-smi", help="the nvidia-smi program to run")
    p.add_argument("--docker", default="docker", help="the docker program to run")
    p.add_argument("--ip", default="ip", help="the ip program to run")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None, environ: MutableMapping[str, str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    env = dict(os.environ) if environ is None else environ
    host = Host(root=args.root, nvidia_smi=args.nvidia_smi, docker=args.docker, ip=args.ip)
    checks = run_checks(env, host, args.profile)
    if args.json:
        print(json.dumps({"checks": [asdict(c) for c in checks],
                          "failed": sum(c.status == FAIL for c in checks)}, indent=2))
    else:
        print(render(checks))
    return 1 if any(c.status == FAIL for c in checks) else 0


if __name__ == "__main__":
    sys.exit(main())
