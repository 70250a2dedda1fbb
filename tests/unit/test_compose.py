"""`docker compose config` (Compose v2's own validator) on the real compose file."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from support import REPO_ROOT
from support.compose_project import ComposeProject
from support.nginx import read_dotenv


@pytest.fixture()
def project(tmp_path: Path) -> ComposeProject:
    return ComposeProject(tmp_path)


def published(service: dict[str, Any]) -> set[tuple[str, str, int]]:
    return {(p.get("host_ip", ""), str(p["published"]), int(p["target"])) for p in service.get("ports", [])}


def test_default_stack_from_repo_root(project: ComposeProject) -> None:
    cfg = project.config()
    assert cfg["name"] == "ray-llm"
    assert set(cfg["services"]) == {"ray-serve", "nginx"}
    serve, nginx = cfg["services"]["ray-serve"], cfg["services"]["nginx"]
    # GPU reservation with the count from .env
    devices = serve["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert serve["shm_size"] and serve["restart"] == "unless-stopped" and nginx["restart"] == "unless-stopped"
    # Loopback-only Ray ports; Nginx is the public door.
    assert published(serve) == set()  # Nginx is the one door
    assert published(nginx) == {("0.0.0.0", "80", 80), ("0.0.0.0", "443", 443)}
    assert nginx["depends_on"]["ray-serve"]["condition"] == "service_healthy"
    assert "healthcheck.py" in " ".join(serve["healthcheck"]["test"])
    assert serve["healthcheck"]["start_period"] and nginx["healthcheck"]["test"]
    assert serve["networks"].keys() == nginx["networks"].keys() == {"llm"}
    # Model cache volume and the optional read-only models mount.
    targets = {v["target"]: v for v in serve["volumes"]}
    assert targets["/cache"]["type"] == "volume"
    assert targets["/models"]["read_only"] is True
    # Nginx is the project's image (render.sh inside), built FROM the official one.
    assert nginx["image"] == "ray-llm-nginx:local" and nginx["build"]["args"]["NGINX_BASE_IMAGE"] == "nginx:1.29-alpine"
    assert serve["environment"]["MODEL_ID"] == "Qwen/Qwen2.5-1.5B-Instruct"
    assert serve["build"]["args"]["FLAVOR"] == "gpu" and serve["build"]["target"] == "runtime"


SECRET_NAMES = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HUGGINGFACE_TOKEN", "OPENAI_API_KEY", "RAY_AUTH_TOKEN",
                "NGINX_DASHBOARD_USER", "NGINX_DASHBOARD_PASSWORD")


@pytest.mark.parametrize("profile", ["single", "cpu", "head", "worker"])
def test_secrets_are_a_mounted_file_never_environment(project: ComposeProject, profile: str) -> None:
    """No secret value in any container's configuration (what `docker inspect` shows)."""
    planted = {name: f"planted-{name.lower()}-value" for name in SECRET_NAMES}
    (project.root / ".secrets").write_text("".join(f"{k}={v}\n" for k, v in planted.items()))
    (project.root / ".secrets").chmod(0o600)
    project.set_env(COMPOSE_PROFILES=profile, VLLM_HOST_IP="10.0.0.1", RAY_HEAD_HOST="10.0.0.1")
    cfg = project.config()
    rendered = json.dumps(cfg)
    for name, value in planted.items():
        assert value not in rendered, name
    assert cfg["secrets"]["ray-llm"]["file"] == str(project.root / ".secrets")
    for name, service in cfg["services"].items():
        assert not set(service.get("environment", {})) & set(SECRET_NAMES), name
        assert [s["source"] for s in service["secrets"]] == ["ray-llm"], name


def test_secrets_file_location_follows_env(project: ComposeProject, tmp_path: Path) -> None:
    elsewhere = tmp_path / "site-secrets"
    elsewhere.write_text("OPENAI_API_KEY=sk-x\n")
    cfg = project.config(SECRETS_FILE=str(elsewhere))
    assert cfg["secrets"]["ray-llm"]["file"] == str(elsewhere)


def test_ports_follow_env(project: ComposeProject) -> None:
    project.set_env(NGINX_HTTP_PORT="8080", NGINX_HTTPS_PORT="8443", RAY_API_PORT="9000",
                    RAY_DASHBOARD_PORT="9265", RAY_PUBLISH_ADDRESS="10.1.2.3", NGINX_BIND_ADDRESS="127.0.0.1",
                    GPUS_PER_NODE="2")
    cfg = project.config()
    serve, nginx = cfg["services"]["ray-serve"], cfg["services"]["nginx"]
    assert published(serve) == set()  # Nginx is the one door
    assert published(nginx) == {("127.0.0.1", "8080", 8080), ("127.0.0.1", "8443", 8443)}
    assert "http://127.0.0.1:8080/healthz" in nginx["healthcheck"]["test"]
    assert serve["deploy"]["resources"]["reservations"]["devices"][0]["count"] == 2


def test_shell_wins_over_env_file(project: ComposeProject) -> None:
    cfg = project.config(NGINX_HTTP_PORT="18080")
    assert ("0.0.0.0", "18080", 18080) in published(cfg["services"]["nginx"])


def serving_settings() -> list[str]:
    """Every non-secret setting src/deploy.py reads (settings.Settings)."""
    from settings import SERVER_VARIABLES

    return [v.name for v in SERVER_VARIABLES if not v.secret]


@pytest.mark.parametrize("profile", ["single", "cpu", "head", "worker"])
def test_every_setting_set_in_the_shell_reaches_the_serving_container(project: ComposeProject,
                                                                      profile: str) -> None:
    """`MAX_MODEL_LEN=4096 docker compose up -d` must really serve 4096: settings
    reach the containers through interpolation, where the shell wins."""
    shell = {name: f"shell-{name.lower()}" for name in serving_settings()}
    # Compose itself needs valid values for these.
    shell.update(RAY_API_PORT="9000", RAY_DASHBOARD_PORT="9265", NGINX_HTTP_PORT="8080",
                 NGINX_HTTPS_PORT="8443", GPUS_PER_NODE="2", SERVE_STOP_GRACE_PERIOD="75s",
                 VLLM_HOST_IP="10.9.9.9", NCCL_SOCKET_IFNAME="ib-shell", RAY_HEAD_HOST="10.9.9.1")
    project.set_env(COMPOSE_PROFILES=profile)
    cfg = project.config(**shell)
    name = {"single": "ray-serve", "cpu": "ray-serve-cpu", "head": "ray-head", "worker": "ray-worker"}[profile]
    env = cfg["services"][name]["environment"]
    # MODELS_FILE names a host file; the container gets the mounted copy.
    fixed = {"cpu": {"DEVICE", "MODEL_ID"}, "head": {"RAY_API_HOST"}}.get(profile, set()) | {"MODELS_FILE"}
    for variable in serving_settings():
        if variable not in fixed:
            assert env.get(variable) == shell[variable], variable
    assert env["MODELS_FILE"] == MODELS_TARGET
    assert cfg["configs"]["models"]["file"] == str(project.root / "docker" / shell["MODELS_FILE"])
    if profile in ("head", "worker"):
        assert env["VLLM_HOST_IP"] == "10.9.9.9" and env["NCCL_SOCKET_IFNAME"] == "ib-shell"


MODELS_TARGET = "/etc/ray-llm/models.yaml"


@pytest.mark.parametrize("profile", ["single", "cpu", "head"])
def test_models_file_is_mounted_where_deploy_reads_it(project: ComposeProject, profile: str) -> None:
    """MODELS_FILE (relative to docker/) becomes a read-only config at one path,
    which the container's MODELS_FILE names; unset, nothing is named."""
    project.set_env(COMPOSE_PROFILES=profile)
    name = {"single": "ray-serve", "cpu": "ray-serve-cpu", "head": "ray-head"}[profile]
    cfg = project.config(MODELS_FILE="../models.yaml", MODEL_ID="", CPU_MODEL_ID="")
    service = cfg["services"][name]
    assert service["environment"]["MODELS_FILE"] == MODELS_TARGET
    assert service["environment"]["MODEL_ID"] == ""
    assert {"source": "models", "target": MODELS_TARGET} in service["configs"]
    assert cfg["configs"]["models"]["file"] == str(project.root / "models.yaml")
    plain = project.config()
    assert plain["services"][name]["environment"]["MODELS_FILE"] == ""
    assert plain["configs"]["models"]["file"] == "/dev/null"


def test_compose_does_not_see_edits_inside_the_models_file(project: ComposeProject) -> None:
    """The README's advice (--force-recreate after editing the YAML) holds
    while Compose's service hash ignores a config file's content, and setting
    MODELS_FILE in .env changes the hash (so `up -d` recreates the server)."""
    project.set_env(COMPOSE_PROFILES="cpu")
    models = project.root / "models.yaml"

    def service_hash(**environ: str) -> str:
        out = project.compose("config", "--hash", "ray-serve-cpu", **environ)
        assert out.returncode == 0, out.stderr
        return out.stdout.split()[-1]

    plain = service_hash()
    models.write_text("models:\n  - {MODEL_ID: org/a, SERVED_MODEL_NAME: a}\n")
    with_file = service_hash(MODELS_FILE="../models.yaml", MODEL_ID="", CPU_MODEL_ID="")
    models.write_text("models:\n  - {MODEL_ID: org/b, SERVED_MODEL_NAME: b}\n")
    edited = service_hash(MODELS_FILE="../models.yaml", MODEL_ID="", CPU_MODEL_ID="")
    assert with_file != plain
    assert edited == with_file, "Compose now sees config content: update the README's MODELS_FILE section"


@pytest.mark.parametrize("profile,nginx", [("single", "nginx"), ("cpu", "nginx"), ("head", "nginx-head")])
def test_every_nginx_setting_set_in_the_shell_reaches_nginx(project: ComposeProject, profile: str,
                                                           nginx: str) -> None:
    """Each variable the nginx service takes from .env: a shell value wins, .env is the default."""
    project.set_env(COMPOSE_PROFILES=profile)
    default_env = project.config()["services"][nginx]["environment"]
    dotenv = read_dotenv(project.root / ".env")
    # The variables interpolated under their own name (the others are fixed
    # container paths or derived per profile).
    names = [k for k, v in default_env.items() if k in dotenv and v == dotenv[k]]
    assert {"NGINX_CLIENT_MAX_BODY_SIZE", "NGINX_RATE_LIMIT", "NGINX_HTTP_PORT", "RAY_API_PORT"} <= set(names)
    numeric = {"NGINX_HTTP_PORT": "8081", "NGINX_HTTPS_PORT": "8444", "RAY_API_PORT": "9001",
               "RAY_DASHBOARD_PORT": "9266", "NGINX_WORKER_PROCESSES": "3", "NGINX_RATE_BURST": "7",
               "NGINX_BIND_ADDRESS": "127.0.0.9"}
    shell = {name: numeric.get(name, f"shell-{name.lower()}") for name in names}
    env = project.config(**shell)["services"][nginx]["environment"]
    for name in names:
        assert env[name] == shell[name], name


@pytest.mark.parametrize("profile,service", [("single", "ray-serve"), ("cpu", "ray-serve-cpu"),
                                             ("head", "ray-head"), ("worker", "ray-worker")])
def test_issue_example_max_model_len_from_the_shell(project: ComposeProject, profile: str, service: str) -> None:
    """`MAX_MODEL_LEN=4096 docker compose config` shows 4096 in the serving
    container, a per-node setting and a port from the shell too; .env stays the default."""
    project.set_env(COMPOSE_PROFILES=profile)
    dotenv = read_dotenv(project.root / ".env")
    default = project.config()["services"][service]
    assert default["environment"]["MAX_MODEL_LEN"] == dotenv["MAX_MODEL_LEN"] != "4096"
    cfg = project.config(MAX_MODEL_LEN="4096", RAY_API_PORT="9100", NCCL_SOCKET_IFNAME="ens-shell",
                         VLLM_HOST_IP="198.18.9.9")
    serve = cfg["services"][service]
    assert serve["environment"]["MAX_MODEL_LEN"] == "4096"
    assert serve["environment"]["RAY_API_PORT"] == "9100"
    if profile in ("single", "cpu"):
        assert published(serve) == set()
    else:
        assert serve["environment"]["NCCL_SOCKET_IFNAME"] == "ens-shell"
        assert serve["environment"]["VLLM_HOST_IP"] == "198.18.9.9"


def test_cpu_profile(project: ComposeProject) -> None:
    """COMPOSE_PROFILES=cpu: the CPU image, no GPU reservation, the same Nginx."""
    project.set_env(COMPOSE_PROFILES="cpu")
    cfg = project.config()
    assert set(cfg["services"]) == {"ray-serve-cpu", "nginx"}
    serve, nginx = cfg["services"]["ray-serve-cpu"], cfg["services"]["nginx"]
    assert "deploy" not in serve or not serve["deploy"].get("resources")
    assert serve["image"] == "ray-llm-serve:cpu-local"
    build = serve["build"]
    assert build["target"] == "runtime" and build["args"]["FLAVOR"] == "cpu"
    assert build["args"]["CPU_BASE_IMAGE"] == "debian:bookworm-slim"
    assert build["args"]["CPU_TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    assert build["additional_contexts"]["cpu-wheels"] == str(project.root / "docker" / "cpu-wheels")
    assert build["secrets"] == [{"source": "ca_bundle"}] or [s["source"] for s in build["secrets"]] == ["ca_bundle"]
    assert cfg["secrets"]["ca_bundle"]["file"] == "/dev/null"
    env = serve["environment"]
    assert env["DEVICE"] == "cpu" and env["MODEL_ID"] == "Qwen/Qwen2.5-0.5B-Instruct"
    # Nginx finds it under the GPU service's name; it waits for it to be healthy.
    assert serve["networks"]["llm"]["aliases"] == ["ray-serve"]
    assert nginx["environment"]["NGINX_UPSTREAM_HOST"] == "ray-serve"
    assert nginx["depends_on"]["ray-serve-cpu"]["condition"] == "service_healthy"
    assert published(serve) == set()  # Nginx is the one door
    assert serve["healthcheck"]["start_period"] and serve["restart"] == "unless-stopped"


def test_build_options_follow_env(project: ComposeProject, tmp_path: Path) -> None:
    ca = tmp_path / "corp-ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    project.set_env(COMPOSE_PROFILES="cpu")
    cfg = project.config(BUILD_CA_BUNDLE=str(ca), CPU_WHEELS_DIR=str(wheels), CPU_TORCH_INDEX_URL="",
                         CPU_BASE_IMAGE="example.org/debian:12", NGINX_BASE_IMAGE="example.org/nginx:1")
    serve = cfg["services"]["ray-serve-cpu"]
    assert cfg["secrets"]["ca_bundle"]["file"] == str(ca)
    assert serve["build"]["additional_contexts"]["cpu-wheels"] == str(wheels)
    assert serve["build"]["args"]["CPU_TORCH_INDEX_URL"] == ""
    assert serve["build"]["args"]["CPU_BASE_IMAGE"] == "example.org/debian:12"
    assert cfg["services"]["nginx"]["build"]["args"]["NGINX_BASE_IMAGE"] == "example.org/nginx:1"


def test_serving_containers_start_as_root_only_to_drop_it(project: ComposeProject) -> None:
    """Started as root to read the host user's 0600 .secrets; the entry point
    drops to the image's user, with tini as PID 1 (so no Docker init)."""
    for profile, name in (("single", "ray-serve"), ("cpu", "ray-serve-cpu")):
        project.set_env(COMPOSE_PROFILES=profile)
        serve = project.config()["services"][name]
        assert serve["user"] == "0:0" and serve["init"] is False
        assert serve["tmpfs"] == ["/run/ray-llm:uid=10001,gid=10001,mode=0700,size=1m"]
        assert serve["healthcheck"]["test"][1] == "/app/docker/container-entrypoint.sh"


@pytest.mark.parametrize("variable", ["HF_ENDPOINT", "RAY_API_PORT", "GPUS_PER_NODE", "NGINX_HTTP_PORT"])
def test_missing_required_variable_fails_with_clear_message(project: ComposeProject, variable: str) -> None:
    project.drop_env(variable)
    out = project.compose("config")
    assert out.returncode != 0
    assert f"{variable} must be set in .env" in out.stderr


def test_broken_compose_file_is_rejected(project: ComposeProject) -> None:
    """The validator itself must be able to fail (guards against a no-op wrapper)."""
    path = project.root / "docker" / "docker-compose.yml"
    path.write_text(path.read_text().replace("shm_size:", "shm_sizes:", 1))
    out = project.compose("config")
    assert out.returncode != 0 and "shm_sizes" in out.stderr


def test_no_profile_flag_means_the_single_node_stack(project: ComposeProject) -> None:
    """COMPOSE_PROFILES=single from .env: exactly ray-serve + nginx, nothing multi-node."""
    assert set(project.config()["services"]) == {"ray-serve", "nginx"}


def test_head_profile(project: ComposeProject) -> None:
    project.set_env(COMPOSE_PROFILES="head", VLLM_HOST_IP="10.0.0.1", NCCL_SOCKET_IFNAME="enp1s0f0np0",
                    NCCL_IB_HCA="mlx5_0", NCCL_IB_GID_INDEX="3", NUM_NODES="2", GPUS_PER_NODE="1")
    cfg = project.config()
    assert set(cfg["services"]) == {"ray-head", "nginx-head"}
    head, nginx = cfg["services"]["ray-head"], cfg["services"]["nginx-head"]
    assert head["network_mode"] == "host" and head["ipc"] == "host"
    assert head["command"] == ["/app/docker/ray-node.sh", "head"]
    assert {d["source"] for d in head["devices"]} == {"/dev/infiniband"}
    mounts = {v["target"]: v for v in head["volumes"]}
    for target in ("/sys/class/infiniband", "/sys/class/net", "/etc/rdma", "/models"):
        assert mounts[target]["read_only"] is True, target
    assert head["ulimits"]["memlock"] == -1 and head["ulimits"]["stack"] >= 64 * 1024 * 1024
    assert set(head["cap_add"]) == {"IPC_LOCK", "SYS_NICE", "SYS_RESOURCE"}
    assert "no-new-privileges:true" in head["security_opt"]
    assert head["deploy"]["resources"]["reservations"]["devices"][0]["count"] == 1
    assert head["restart"] == "unless-stopped"
    env = head["environment"]
    assert (env["VLLM_HOST_IP"], env["NCCL_SOCKET_IFNAME"], env["NCCL_IB_HCA"], env["NCCL_IB_GID_INDEX"]) == (
        "10.0.0.1", "enp1s0f0np0", "mlx5_0", "3")
    assert env["RAY_API_HOST"] == "127.0.0.1", "host network: Serve must stay on loopback behind nginx-head"
    assert nginx["network_mode"] == "host" and nginx["environment"]["NGINX_UPSTREAM_HOST"] == "127.0.0.1"
    assert nginx["depends_on"]["ray-head"]["condition"] == "service_healthy"


def test_worker_profile(project: ComposeProject) -> None:
    project.set_env(COMPOSE_PROFILES="worker", VLLM_HOST_IP="10.0.0.2", RAY_HEAD_HOST="10.0.0.1")
    cfg = project.config()
    assert set(cfg["services"]) == {"ray-worker"}
    worker = cfg["services"]["ray-worker"]
    assert worker["command"] == ["/app/docker/ray-node.sh", "worker"]
    assert worker["network_mode"] == "host"
    assert worker["environment"]["VLLM_HOST_IP"] == "10.0.0.2"
    assert worker["environment"]["RAY_HEAD_HOST"] == "10.0.0.1"
    assert "--raylet" in worker["healthcheck"]["test"]


def test_profile_flag_selects_the_profile(project: ComposeProject) -> None:
    cfg = project.config("--profile", "worker")
    assert "ray-worker" in cfg["services"]


def test_nginx_is_hardened(project: ComposeProject) -> None:
    nginx = project.config()["services"]["nginx"]
    assert nginx["read_only"] is True
    assert nginx["cap_drop"] == ["ALL"]
    assert set(nginx["cap_add"]) <= {"CHOWN", "SETUID", "SETGID", "NET_BIND_SERVICE", "DAC_READ_SEARCH"}
    # Each tmpfs a client can fill has a size (request bodies wait in /tmp).
    assert set(nginx["tmpfs"]) == {"/etc/nginx/conf.d:mode=0755,size=4m", "/tmp:mode=1777,size=256m"}
    assert nginx["stop_signal"] == "SIGQUIT"


@pytest.mark.parametrize("profile", ["single", "cpu", "head", "worker"])
def test_every_container_has_no_new_privileges(project: ComposeProject, profile: str) -> None:
    project.set_env(COMPOSE_PROFILES=profile)
    for name, service in project.config()["services"].items():
        assert "no-new-privileges:true" in service.get("security_opt", []), name


def test_only_nginx_publishes_beyond_loopback(project: ComposeProject) -> None:
    for name, service in project.config()["services"].items():
        for port in service.get("ports", []):
            if name != "nginx":
                assert port["host_ip"] == "127.0.0.1", (name, port)


# The head profiles' services are host-network twins of bridge services, built
# from the same x- anchors. Twin -> (bridge service, keys beyond the network
# ones that may differ, environment names that may differ).
NETWORK_KEYS = {"profiles", "networks", "network_mode", "ports"}
HEAD_TWINS: dict[str, tuple[str, set[str], set[str]]] = {
    "ray-head": ("ray-serve", {"command", "ipc", "devices", "ulimits", "cap_add", "shm_size", "volumes"},
                 {"RAY_API_HOST"}),  # + the per-node settings (x-node-environment), added below
    "nginx-head": ("nginx", {"depends_on"}, {"NGINX_BIND_ADDRESS", "NGINX_PUBLISHED_ADDRESS", "NGINX_UPSTREAM_HOST"}),
    "prometheus-head": ("prometheus", set(), set()),
    "nginx-exporter-head": ("nginx-exporter", set(), set()),
    "grafana-head": ("grafana", set(), {"GF_SERVER_HTTP_ADDR", "GF_SERVER_HTTP_PORT", "RAY_LLM_PROMETHEUS_URL"}),
}
ALL_PROFILES = ("--profile", "single", "--profile", "monitoring", "--profile", "head", "--profile", "monitoring-head")
# host:port in a command or healthcheck (":9090", "nginx:8081", "http://127.0.0.1:3000"):
# where a twin listens or connects is its network, not drift.
ADDRESS = re.compile(r"(?:https?://)?[\w.-]*:\d+")


def _normalised(service: dict[str, Any], skip_keys: set[str], skip_env: set[str]) -> dict[str, Any]:
    out = {k: v for k, v in service.items() if k not in NETWORK_KEYS | skip_keys}
    if "environment" in out:
        out["environment"] = {k: v for k, v in out["environment"].items() if k not in skip_env}
    if isinstance(out.get("command"), list):
        out["command"] = [ADDRESS.sub("ADDRESS", str(arg)) for arg in out["command"]]
    if "healthcheck" in out:
        out["healthcheck"] = {**out["healthcheck"],
                              "test": [ADDRESS.sub("ADDRESS", str(a)) for a in out["healthcheck"].get("test", [])]}
    if "depends_on" in out:  # a twin waits for the twins of what its bridge service waits for
        bridge_of = {twin: bridge for twin, (bridge, _, _) in HEAD_TWINS.items()}
        out["depends_on"] = {bridge_of.get(k, k): v for k, v in out["depends_on"].items()}
    return out


COMPOSE_FILE = REPO_ROOT / "docker" / "docker-compose.yml"


def head_twin_drift(cfg: dict[str, Any], compose_file: Path = COMPOSE_FILE) -> list[str]:
    """What differs between each -head service and its bridge service beyond what
    HEAD_TWINS allows (empty when the twins match)."""
    import yaml

    raw = yaml.safe_load(compose_file.read_text())
    per_node = set(raw["x-node-environment"]) - set(raw["x-serve-environment"])
    services = cfg["services"]
    problems = [f"{name}: a -head service without a bridge twin in HEAD_TWINS"
                for name in services if name.endswith("-head") and name not in HEAD_TWINS]
    for twin, (bridge, keys, env) in HEAD_TWINS.items():
        head_svc, bridge_svc = services[twin], services[bridge]
        if head_svc.get("network_mode") != "host" or "ports" in head_svc or "networks" in head_svc:
            problems.append(f"{twin}: not on the host network alone")
        if "network_mode" in bridge_svc or not bridge_svc.get("networks"):
            problems.append(f"{bridge}: not on a bridge network")
        skip_env = env | (per_node if twin == "ray-head" else set())
        a, b = _normalised(bridge_svc, keys, skip_env), _normalised(head_svc, keys, skip_env)
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                problems.append(f"{twin} drifted from {bridge} in {key}: {b.get(key)!r} != {a.get(key)!r}")
    head, serve = services["ray-head"], services["ray-serve"]
    if head["volumes"][:len(serve["volumes"])] != serve["volumes"]:
        problems.append("ray-head: does not mount ray-serve's volumes first")
    return problems


def test_head_twins_match_their_bridge_services(project: ComposeProject) -> None:
    """Requirement: the head-profile services reuse their bridge definitions.
    Everything but the network (and the few listed differences) is the same."""
    assert head_twin_drift(project.config(*ALL_PROFILES), project.root / "docker" / "docker-compose.yml") == []


@pytest.mark.parametrize("edit", [
    ("    profiles: [monitoring]\n    command:\n", "    profiles: [monitoring]\n    read_only: true\n    command:\n"),
    ("--storage.tsdb.retention.time=${PROMETHEUS_RETENTION}\n",
     "--storage.tsdb.retention.time=${PROMETHEUS_RETENTION}\n      - --log.level=debug\n"),
    ("      GF_SERVER_HTTP_PORT: \"3000\"\n", "      GF_SERVER_HTTP_PORT: \"3000\"\n      GF_LOG_LEVEL: debug\n"),
    ("    profiles: [single]\n", "    profiles: [single]\n    stop_signal: SIGINT\n"),
], ids=["bridge-key", "twin-command", "bridge-env", "ray-serve-key"])
def test_head_twin_drift_is_caught(project: ComposeProject, edit: tuple[str, str]) -> None:
    """The twin check itself fails when one side of a pair changes alone."""
    path = project.root / "docker" / "docker-compose.yml"
    text = path.read_text()
    assert text.count(edit[0]) == 1, edit[0]
    path.write_text(text.replace(*edit))
    assert head_twin_drift(project.config(*ALL_PROFILES), path) != []
