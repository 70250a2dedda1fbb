"""Drive the real Compose stack (cpu profile) on the private Docker engine.

scripts/test.sh installs and starts the engine (tools/docker-engine.sh) and
builds the local stand-ins for the base images (tools/standin-images.sh),
then exports DOCKER_HOST and the STANDIN_* image names. Everything here runs
the repo's own docker/docker-compose.yml and .env from the repo root, with
environment overrides only.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from support import REPO_ROOT, TINY_MODEL_DIR, free_port, require_tool

MODEL = "tiny-llama"
SERVE, NGINX = "ray-serve-cpu", "nginx"
# Planted secrets: searched for in every `docker inspect`.
API_KEY = "sk-docker-Test_key.7f3a-0123456789abc"
HF_TOKEN = "hf_DockerPlanted_51c9e0aa"
RAY_TOKEN = "docker-ray-token-2b7d41"
DASH_USER, DASH_PASSWORD = "admin", "docker-dash-pw-88e1"
# The LoRA adapter store's keys (only the model server reads them).
S3_KEY_ID, S3_SECRET = "AKIDCOMPOSEPLANTED01", "docker-s3-secret-3e8a90"
# Secrets of the profiles not started here: no container of the stack may see them.
TUNNEL_TOKEN, GRAFANA_PASSWORD = "eyJ0dW5uZWwiOiJwbGFudGVkIn0", "docker-grafana-pw-41c7"
GRACE = "30s"
# A real user's .secrets: owned by someone other than the containers' users.
SECRETS_OWNER = 1000


def standin(name: str) -> str:
    """Image name of a local stand-in (never an official image's name)."""
    value = os.environ.get(name, "")
    if not value.startswith("ray-llm-standin/"):
        raise AssertionError(f"{name} is not set to a ray-llm-standin/ image; run the suite through scripts/test.sh")
    return value


def wait_for(what: str, check: Callable[[], bool], timeout: float, interval: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


@dataclass
class ComposeStack:
    """One Compose project (unique name and ports) of the repo's compose file."""

    work_dir: Path
    project: str = field(default_factory=lambda: f"rlt{os.getpid()}")
    http_port: int = field(default_factory=free_port)
    https_port: int = field(default_factory=free_port)
    api_port: int = field(default_factory=free_port)
    dashboard_port: int = field(default_factory=free_port)
    prometheus_port: int = field(default_factory=free_port)
    # What a test changed in ".env" for the rest of the module's tests.
    extra_env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.secrets_file = self.work_dir / "secrets"
        self.write_secrets()
        self.secrets_file.chmod(0o600)
        if os.geteuid() == 0:
            os.chown(self.secrets_file, SECRETS_OWNER, SECRETS_OWNER)

    def write_secrets(self, extra: str = "") -> None:
        """The stack's .secrets, rewritten in place (a mounted file keeps its inode)."""
        with self.secrets_file.open("w") as handle:
            handle.write(f"OPENAI_API_KEY={API_KEY}\nHF_TOKEN={HF_TOKEN}\nRAY_AUTH_TOKEN={RAY_TOKEN}\n"
                         f"NGINX_DASHBOARD_USER={DASH_USER}\nNGINX_DASHBOARD_PASSWORD='{DASH_PASSWORD}'\n"
                         f"CLOUDFLARE_TUNNEL_TOKEN={TUNNEL_TOKEN}\nGRAFANA_ADMIN_PASSWORD={GRAFANA_PASSWORD}\n"
                         f"AWS_ACCESS_KEY_ID={S3_KEY_ID}\nAWS_SECRET_ACCESS_KEY={S3_SECRET}\n" + extra)

    @property
    def https_url(self) -> str:
        return f"https://127.0.0.1:{self.https_port}"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def env(self) -> dict[str, str]:
        """The caller's environment with the test's overrides (the shell wins over .env)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "COMPOSE_", "NGINX_", "RAY_"))}
        env.update(
            COMPOSE_PROJECT_NAME=self.project,
            COMPOSE_PROFILES="cpu",
            # Stand-ins for the official base images (no registry here).
            CPU_BASE_IMAGE=standin("STANDIN_DEBIAN_IMAGE"),
            UV_IMAGE=standin("STANDIN_UV_IMAGE"),
            NGINX_BASE_IMAGE=standin("STANDIN_NGINX_IMAGE"),
            # Profile monitoring: stand-ins from Debian's packages (no Grafana here).
            PROMETHEUS_IMAGE=standin("STANDIN_PROMETHEUS_IMAGE"),
            NGINX_EXPORTER_IMAGE=standin("STANDIN_NGINX_EXPORTER_IMAGE"),
            PROMETHEUS_PORT=str(self.prometheus_port),
            PROMETHEUS_SCRAPE_INTERVAL="2s",
            # torch==2.13.0+cpu from this machine's wheel folder, and its TLS proxy's CA.
            CPU_TORCH_INDEX_URL="",
            CPU_WHEELS_DIR=os.environ.get("TORCH_CPU_FIND_LINKS", "/opt/wheels"),
            BUILD_CA_BUNDLE=os.environ.get("RAY_LLM_BUILD_CA_BUNDLE", ""),
            SECRETS_FILE=str(self.secrets_file),
            MODELS_DIR=str(TINY_MODEL_DIR.parent),
            MODEL_SOURCE=f"/models/{TINY_MODEL_DIR.name}",
            SERVED_MODEL_NAME=MODEL,
            HF_HUB_OFFLINE="1",
            NGINX_BIND_ADDRESS="127.0.0.1",
            NGINX_HTTP_PORT=str(self.http_port),
            NGINX_HTTPS_PORT=str(self.https_port),
            RAY_API_PORT=str(self.api_port),
            RAY_DASHBOARD_PORT=str(self.dashboard_port),
            MAX_MODEL_LEN="2048",
            MAX_NUM_SEQS="32",
            SHM_SIZE="2g",
            SERVE_START_PERIOD="15m",
            SERVE_STOP_GRACE_PERIOD=GRACE,
        )
        env.update(self.extra_env)
        return env

    def compose(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        require_tool("docker")
        return subprocess.run(["docker", "compose", *args], cwd=REPO_ROOT, env=self.env(), text=True,
                              capture_output=True, timeout=timeout, check=False)

    def docker(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["docker", *args], env=self.env(), text=True, capture_output=True,
                              timeout=timeout, check=False)

    def container(self, service: str) -> str:
        out = self.compose("ps", "-aq", service, timeout=60)
        ids = out.stdout.split()
        assert out.returncode == 0 and len(ids) == 1, f"{service}: {out.stdout}{out.stderr}"
        return ids[0]

    def inspect(self, ref: str) -> dict[str, Any]:
        out = self.docker("inspect", ref)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)[0]

    def health(self, service: str) -> str:
        state = self.inspect(self.container(service))["State"]
        return state.get("Health", {}).get("Status", state["Status"])

    def logs(self, tail: int = 80) -> str:
        return self.compose("logs", "--no-color", "--tail", str(tail), timeout=60).stdout

    def down(self) -> subprocess.CompletedProcess[str]:
        return self.compose("down", "--volumes", "--remove-orphans", "--timeout", "60", timeout=300)
