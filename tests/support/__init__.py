"""Helpers shared by every test tier: paths, clean environments, ports,
processes, and OpenAI's error shape. Imported as ``support``; the stacks live
in its modules (local_stack, compose_stack, cluster, nginx, monitoring)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
# The local random-weight Llama every stack serves (tools/make-tiny-model.py).
TINY_MODEL_DIR = REPO_ROOT / ".runtime" / "models" / "tiny-llama"


def clean_env(**extra: str) -> dict[str, str]:
    """A minimal environment, so the caller's shell cannot leak settings in."""
    env = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "DOCKER_CONFIG", "TMPDIR") if k in os.environ}
    env.update(extra)
    return env


def run(cmd: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, env=env, text=True, capture_output=True, timeout=timeout, check=False)


# Ports free_port handed out in this session: the kernel may give the same
# free port twice, and two settings of one stack then clash (seen once: the
# local stack's Serve port and Nginx's status port were one port, so /readyz
# asked Nginx's status page and the stack never came up).
_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now, never one
    this session handed out before."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


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


def make_tiny_model() -> None:
    """The local random-weight Llama (no download), mounted through MODELS_DIR."""
    if (TINY_MODEL_DIR / "config.json").exists():
        return
    python = shutil.which("python") or "python3"
    out = subprocess.run([python, str(REPO_ROOT / "tools" / "make-tiny-model.py"), str(TINY_MODEL_DIR)],
                         text=True, capture_output=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr


def netns_missing() -> str | None:
    for tool in ("unshare", "nsenter", "ip"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root"
    return None
