"""Shared pytest setup: import path for src/, markers, and small helpers."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "src"))
sys.path.insert(0, str(REPO_ROOT / "tests"))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e: real Ray Serve LLM + vLLM (CPU) behind real Nginx")
    config.addinivalue_line("markers", "multinode: two Ray nodes on one machine")
    config.addinivalue_line("markers", "docker: the Compose stack on a real Docker engine (scripts/test.sh starts one)")
    config.addinivalue_line("markers", "offline: starts its own stack in a network namespace (runs before the shared stack)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Docker tests first, then the offline test's own stack: it is down
    before the session's local stack starts, so two CPU engines never share
    the machine. The monitoring module comes before the others, among them
    test_hardening, whose last test stops the shared local stack."""
    def rank(item: pytest.Item) -> int:
        if item.get_closest_marker("docker"):
            return 0
        if item.get_closest_marker("offline"):
            return 1
        return 2 if item.nodeid.startswith("tests/test_monitoring.py") else 3

    items.sort(key=rank)


def clean_env(**extra: str) -> dict[str, str]:
    """A minimal environment, so the caller's shell cannot leak settings in."""
    env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "DOCKER_CONFIG", "TMPDIR") if k in os.environ}
    env.update(extra)
    return env


def run(cmd: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, env=env, text=True, capture_output=True, timeout=timeout, check=False)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def session_processes(sid: int | str, pattern: str | None = None) -> list[str]:
    """PIDs of the processes in session SID (optionally whose command line matches PATTERN)."""
    cmd = ["pgrep", "-s", str(sid)] + (["-f", pattern] if pattern else [])
    return subprocess.run(cmd, text=True, capture_output=True, check=False).stdout.split()


def process_gone(pid: int) -> bool:
    """True when PID no longer runs (exited, or a zombie waiting to be reaped)."""
    from engine_watchdog import process_state

    return process_state(pid) in ("?", "Z")


def kill_if_stopped(pids: list[int]) -> None:
    """Clean-up after a freeze test: SIGKILL what is still stopped (never SIGCONT)."""
    import signal

    from engine_watchdog import process_state

    for pid in pids:
        if process_state(pid) == "T":
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def assert_openai_error_body(body: object) -> dict:
    """OpenAI's error object, {"error": {message, type, param, code}}, with a
    message that carries none of Ray's internals; returns the inner object."""
    from openai_errors import INTERNALS

    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error, dict) and set(error) == {"message", "type", "param", "code"}, body
    message = error["message"]
    assert isinstance(message, str) and message.strip(), body
    assert not INTERNALS.search(message) and "Request ID" not in message, message
    return error


def require_tool(name: str) -> str:
    """Path of a tool the test command installs; a missing one is a failure, not a skip."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not on PATH; run the suite through scripts/test.sh, which installs it")
    return path


@pytest.fixture(scope="session")
def stack(request: pytest.FixtureRequest) -> Iterator["LocalStack"]:
    """One real local stack (scripts/local-stack.sh) shared by the e2e and
    hardening tests; always torn down, with log tails when a test failed."""
    from stack_support import API_KEY, LocalStack, running, shared_stack_env

    stack_dir = REPO_ROOT / ".runtime" / f"test-stack-{os.getpid()}"
    with running(LocalStack(stack_dir, api_key=API_KEY, extra_env=shared_stack_env()), request) as s:
        yield s
