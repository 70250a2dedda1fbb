"""src/doctor.py (scripts/doctor.sh): every check against fake host trees and
fake nvidia-smi/docker/ip programs, which the doctor really runs; then the
doctor for real on this machine, which has no GPU."""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import socket
import sys
from pathlib import Path
from typing import Iterator

import pytest

import doctor
from support import REPO_ROOT, clean_env, run

GOOD_SMI = "NVIDIA H100 80GB HBM3, 580.65.06, 81559\nNVIDIA H100 80GB HBM3, 580.65.06, 81559"
API_KEY = "sk-doctor-test"


def fake_program(path: Path, answers: dict[str, tuple[int, str]]) -> str:
    """A program that answers each exact argument string with (exit code, output)."""
    lines = ["#!/usr/bin/env bash", 'case "$*" in']
    for args, (code, out) in answers.items():
        lines.append(f"  {shlex.quote(args)}) printf '%s\\n' {shlex.quote(out)}; exit {code};;")
    lines += ['  *) echo "unexpected arguments: $*" >&2; exit 99;;', "esac"]
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o755)
    return str(path)


NVIDIA_RUNTIMES = {"io.containerd.runc.v2": {}, "nvidia": {"path": "nvidia-container-runtime"}, "runc": {}}


def info_answer(runtimes: dict = NVIDIA_RUNTIMES, root: str = "/var/lib/docker") -> tuple[int, str]:
    """`docker info --format {{json .}}`, the fields the doctor reads."""
    return 0, json.dumps({"Runtimes": runtimes, "DockerRootDir": root, "ServerVersion": "26.1.5"})


def docker_answers(engine: str = "26.1.5", compose: str = "2.40.3",
                   buildx: str = "github.com/docker/buildx 0.19.3") -> dict[str, tuple[int, str]]:
    return {
        "version --format {{.Server.Version}}": (0, engine),
        "compose version --short": (0, compose),
        "buildx version": (0, buildx),
        "info --format {{json .}}": info_answer(),
    }


@pytest.fixture
def node(tmp_path: Path) -> Path:
    """A fake node: two network interfaces, one RDMA device, 64 GiB of memory."""
    root = tmp_path / "root"
    for d in ("sys/class/net/lo", "sys/class/net/eth0", "sys/class/net/enp1s0f0", "sys/class/infiniband/mlx5_0",
              "dev/infiniband", "proc"):
        (root / d).mkdir(parents=True)
    (root / "dev/infiniband/uverbs0").write_text("")
    (root / "proc/meminfo").write_text("MemTotal:       67108864 kB\nMemFree:        1000 kB\n")
    return root


class Doctor:
    """run_checks against a fake node, with fake programs the test can change."""

    def __init__(self, tmp_path: Path, root: Path) -> None:
        self.tmp = tmp_path
        self.root = root
        self.smi = {"--query-gpu=name,driver_version,memory.total --format=csv,noheader,nounits": (0, GOOD_SMI)}
        self.docker = docker_answers()
        self.ip = {"-o addr show dev enp1s0f0": (0, "3: enp1s0f0    inet 198.18.0.1/24 brd 198.18.0.255 scope global enp1s0f0"),
                   "-o addr show dev eth0": (0, "2: eth0    inet 198.19.5.2/24 scope global eth0")}
        self.secrets = tmp_path / "secrets"
        self.secrets.write_text(f"OPENAI_API_KEY={API_KEY}\n")
        self.secrets.chmod(0o600)
        self.free_disk = 500 << 30
        self.accelerators: set[str] | None = {"H100", "A100", "A100-80G", "L4"}
        self.busy: set[int] = set()
        self.answering: set[tuple[str, int]] = set()

    def host(self) -> doctor.Host:
        return doctor.Host(
            root=self.root,
            nvidia_smi=fake_program(self.tmp / "nvidia-smi", self.smi) if self.smi is not None else str(self.tmp / "absent"),
            docker=fake_program(self.tmp / "docker", self.docker),
            ip=fake_program(self.tmp / "ip", self.ip),
            disk_free=lambda _path: self.free_disk,
            port_free=lambda _host, port: port not in self.busy,
            reachable=lambda host, port, _timeout: (host, port) in self.answering,
            accelerator_types=lambda: self.accelerators,
        )

    def checks(self, profile: str = "single", **env: str) -> dict[str, doctor.Check]:
        environ = {"RAY_LLM_SECRETS_FILE": str(self.secrets), "NGINX_BIND_ADDRESS": "0.0.0.0", "SHM_SIZE": "16g",
                   "MODEL_SOURCE": "", "HF_HUB_OFFLINE": "", "GPUS_PER_NODE": "2", **env}
        results = doctor.run_checks(environ, self.host(), profile)
        by_name: dict[str, doctor.Check] = {}
        for check in results:
            by_name.setdefault(check.name, check)
            assert check.status in (doctor.PASS, doctor.WARN, doctor.FAIL)
            assert check.status == doctor.PASS or check.fix, f"{check} has no fix"
        return by_name


@pytest.fixture
def doc(tmp_path: Path, node: Path) -> Doctor:
    return Doctor(tmp_path, node)


def failed(checks: dict[str, doctor.Check]) -> dict[str, str]:
    return {name: c.message for name, c in checks.items() if c.status == doctor.FAIL}


def test_healthy_gpu_node_passes(doc: Doctor) -> None:
    checks = doc.checks(ACCELERATOR_TYPE="H100")
    assert failed(checks) == {}
    assert checks["driver"].message == "NVIDIA driver 580.65.06"
    assert "2 GPU(s) (NVIDIA H100 80GB HBM3)" in checks["gpu-count"].message
    assert checks["accelerator"].status == doctor.PASS
    assert checks["toolkit"].status == doctor.PASS
    assert checks["disk"].status == doctor.PASS


def test_config_errors_name_the_variable(doc: Doctor) -> None:
    checks = doctor.run_checks({"RAY_LLM_SECRETS_FILE": str(doc.secrets), "MAX_REPLICAS": "zero"}, doc.host(), "single")
    config = [c for c in checks if c.name == "config"]
    assert config and all(c.status == doctor.FAIL for c in config)
    assert any("MAX_REPLICAS" in c.message for c in config)


def test_old_driver(doc: Doctor) -> None:
    doc.smi = {k: (0, v.replace("580.65.06", "550.54.15")) for k, (c, v) in doc.smi.items()}
    assert "550.54.15 is older than 580" in failed(doc.checks())["driver"]


def test_no_gpu_says_so(doc: Doctor) -> None:
    doc.smi = None
    message = failed(doc.checks())["gpu"]
    assert "no NVIDIA GPU on this machine (nvidia-smi is not installed)" in message
    doc.smi = {"--query-gpu=name,driver_version,memory.total --format=csv,noheader,nounits":
               (9, "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.")}
    assert "couldn't communicate" in failed(doc.checks())["gpu"]


def test_cpu_profile_needs_no_gpu(doc: Doctor) -> None:
    doc.smi = None
    doc.docker["info --format {{json .}}"] = info_answer(runtimes={"runc": {}})
    checks = doc.checks("cpu")
    assert failed(checks) == {}
    assert "gpu" not in checks and "toolkit" not in checks
    assert "cpu profile" in checks["config"].message


def test_container_toolkit_missing(doc: Doctor) -> None:
    doc.docker["info --format {{json .}}"] = info_answer(runtimes={"io.containerd.runc.v2": {}, "runc": {}})
    assert "no nvidia runtime" in failed(doc.checks())["toolkit"]


@pytest.mark.parametrize("key,answer,name,text", [
    ("version --format {{.Server.Version}}", (0, "20.10.24"), "docker", "older than 25.0"),
    ("version --format {{.Server.Version}}", (1, "Cannot connect to the Docker daemon at unix:///var/run/docker.sock."),
     "docker", "cannot reach the Docker daemon"),
    ("compose version --short", (0, "2.20.2"), "compose", "2.20.2 is older than 2.24"),
    ("compose version --short", (125, "docker: 'compose' is not a docker command."), "compose", "missing"),
    ("buildx version", (0, "github.com/docker/buildx 0.13.1 0.13.1+ds1-3"), "buildx", "0.13.1 is older than 0.17"),
])
def test_docker_versions(doc: Doctor, key: str, answer: tuple[int, str], name: str, text: str) -> None:
    doc.docker[key] = answer
    assert text in failed(doc.checks())[name]


def test_docker_not_installed(doc: Doctor, tmp_path: Path) -> None:
    host = doc.host()
    host = dataclasses.replace(host, docker=str(tmp_path / "no-docker"))
    checks = doctor.run_checks({"RAY_LLM_SECRETS_FILE": str(doc.secrets)}, host, "cpu")
    assert any(c.name == "docker" and "not installed" in c.message for c in checks)


def test_more_gpus_configured_than_present(doc: Doctor) -> None:
    message = failed(doc.checks(GPUS_PER_NODE="4", TENSOR_PARALLEL_SIZE="4"))["gpu-count"]
    assert "GPUS_PER_NODE=4 but this node has 2 GPU(s)" in message


def test_parallelism_larger_than_the_node(doc: Doctor) -> None:
    # Two nodes of 2 GPUs would fit TP=4 (settings accept it), but STRICT_PACK keeps a replica on one node.
    checks = doc.checks("head", NUM_NODES="2", TENSOR_PARALLEL_SIZE="4", PLACEMENT_STRATEGY="STRICT_PACK",
                        GPUS_PER_NODE="2")
    assert "STRICT_PACK" in failed(checks)["config"]  # settings already refuse it
    doc.smi = {k: (0, "NVIDIA L4, 580.1, 23034") for k in doc.smi}
    checks = doc.checks(GPUS_PER_NODE="1", TENSOR_PARALLEL_SIZE="1", ACCELERATOR_TYPE="L4")
    assert failed(checks) == {}


@pytest.mark.parametrize("accelerator,text", [
    ("A100", "matches none of this node's GPUs (NVIDIA H100 80GB HBM3)"),
    ("H100X", "is not one of Ray's accelerator types"),
])
def test_accelerator_type(doc: Doctor, accelerator: str, text: str) -> None:
    assert text in failed(doc.checks(ACCELERATOR_TYPE=accelerator))["accelerator"]


def test_accelerator_without_ray_still_matches_the_gpus(doc: Doctor) -> None:
    doc.accelerators = None  # Ray not installed on the host
    assert doc.checks(ACCELERATOR_TYPE="H100")["accelerator"].status == doctor.PASS
    assert "matches none" in failed(doc.checks(ACCELERATOR_TYPE="L40S"))["accelerator"]


@pytest.mark.parametrize("size,status,text", [
    ("abc", doctor.FAIL, "is not a size"),
    ("64m", doctor.WARN, "is small"),
    ("128g", doctor.WARN, "more than this node's 64.0 GiB"),
    ("8gb", doctor.PASS, "SHM_SIZE=8gb of 64.0 GiB"),
])
def test_shm_size(doc: Doctor, size: str, status: str, text: str) -> None:
    check = doc.checks(SHM_SIZE=size)["shm"]
    assert check.status == status and text in check.message


def test_low_disk_warns(doc: Doctor) -> None:
    doc.free_disk = 5 << 30
    check = doc.checks()["disk"]
    assert check.status == doctor.WARN and "5.0 GiB free under /var/lib/docker" in check.message


def test_model_source_in_models_dir(doc: Doctor, tmp_path: Path) -> None:
    models = tmp_path / "models"
    (models / "qwen").mkdir(parents=True)
    assert "holds no config.json" in failed(doc.checks(MODELS_DIR=str(models), MODEL_SOURCE="/models/qwen"))["model"]
    (models / "qwen" / "config.json").write_text("{}")
    assert doc.checks(MODELS_DIR=str(models), MODEL_SOURCE="/models/qwen")["model"].status == doctor.PASS


def test_secrets_permissions(doc: Doctor) -> None:
    doc.secrets.chmod(0o644)
    checks = doc.checks()
    assert "chmod 600" in checks["secrets"].fix and checks["secrets"].status == doctor.FAIL


def test_open_api(doc: Doctor) -> None:
    doc.secrets.write_text("OPENAI_API_KEY=\n")
    assert "Nginx will refuse to start" in failed(doc.checks())["api-key"]
    assert "anyone who can reach the port" in failed(doc.checks(NGINX_ALLOW_OPEN_API="1"))["api-key"]
    assert doc.checks(NGINX_BIND_ADDRESS="127.0.0.1")["api-key"].status == doctor.WARN
    doc.secrets.write_text("OPENAI_API_KEY=\nAPI_KEY_team_a=sk-0123456789abcdef0123456789abcdef\n")
    check = doc.checks()["api-key"]
    assert check.status == doctor.PASS and "team_a" in check.message and "sk-0123" not in check.message


def test_gateway_limits_turned_off_are_warned_about(doc: Doctor) -> None:
    assert doc.checks()["limits"].status == doctor.PASS
    warned = doc.checks(NGINX_KEY_CONN_LIMIT="0")["limits"]
    assert warned.status == doctor.WARN and "NGINX_KEY_CONN_LIMIT" in warned.message


def test_plain_http_on_a_public_address_is_warned_about(doc: Doctor, tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    certs.mkdir()
    warned = doc.checks(NGINX_CERTS_DIR=str(certs))["tls"]
    assert warned.status == doctor.WARN and "plain HTTP" in warned.message and str(certs) in warned.fix
    assert doc.checks(NGINX_CERTS_DIR=str(certs), NGINX_BIND_ADDRESS="127.0.0.1")["tls"].status == doctor.PASS
    (certs / "tls.crt").write_text("x")
    (certs / "tls.key").write_text("x")
    assert doc.checks(NGINX_CERTS_DIR=str(certs))["tls"].status == doctor.PASS


def test_busy_port(doc: Doctor) -> None:
    doc.busy = {8000}
    assert "RAY_API_PORT=8000 (127.0.0.1)" in failed(doc.checks(RAY_API_PORT="8000"))["ports"]


def test_host_network_ports_of_head_and_worker(doc: Doctor) -> None:
    """With host networking, nginx-head's status page and tunnel door and Ray's
    metrics port are the host's ports too."""
    doc.busy = {8082, 8080}
    head = failed(head_checks(doc, RAY_METRICS_PORT="8080"))["ports"]
    assert "NGINX_TUNNEL_PORT=8082 (127.0.0.1)" in head and "RAY_METRICS_PORT=8080 (0.0.0.0)" in head
    worker = failed(head_checks(doc, "worker", RAY_METRICS_PORT="8080"))["ports"]
    assert "RAY_METRICS_PORT=8080" in worker and "NGINX_TUNNEL_PORT" not in worker


@pytest.fixture
def listener() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_real_port_probes_on_loopback(listener: int) -> None:
    assert not doctor._port_free("127.0.0.1", listener)
    assert doctor._reachable("127.0.0.1", listener, 2.0)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    assert doctor._port_free("127.0.0.1", closed)
    assert not doctor._reachable("127.0.0.1", closed, 2.0)


HEAD_ENV = {"NUM_NODES": "2", "GPUS_PER_NODE": "2", "TENSOR_PARALLEL_SIZE": "2", "PIPELINE_PARALLEL_SIZE": "2",
            "VLLM_HOST_IP": "198.18.0.1", "NCCL_SOCKET_IFNAME": "enp1s0f0", "GLOO_SOCKET_IFNAME": "enp1s0f0",
            "NCCL_IB_HCA": "mlx5_0", "RAY_HEAD_HOST": "198.18.0.1"}


def head_checks(doc: Doctor, profile: str = "head", **env: str) -> dict[str, doctor.Check]:
    doc.secrets.write_text(f"OPENAI_API_KEY={API_KEY}\nRAY_AUTH_TOKEN=tok-doctor-test-0123456789abcdef\n")
    return doc.checks(profile, **{**HEAD_ENV, **env})


def test_head_node_passes(doc: Doctor) -> None:
    checks = head_checks(doc)
    assert failed(checks) == {}
    assert checks["rdma"].message == "RDMA devices: mlx5_0"
    assert "holds VLLM_HOST_IP=198.18.0.1" in checks["nccl_socket_ifname"].message


def test_multinode_profiles_warn_about_the_pages_the_fabric_can_read(doc: Doctor) -> None:
    """The pages test_fabric_outsider.py found readable without credentials:
    each named by the doctor, and each in the operations guide."""
    guide = (REPO_ROOT / "docs" / "operations.md").read_text()
    head, worker = head_checks(doc)["fabric-ports"], head_checks(doc, "worker")["fabric-ports"]
    for check in (head, worker):
        assert check.status == doctor.WARN and "8080 (RAY_METRICS_PORT)" in check.message
        assert "Multi-node: what the fabric sees" in check.fix and "## Multi-node: what the fabric sees" in guide
    for port, what in doctor.HEAD_ONLY_PAGES.items():
        assert f"{port} ({what})" in head.message and str(port) not in worker.message and f"`{port}`" in guide
    assert "fabric-ports" not in doc.checks("cpu")


def test_head_without_rdma(doc: Doctor) -> None:
    (doc.root / "sys/class/infiniband/mlx5_0").rmdir()
    assert "no RDMA device" in failed(head_checks(doc))["rdma"]


def test_wrong_hca(doc: Doctor) -> None:
    assert "names no RDMA device here (mlx5_0)" in failed(head_checks(doc, NCCL_IB_HCA="mlx5_4"))["rdma"]


def test_interface_typo(doc: Doctor) -> None:
    message = failed(head_checks(doc, NCCL_SOCKET_IFNAME="enp1s0f9"))["nccl_socket_ifname"]
    assert "matches no interface on this node (enp1s0f0, eth0, lo)" in message


def test_host_ip_not_on_the_interface(doc: Doctor) -> None:
    message = failed(head_checks(doc, GLOO_SOCKET_IFNAME="eth0"))["gloo_socket_ifname"]
    assert "VLLM_HOST_IP=198.18.0.1 is not an address of GLOO_SOCKET_IFNAME=eth0" in message


def test_missing_ray_auth_token(doc: Doctor) -> None:
    checks = doc.checks("head", **HEAD_ENV)
    assert "RAY_AUTH_TOKEN" in " ".join(failed(checks).values())


def test_worker_checks_the_head(doc: Doctor) -> None:
    assert "nothing answers on 198.18.0.1:6379" in failed(head_checks(doc, "worker"))["head"]
    doc.answering = {("198.18.0.1", 6379)}
    assert head_checks(doc, "worker")["head"].status == doctor.PASS


def cli(*args: str, secrets: Path | None = None, **environ: str) -> tuple[int, str]:
    env = clean_env(**({"RAY_LLM_SECRETS_FILE": str(secrets)} if secrets else {}), **environ)
    done = run(["bash", str(REPO_ROOT / "scripts" / "doctor.sh"), *args], env=env, timeout=120)
    return done.returncode, done.stdout + done.stderr


def test_cli_json_with_fake_programs(doc: Doctor) -> None:
    host = doc.host()  # writes the fake programs
    code, out = cli("--json", "--profile", "single", "--root", str(doc.root), "--nvidia-smi", host.nvidia_smi,
                    "--docker", host.docker, "--ip", host.ip, secrets=doc.secrets)
    assert "{" in out, out
    result = json.loads(out[out.index("{"):])
    names = {c["name"]: c for c in result["checks"]}
    assert names["driver"]["status"] == "pass" and names["toolkit"]["status"] == "pass"
    assert code == (1 if result["failed"] else 0)


def test_for_real_on_this_machine_without_a_gpu(tmp_path: Path) -> None:
    """As a new user: the committed .env (single profile, DEVICE=gpu), this machine."""
    code, out = cli()
    assert code == 1, out
    assert "FAIL  gpu" in out and "no NVIDIA GPU on this machine" in out
    assert "fix: install the NVIDIA driver (580+); without a GPU use COMPOSE_PROFILES=cpu" in out
    assert "failed" in out.splitlines()[-1]


def test_models_file_is_checked_per_entry(doc: Doctor, tmp_path: Path) -> None:
    """Each MODELS_FILE entry's weights and accelerator are checked under its own
    name; the GPU count against the widest replica; free disk once."""
    models = tmp_path / "models"
    (models / "qwen").mkdir(parents=True)
    models_file = tmp_path / "models.yaml"
    models_file.write_text("models:\n"
                           "  - {MODEL_ID: org/chat, SERVED_MODEL_NAME: chat, MODEL_SOURCE: /models/qwen}\n"
                           "  - {MODEL_ID: org/small, SERVED_MODEL_NAME: small, TENSOR_PARALLEL_SIZE: 2,\n"
                           "     ACCELERATOR_TYPE: A100}\n"
                           "  - {MODEL_ID: org/embed, SERVED_MODEL_NAME: embed}\n")
    doc.smi = {k: (0, "\n".join([GOOD_SMI] * 2)) for k in doc.smi}  # 4 GPUs for 1 + 2 + 1
    checks = doctor.run_checks({"RAY_LLM_SECRETS_FILE": str(doc.secrets), "MODELS_FILE": str(models_file),
                                "MODELS_DIR": str(models), "MODEL_ID": "", "MODEL_SOURCE": "", "GPUS_PER_NODE": "4",
                                "MAX_REPLICAS": "1", "HF_HUB_OFFLINE": ""}, doc.host(), "single")
    by_name: dict[str, list[doctor.Check]] = {}
    for check in checks:
        by_name.setdefault(check.name, []).append(check)
    assert [c.message for c in by_name["config"]] == [
        ".env and .secrets are valid for the single profile (model 'chat', 'small', 'embed')"]
    [model] = by_name["model"]
    assert model.status == doctor.FAIL and model.message.startswith("MODELS_FILE entry 1 (chat): MODEL_SOURCE=/models/qwen")
    [accelerator] = by_name["accelerator"]
    assert accelerator.status == doctor.FAIL
    assert accelerator.message.startswith("MODELS_FILE entry 2 (small): ACCELERATOR_TYPE=A100 matches none")
    [gpu_count] = by_name["gpu-count"]
    assert gpu_count.status == doctor.PASS and "4 GPU(s) (NVIDIA H100 80GB HBM3) for GPUS_PER_NODE=4, 2 per replica (the widest model)" in gpu_count.message
    [disk] = by_name["disk"]  # once, though two models are downloaded
    assert disk.status == doctor.PASS
    doc.free_disk = 5 << 30
    low = [c for c in doctor.run_checks({"RAY_LLM_SECRETS_FILE": str(doc.secrets), "MODELS_FILE": str(models_file),
                                         "MODELS_DIR": str(models), "MODEL_ID": "", "GPUS_PER_NODE": "4",
                                         "MAX_REPLICAS": "1"}, doc.host(), "single") if c.name == "disk"]
    assert len(low) == 1 and "the size of org/small, org/embed is not known" in low[0].message


@pytest.mark.parametrize("profiles,env,status,text", [
    ("single,monitoring", {}, doctor.PASS, "profile monitoring beside single"),
    ("single,monitoring-head", {}, doctor.FAIL, "which takes monitoring"),
    ("head,monitoring", {}, doctor.FAIL, "which takes monitoring-head"),
    ("head,monitoring-head", {"PROMETHEUS_RAY_TARGETS": ""}, doctor.FAIL, "PROMETHEUS_RAY_TARGETS is empty"),
    ("head,monitoring-head", {"PROMETHEUS_RAY_TARGETS": "198.18.0.1:8080"}, doctor.FAIL,
     "PROMETHEUS_NGINX_TARGET=nginx-exporter:9113 is not the exporter on the head's loopback"),
    ("head,monitoring-head", {"PROMETHEUS_RAY_TARGETS": "198.18.0.1:8080,198.18.0.2:8080",
                              "PROMETHEUS_NGINX_TARGET": "127.0.0.1:9113"}, doctor.PASS,
     "scrapes 198.18.0.1:8080,198.18.0.2:8080 and 127.0.0.1:9113"),
    ("worker,monitoring-head", {}, doctor.FAIL, "monitoring runs on the head only"),
])
def test_monitoring_profile_fits_the_serving_profile(profiles: str, env: dict[str, str], status: str,
                                                     text: str) -> None:
    environ = {"COMPOSE_PROFILES": profiles, "PROMETHEUS_NGINX_TARGET": "nginx-exporter:9113", **env}
    [check] = doctor.monitoring_checks(environ, profiles.split(",")[0])
    assert check.status == status and text in check.message, check
    assert check.status == doctor.PASS or check.fix


def test_ray_ports_on_a_public_address_are_warned_about(doc: Doctor) -> None:
    assert doc.checks()["ray-ports"].status == doctor.PASS
    warned = doc.checks(RAY_PUBLISH_ADDRESS="198.18.0.1")["ray-ports"]
    assert warned.status == doctor.WARN and "no API key" in warned.message


def doctor_with_python(tmp_path: Path, bindir: Path) -> tuple[int, str]:
    """scripts/doctor.sh with bindir's python3 first on PATH and no test venv."""
    return cli(PATH=f"{bindir}:/usr/bin:/bin", RUNTIME_DIR=str(tmp_path / "no-runtime"))


def test_doctor_runs_on_python3_with_only_dotenv_and_pydantic(tmp_path: Path) -> None:
    """A GPU host has no test venv: python3 plus the packages the doctor's
    message names is enough (a venv made from uv's cache, nothing else)."""
    venv = tmp_path / "venv"
    cache = {k: os.environ[k] for k in ("XDG_CACHE_HOME", "UV_CACHE_DIR") if k in os.environ}
    made = run(["uv", "venv", "-q", "--python", "/usr/bin/python3", str(venv)],
               env=clean_env(UV_PYTHON_DOWNLOADS="never", **cache))
    assert made.returncode == 0, made.stderr
    installed = run(["uv", "pip", "install", "-q", "--offline", "python-dotenv", "pydantic>=2"],
                    env=clean_env(VIRTUAL_ENV=str(venv), **cache))
    assert installed.returncode == 0, installed.stderr
    code, out = doctor_with_python(tmp_path, venv / "bin")
    assert code == 1, out  # no GPU here; the checks themselves ran
    assert "PASS  config" in out and "FAIL  gpu" in out, out


def test_doctor_names_what_python3_lacks(tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "python3").symlink_to("/usr/bin/python3")  # the system's, without pydantic 2
    probe = run([str(bindir / "python3"), "-c", "import dotenv, pydantic_core"])
    if probe.returncode == 0:
        pytest.skip("this machine's python3 has python-dotenv and pydantic 2")
    code, out = doctor_with_python(tmp_path, bindir)
    assert code == 1
    assert "doctor needs python3 with python-dotenv and pydantic 2" in out and "pip install python-dotenv 'pydantic>=2'" in out


# --- LoRA store and the engine arguments (issue 26) --------------------------------

def test_s3_adapter_store_without_keys_warns_and_with_keys_passes(doc: Doctor) -> None:
    doc.docker["image inspect --format {{.Id}} ray-llm-serve:local"] = (1, "No such image")
    checks = doc.checks(LORA_ADAPTERS_PATH="s3://adapters/base", AWS_ENDPOINT_URL_S3="http://minio.internal:9000",
                        LLM_IMAGE="ray-llm-serve:local")
    assert checks["lora"].status == doctor.WARN
    assert "on http://minio.internal:9000" in checks["lora"].message and "AWS_ACCESS_KEY_ID" in checks["lora"].message
    doc.secrets.write_text(f"OPENAI_API_KEY={API_KEY}\nAWS_ACCESS_KEY_ID=AKIDDOCTOR\nAWS_SECRET_ACCESS_KEY=doctor-s3\n")
    checks = doc.checks(LORA_ADAPTERS_PATH="s3://adapters/base", LLM_IMAGE="ray-llm-serve:local")
    assert checks["lora"].status == doctor.PASS and "keys in .secrets" in checks["lora"].message
    assert "doctor-s3" not in json.dumps([c.__dict__ for c in checks.values()])


def test_engine_args_wait_for_the_image(doc: Doctor) -> None:
    doc.docker["image inspect --format {{.Id}} ray-llm-serve:local"] = (1, "No such image")
    checks = doc.checks(ENGINE_KWARGS='{"tool_call_parser": "hermes"}', LLM_IMAGE="ray-llm-serve:local")
    assert checks["engine-args"].status == doctor.WARN and "is not built yet" in checks["engine-args"].message
    assert "engine-args" not in doc.checks(LLM_IMAGE="ray-llm-serve:local")  # ENGINE_KWARGS={}: nothing to ask


def docker_running_deploy_dry_run(doc: Doctor) -> str:
    """A docker whose `compose run ... deploy.py --dry-run` runs the real
    deploy.py --dry-run here (vLLM's CPU build and Ray in the test venv), in
    the environment the doctor hands to Compose; other arguments as before."""
    fallback = fake_program(doc.tmp / "docker-rest", doc.docker)
    path = doc.tmp / "docker-with-image"
    path.write_text("#!/usr/bin/env bash\n"
                    'case "$*" in\n'
                    "  'image inspect --format {{.Id}} ray-llm-serve:cpu-local') echo sha256:0; exit 0;;\n"
                    "  'compose run --rm --no-deps -T ray-serve-cpu python /app/src/deploy.py --dry-run')\n"
                    f"    exec {shlex.quote(sys.executable)} {shlex.quote(str(REPO_ROOT / 'src' / 'deploy.py'))} --dry-run;;\n"
                    "esac\n"
                    f'exec {shlex.quote(fallback)} "$@"\n')
    path.chmod(0o755)
    return str(path)


def test_engine_args_are_checked_by_vllm_in_the_image(doc: Doctor) -> None:
    """A tool-call parser vLLM lacks fails the doctor, in vLLM's own words; a
    known one passes. (Inside Compose: tests/integration/compose.)"""
    host = dataclasses.replace(doc.host(), docker=docker_running_deploy_dry_run(doc))
    environ = {"RAY_LLM_SECRETS_FILE": str(doc.secrets), "NGINX_BIND_ADDRESS": "127.0.0.1", "MODEL_SOURCE": "",
               "LLM_CPU_IMAGE": "ray-llm-serve:cpu-local", "CPU_MODEL_ID": "org/model",
               "ENGINE_KWARGS": '{"enable_auto_tool_choice": true, "tool_call_parser": "hermess"}'}
    checks = [c for c in doctor.run_checks(dict(environ), host, "cpu") if c.name == "engine-args"]
    assert [c.status for c in checks] == [doctor.FAIL], checks
    assert "tool_call_parser='hermess' is not a parser this vLLM knows: did you mean 'hermes'?" in checks[0].message
    environ["ENGINE_KWARGS"] = '{"enable_auto_tool_choice": true, "tool_call_parser": "hermes"}'
    checks = [c for c in doctor.run_checks(dict(environ), host, "cpu") if c.name == "engine-args"]
    assert [c.status for c in checks] == [doctor.PASS], checks
