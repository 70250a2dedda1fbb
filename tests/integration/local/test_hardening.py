"""Hardening, tried against the shared local stack (real engine, real Nginx):
secrets, abuse, a client that disconnects, and load. What happens when
something stops (a killed or frozen engine, a graceful stop) is
test_restarts.py.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from support import REPO_ROOT, TINY_MODEL_DIR, session_processes
from support.local_stack import (
    API_KEY,
    DASH_PASSWORD,
    DASH_USER,
    HF_TOKEN,
    MODEL,
    RAY_TOKEN,
    LocalStack,
    auth,
    chat_body,
    good_request_works,
)

pytestmark = [pytest.mark.e2e]

SECRETS = {"HF_TOKEN": HF_TOKEN, "OPENAI_API_KEY": API_KEY, "RAY_AUTH_TOKEN": RAY_TOKEN,
           "NGINX_DASHBOARD_PASSWORD": DASH_PASSWORD}


def find_leaks(text: str) -> list[str]:
    return [name for name, value in SECRETS.items() if value in text]


# ------------------------------------------------------------------ secrets ---
def test_secrets_never_reach_logs_apis_or_process_list(stack: LocalStack) -> None:
    good_request_works(stack)
    # --dry-run output
    dry = subprocess.run([sys.executable, str(REPO_ROOT / "src" / "deploy.py"), "--dry-run"],
                         env={**stack.env(), **{k: v for k, v in SECRETS.items() if k != "NGINX_DASHBOARD_PASSWORD"}},
                         text=True, capture_output=True, timeout=60, check=False)
    assert dry.returncode == 0 and not find_leaks(dry.stdout + dry.stderr)
    # Every log of the stack and of the Ray session it started.
    session = httpx.get(stack.base_url + "/dashboard/api/version", auth=(DASH_USER, DASH_PASSWORD),
                        timeout=30).json()["session_name"]
    session_dir = Path("/tmp/ray") / session
    assert session_dir.is_dir(), session_dir
    files = [p for p in stack.stack_dir.glob("*.log")] + [p for p in session_dir.rglob("*") if p.is_file()]
    leaked = {str(p): find_leaks(p.read_text(errors="replace")) for p in files
              if p.stat().st_size < 200_000_000 and "auth_token" not in p.name}
    assert not {k: v for k, v in leaked.items() if v}, leaked
    # Serve's deployment config and status, and the actor table, via the dashboard API.
    creds = (DASH_USER, DASH_PASSWORD)
    for path in ("/dashboard/api/serve/applications/", "/dashboard/api/v0/actors?limit=1000",
                 "/dashboard/api/v0/jobs"):
        r = httpx.get(stack.base_url + path, auth=creds, timeout=60)
        assert r.status_code == 200, (path, r.status_code)
        assert not find_leaks(r.text), path
    # No Ray/vLLM process holds the Hugging Face token in its environment
    # (Ray Serve LLM would copy it into runtime_env, which Ray logs).
    sid = stack.session_pids()["serve"]
    pids = session_processes(sid)
    assert pids
    for pid in pids:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(arg.endswith((b"/local-stack.sh", b"/deploy.py")) for arg in argv):
            continue  # the supervisor and deploy.py itself were started with the settings
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
        except OSError:
            continue
        assert HF_TOKEN not in environ, f"process {pid} has HF_TOKEN in its environment"
    # Command lines are visible to every user; environments are not.
    ps = subprocess.run(["ps", "-eww", "-o", "args="], text=True, capture_output=True, check=True).stdout
    assert not find_leaks(ps)
    # The rendered Nginx config must hold the key, so it is private.
    for rendered in (stack.stack_dir / "nginx" / "conf").glob("*"):
        assert rendered.stat().st_mode & 0o077 == 0, rendered


# ------------------------------------------------------------ bad requests ---
@pytest.mark.parametrize(("name", "kwargs", "allowed"), [
    ("empty body", {"content": b"", "headers": {"Content-Type": "application/json"}}, {400, 422}),
    ("wrong content type", {"content": json.dumps(chat_body()).encode(), "headers": {"Content-Type": "text/plain"}},
     {415}),
    ("no content type", {"content": json.dumps(chat_body()).encode(), "headers": {"Content-Type": ""}}, {415}),
    ("json with charset", {"content": json.dumps(chat_body()).encode(),
                           "headers": {"Content-Type": "application/json; charset=utf-8"}}, {200}),
    ("huge max_tokens", {"json": chat_body(max_tokens=10**9)}, {400}),
    ("negative temperature", {"json": chat_body(temperature=-1)}, {400}),
])
def test_bad_requests_are_refused_cleanly(stack: LocalStack, name: str, kwargs: dict, allowed: set[int]) -> None:
    headers = {**auth(), **kwargs.pop("headers", {})}
    r = httpx.post(stack.base_url + "/v1/chat/completions", headers=headers, timeout=60, **kwargs)
    assert r.status_code in allowed, (name, r.status_code, r.text[:300])
    assert r.status_code < 500
    if r.status_code != 200:
        assert r.headers["content-type"].startswith("application/json"), name
        assert "error" in r.json() or "detail" in r.json() or "message" in r.json()
    good_request_works(stack)


def test_slow_headers_are_cut_off(stack: LocalStack) -> None:
    """Slow-loris: one header byte every 2 s is cut off by client_header_timeout."""
    start = time.monotonic()
    closed = False
    with socket.create_connection(("127.0.0.1", stack.http_port), timeout=5) as sock:
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n")
        sock.settimeout(2)
        for _ in range(30):  # at most ~60 s
            try:
                sock.sendall(b"X")
                sock.recv(4096)  # data (a 408) or b"" (closed): nginx gave up on us
                closed = True
                break
            except (socket.timeout, TimeoutError):
                continue
            except OSError:
                closed = True
                break
    elapsed = time.monotonic() - start
    assert closed, "nginx kept a slow-header connection open for a minute"
    assert elapsed < 40, f"cut off only after {elapsed:.0f}s"
    good_request_works(stack)


def generated_tokens(stack: LocalStack) -> float:
    """vLLM's generation-token counter, from Ray's metrics endpoint (port via the dashboard API)."""
    summary = httpx.get(stack.base_url + "/dashboard/nodes?view=summary", auth=(DASH_USER, DASH_PASSWORD),
                        timeout=30).text
    port = int(re.search(r'"metricsExportPort":\s*(\d+)', summary).group(1))  # type: ignore[union-attr]
    metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
               if line.startswith("ray_vllm_generation_tokens_total"))


def test_client_disconnect_aborts_generation(stack: LocalStack) -> None:
    max_tokens = 1800
    # Metrics are exported every few seconds: wait until the counter is still.
    before = generated_tokens(stack)
    with httpx.Client(timeout=60) as client:
        with client.stream("POST", stack.base_url + "/v1/chat/completions", headers=auth(),
                           json=chat_body(max_tokens=max_tokens, stream=True, ignore_eos=True)) as r:
            assert r.status_code == 200
            for i, _ in enumerate(r.iter_lines()):
                if i >= 3:
                    break
        # leaving the block closes the connection mid-stream
    deadline = time.monotonic() + 60
    while "disconnected, cancelling request" not in stack.serve_log():
        assert time.monotonic() < deadline, "Ray Serve never noticed the client leaving"
        time.sleep(1)
    # Long enough for the whole generation (~2-4 s here) and a metrics export.
    time.sleep(20)
    generated = generated_tokens(stack) - before
    assert 0 < generated < max_tokens / 2, f"engine generated {generated} tokens for a request the client left"
    good_request_works(stack)


# ------------------------------------------------------------------- reload ---
KEY_NEW = "sk-local-team-new-0123456789abcdef0123"


def models_status(stack: LocalStack, key: str) -> int:
    return httpx.get(stack.base_url + "/v1/models", headers={"Authorization": f"Bearer {key}"},
                     timeout=30).status_code


def test_reload_adds_and_revokes_a_key_at_once(stack: LocalStack) -> None:
    """`local-stack.sh reload` runs the container's reload.sh: a key added is
    let in as soon as the command returns (nginx answers SIGHUP before its new
    workers run: without the wait, the new key got 401s), a revoked key is
    refused at once, and a bad key changes nothing."""
    try:
        for _ in range(3):
            stack.extra_env["API_KEY_team_new"] = KEY_NEW
            out = stack.run("reload", timeout=60)
            assert out.returncode == 0 and "reloaded with 2 API key(s)" in out.stderr, out.stderr
            assert (models_status(stack, KEY_NEW), models_status(stack, API_KEY)) == (200, 200)
            del stack.extra_env["API_KEY_team_new"]
            out = stack.run("reload", timeout=60)
            assert out.returncode == 0 and "reloaded with 1 API key(s)" in out.stderr, out.stderr
            assert (models_status(stack, KEY_NEW), models_status(stack, API_KEY)) == (401, 200), out.stderr
        stack.extra_env["API_KEY_team_new"] = "short-key"
        out = stack.run("reload", timeout=60)
        assert out.returncode != 0 and "API_KEY_team_new" in out.stderr and "short-key" not in out.stderr, out.stderr
        assert models_status(stack, API_KEY) == 200
    finally:
        stack.extra_env.pop("API_KEY_team_new", None)


# --------------------------------------------------------------------- load ---
def test_load_64_streams(stack: LocalStack) -> None:
    """64 concurrent streams, 192 requests of 64 tokens each, from vLLM's own
    benchmark client (scripts/bench.sh --url, as users load their box)."""
    out = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "bench.sh"), "--url", stack.base_url + "/v1", "--api-key", API_KEY,
         "--concurrency", "64", "--requests", "192", "--max-tokens", "64", "--warmup", "1", "--prompt-words", "40",
         "--tokenizer", str(TINY_MODEL_DIR)],
        text=True, capture_output=True, timeout=600, check=False, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    row = json.loads(out.stdout.strip().splitlines()[-1])["rows"][0]
    print("\nload figures:", json.dumps(row, indent=1))
    assert (row["concurrency"], row["requests"], row["errors"]) == (64, 192, 0), row
    phases = Path(os.environ.get("RUNTIME_DIR", REPO_ROOT / ".runtime")) / "bench" / "phases"
    results = [json.loads(p.read_text()) for p in phases.glob("*.json")]
    # vLLM's client: every stream ran to its end (ignore_eos, 64 tokens each).
    assert [(r["completed"], r["total_output_tokens"]) for r in results] == [(192, 192 * 64)], results
    # Slow is not hung: 64 streams on 2 cores never make the hang watchdog fire.
    assert "watchdog: FIRED" not in stack.serve_log()
    print("heartbeats answered late during the load:", stack.serve_log().count("heartbeat unanswered"))
    good_request_works(stack)
