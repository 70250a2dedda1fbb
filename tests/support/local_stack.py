"""Drive scripts/local-stack.sh from tests: the real engine behind real Nginx."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from support import REPO_ROOT, free_port, session_processes

SCRIPT = REPO_ROOT / "scripts" / "local-stack.sh"
MODEL = "tiny-llama"
# Settings of the shared test stack (see tests/integration/local/conftest.py). The unique values
# let the secrets test search every log and API for them.
API_KEY = "sk-e2e-Test_key.123-0123456789abcdef"
BODY_LIMIT = "64k"
RAY_TOKEN = "e2e-ray-token-5f1c2a9e77"
HF_TOKEN = "hf_PlantedToken_8d41b7c3e2"
DASH_USER, DASH_PASSWORD = "admin", "e2e-dashboard-pw-6b2d"
GRACE = "30s"
# Shorter waits than the product's defaults, for the test stacks' restart
# scenarios (the Compose scenario keeps the defaults):
# * the watchdog's timeout at its documented minimum (default 30 s);
# * Ray's minimum draining period of a stopping replica behind HAProxy, which
#   a `down` waits out even when idle (default 30 s); in-flight requests are
#   still waited for (graceful_shutdown_timeout_s).
WATCHDOG_TIMEOUT_S = 10
FAST_RESTARTS = {"WATCHDOG_TIMEOUT": str(WATCHDOG_TIMEOUT_S), "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "5"}


# Tool calling as .env documents it. hermes: its parser loads with the tiny
# model's tokenizer (llama3_json's and mistral's need special tokens it lacks).
TOOL_CALLING = '{"enable_auto_tool_choice": true, "tool_call_parser": "hermes"}'


def shared_stack_env() -> dict[str, str]:
    return {"ENGINE_KWARGS": TOOL_CALLING, "NGINX_CLIENT_MAX_BODY_SIZE": BODY_LIMIT, "RAY_AUTH_TOKEN": RAY_TOKEN,
            "HF_TOKEN": HF_TOKEN, "NGINX_DASHBOARD_USER": DASH_USER, "NGINX_DASHBOARD_PASSWORD": DASH_PASSWORD,
            "SERVE_STOP_GRACE_PERIOD": GRACE, **FAST_RESTARTS}


@dataclass
class LocalStack:
    """One local stack with its own ports, folder and settings."""

    stack_dir: Path
    api_key: str | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    http_port: int = field(default_factory=free_port)
    api_port: int = field(default_factory=free_port)
    dashboard_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    status_port: int = field(default_factory=free_port)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "RAY_", "NGINX_"))}
        env.update(
            LOCAL_STACK_DIR=str(self.stack_dir),
            NGINX_HTTP_PORT=str(self.http_port),
            NGINX_HTTPS_PORT=str(free_port()),
            NGINX_STATUS_PORT=str(self.status_port),
            NGINX_TUNNEL_PORT=str(free_port()),
            RAY_API_PORT=str(self.api_port),
            RAY_DASHBOARD_PORT=str(self.dashboard_port),
            RAY_METRICS_PORT=str(self.metrics_port),
            OPENAI_API_KEY=self.api_key or "",
            NGINX_BIND_ADDRESS="127.0.0.1",
            DEVICE="cpu",
            MAX_NUM_SEQS="32",
            MAX_MODEL_LEN="2048",
        )
        env.update(self.extra_env)
        return env

    def run(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", str(SCRIPT), *args], env=self.env(), text=True,
                              capture_output=True, timeout=timeout, check=False)

    def up(self, *parts: str) -> None:
        out = self.run("up", *parts)
        if out.returncode != 0:
            raise AssertionError(f"local-stack up {' '.join(parts)} failed:\n{out.stderr[-6000:]}")

    def down(self, *parts: str) -> subprocess.CompletedProcess[str]:
        return self.run("down", *parts, timeout=180)

    def log_tails(self, lines: int = 60) -> str:
        chunks = []
        for name in ("serve.log", "nginx.log"):
            path = self.stack_dir / name
            if path.exists():
                tail = path.read_text(errors="replace").splitlines()[-lines:]
                chunks.append(f"----- {path} (last {lines} lines) -----\n" + "\n".join(tail))
        return "\n".join(chunks)

    def serve_log(self) -> str:
        return (self.stack_dir / "serve.log").read_text(errors="replace")

    def engine_pids(self) -> list[int]:
        """PIDs of the vLLM engine processes in the model server's session."""
        return [int(p) for p in session_processes(self.session_pids()["serve"], "EngineCore")]

    def is_up(self) -> bool:
        """Both parts of `up` still run (a test may have taken one down)."""
        return all(pid and session_processes(pid) for pid in self.session_pids().values())

    def ensure_up(self) -> None:
        """Start again what a test took down; nothing when it runs."""
        if not self.is_up():
            self.down()
            self.up()

    def session_pids(self) -> dict[str, str | None]:
        pids: dict[str, str | None] = {}
        for name in ("serve", "nginx"):
            path = self.stack_dir / f"{name}.pid"
            pids[name] = path.read_text().strip() if path.exists() else None
        return pids



@contextlib.contextmanager
def running(stack: LocalStack, request: pytest.FixtureRequest, wait: bool = True,
            parts: tuple[str, ...] = ()) -> Iterator[LocalStack]:
    """Up for the with-block (wait=False: `up --no-wait`; parts: `serve` or
    `nginx` alone); always down after it (log tails when a test failed
    meanwhile), leaving no process and no folder behind."""
    failed_before = request.session.testsfailed
    try:
        stack.up(*(() if wait else ("--no-wait",)), *parts)
        yield stack
    finally:
        if request.session.testsfailed > failed_before:
            print("\n" + stack.log_tails())
        pids = stack.session_pids()
        out = stack.down()
        assert out.returncode == 0, out.stderr
        for name, pid in pids.items():
            assert pid is None or not session_processes(pid), f"{name} left processes behind"
        shutil.rmtree(stack.stack_dir, ignore_errors=True)


# Requests every tier of the local stack's tests makes.
def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {API_KEY}"}


def chat_body(**extra: object) -> dict[str, object]:
    return {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **extra}


def good_request_works(stack: LocalStack) -> None:
    r = httpx.post(stack.base_url + "/v1/chat/completions", headers=auth(), json=chat_body(), timeout=60)
    assert r.status_code == 200, r.text


def wait_until_serving(stack: LocalStack, bound_s: float, message: str) -> None:
    """Poll a good completion until it succeeds, failing with `message` after `bound_s`."""
    deadline = time.monotonic() + bound_s
    while True:
        try:
            good_request_works(stack)
            return
        except (AssertionError, httpx.HTTPError):
            assert time.monotonic() < deadline, message
            time.sleep(2)
