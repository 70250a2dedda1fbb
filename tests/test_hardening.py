"""Hardening, tried against the running stack (real engine, real Nginx):
secrets, abuse, a client that disconnects, load, a killed engine and a
graceful stop. Shares the session stack with test_e2e.py; the graceful-stop
test runs last and takes the stack down.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from conftest import REPO_ROOT, assert_openai_error_body, kill_if_stopped, process_gone, session_processes
from openai_errors import INTERNALS
from stack_support import API_KEY, DASH_PASSWORD, DASH_USER, HF_TOKEN, MODEL, RAY_TOKEN, LocalStack

pytestmark = [pytest.mark.e2e]

SECRETS = {"HF_TOKEN": HF_TOKEN, "OPENAI_API_KEY": API_KEY, "RAY_AUTH_TOKEN": RAY_TOKEN,
           "NGINX_DASHBOARD_PASSWORD": DASH_PASSWORD}


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


def serve_log(stack: LocalStack) -> str:
    return (stack.stack_dir / "serve.log").read_text(errors="replace")


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
    while "disconnected, cancelling request" not in serve_log(stack):
        assert time.monotonic() < deadline, "Ray Serve never noticed the client leaving"
        time.sleep(1)
    # Long enough for the whole generation (~2-4 s here) and a metrics export.
    time.sleep(20)
    generated = generated_tokens(stack) - before
    assert 0 < generated < max_tokens / 2, f"engine generated {generated} tokens for a request the client left"
    good_request_works(stack)


# --------------------------------------------------------------------- load ---
def test_load_64_streams_for_60_seconds(stack: LocalStack) -> None:
    sys.path.insert(0, str(REPO_ROOT / "scripts"))
    from bench_load import run_load

    result = run_load(base_url=stack.base_url, api_key=API_KEY, model=MODEL, clients=64, duration_s=60,
                      max_tokens=64, stack_dir=stack.stack_dir)
    print("\nload figures:", json.dumps(result, indent=1))
    assert result["streams_started"] > 64
    assert result["http_5xx"] == 0, result
    assert result["errors"] == 0, result
    assert result["streams_incomplete"] == 0, result
    # Slow is not hung: 64 streams on 2 cores never make the hang watchdog fire.
    assert "watchdog: FIRED" not in serve_log(stack)
    print("heartbeats answered late during the load:", serve_log(stack).count("heartbeat unanswered"))
    good_request_works(stack)


# ------------------------------------------------------------------- faults ---
def engine_pids(stack: LocalStack) -> list[int]:
    return [int(p) for p in session_processes(stack.session_pids()["serve"], "EngineCore")]


def test_killed_engine_fails_fast_and_recovers_by_itself(stack: LocalStack) -> None:
    pids = engine_pids(stack)
    assert pids, "no vLLM EngineCore process found"
    outcome: dict[str, object] = {}

    def stream() -> None:
        start = time.monotonic()
        try:
            with httpx.Client(timeout=httpx.Timeout(120, read=120)) as client:
                with client.stream("POST", stack.base_url + "/v1/chat/completions", headers=auth(),
                                   json=chat_body(max_tokens=1800, stream=True, ignore_eos=True)) as r:
                    lines = list(r.iter_lines())
            outcome["done"] = "[DONE]" in "".join(lines[-3:])
            outcome["error_in_stream"] = any('"error"' in line for line in lines)
            outcome["error_events"] = [line for line in lines if '"error"' in line]
            outcome["status"] = r.status_code
        except httpx.HTTPError as err:
            outcome["exception"] = repr(err)
        outcome["elapsed"] = time.monotonic() - start

    thread = threading.Thread(target=stream)
    thread.start()
    time.sleep(0.3)  # let the stream start; the kill below is what the test is about
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    thread.join(timeout=150)
    assert not thread.is_alive(), "the client hung after the engine was killed"
    assert outcome["elapsed"] < 120, outcome  # type: ignore[operator]
    # Terminated or errored, never a clean fake finish and never a hang.
    assert "exception" in outcome or outcome.get("error_in_stream") or not outcome.get("done") \
        or outcome.get("status") != 200, outcome
    for event in outcome.get("error_events", []):  # type: ignore[attr-defined]
        assert not INTERNALS.search(event) and "Request ID" not in event, event
    # While the engine is gone (until its replica is replaced) a request gets
    # 503 in OpenAI's shape, not Ray's bare 500: the client's typed exception.
    client = openai.OpenAI(base_url=stack.base_url + "/v1", api_key=API_KEY, max_retries=0, timeout=60)
    with pytest.raises(openai.InternalServerError) as err:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert err.value.status_code == 503, err.value.response.text
    error = assert_openai_error_body(err.value.response.json())
    assert error["type"] == "server_error" and "restarted" in error["message"], error
    # /readyz reports not-ready during recovery, then ready without anyone acting.
    saw_not_ready = False
    deadline = time.monotonic() + 600
    while True:
        r = httpx.get(stack.base_url + "/readyz", timeout=30)
        saw_not_ready |= r.status_code == 503
        if r.status_code == 200 and saw_not_ready:
            break
        assert time.monotonic() < deadline, "the replica did not recover within 600 s"
        time.sleep(2)
    assert engine_pids(stack) and set(engine_pids(stack)).isdisjoint(pids)
    good_request_works(stack)


def metric_total(stack: LocalStack, name: str) -> float:
    """A counter's total from Ray's metrics endpoint (port via the dashboard API)."""
    summary = httpx.get(stack.base_url + "/dashboard/nodes?view=summary", auth=(DASH_USER, DASH_PASSWORD),
                        timeout=30).text
    port = int(re.search(r'"metricsExportPort":\s*(\d+)', summary).group(1))  # type: ignore[union-attr]
    metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines() if line.startswith(name))


# The watchdog's documented bounds (.env): detection within WATCHDOG_TIMEOUT
# (30 s by default) plus one heartbeat round (15 s).
HANG_DETECTION_BOUND_S = 30 + 15


def test_frozen_engine_is_replaced_without_being_resumed(stack: LocalStack) -> None:
    """SIGSTOP the engine mid-stream (a hung GPU or NCCL collective): the stream
    ends with an error within the bound, /readyz says 503 quickly, and the API
    answers again by itself. The frozen process is never sent SIGCONT. The
    replacement's slow start (held still longer than the bound) does not make
    the watchdog fire a second time."""
    pids = engine_pids(stack)
    assert pids, "no vLLM EngineCore process found"
    fired_before = serve_log(stack).count("watchdog: FIRED")
    outcome: dict[str, object] = {}
    started = threading.Event()

    def stream() -> None:
        try:
            with httpx.Client(timeout=httpx.Timeout(30, read=300)) as client:
                with client.stream("POST", stack.base_url + "/v1/chat/completions", headers=auth(),
                                   json=chat_body(max_tokens=1800, stream=True, ignore_eos=True)) as r:
                    outcome["status"] = r.status_code
                    lines = []
                    for line in r.iter_lines():
                        started.set()
                        lines.append(line)
            outcome["done"] = "[DONE]" in "".join(lines[-3:])
            outcome["error_in_stream"] = any('"error"' in line for line in lines)
            outcome["error_events"] = [line for line in lines if '"error"' in line]
        except httpx.HTTPError as err:
            outcome["exception"] = repr(err)
        finally:
            outcome["ended"] = time.monotonic()
            started.set()

    thread = threading.Thread(target=stream)
    thread.start()
    # Not "after the first event": the CPU engine sometimes delivers a short
    # stream in one lump, so the first event can mean the stream is done.
    # Freeze while the request is surely still generating (1800 tokens).
    time.sleep(0.5)
    assert thread.is_alive(), outcome
    frozen_at = time.monotonic()
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        # /readyz while the engine is frozen: a quick 503 that says why.
        time.sleep(2)
        t0 = time.monotonic()
        ready = httpx.get(stack.base_url + "/readyz", timeout=30)
        readyz_s = time.monotonic() - t0
        assert ready.status_code == 503 and ready.json()["error"]["code"] == "model_not_ready", ready.text
        assert readyz_s < 10, f"/readyz took {readyz_s:.1f}s"
        thread.join(timeout=HANG_DETECTION_BOUND_S + 60)
        assert not thread.is_alive(), "the stream stalled past the watchdog's bound"
        stream_ended_s = float(outcome["ended"]) - frozen_at  # type: ignore[arg-type]
        assert "exception" in outcome or outcome.get("error_in_stream") or not outcome.get("done"), outcome
        assert stream_ended_s <= HANG_DETECTION_BOUND_S + 10, f"stream ended {stream_ended_s:.0f}s after the freeze"
        # A slow start is not a hang: the replacement engine is held still
        # (SIGSTOP) during its load for longer than the bound, then let go.
        # The watchdog only watches engines that have started: it must not fire.
        deadline = time.monotonic() + 300
        while not (new := [p for p in engine_pids(stack) if p not in pids]):
            assert time.monotonic() < deadline, "no replacement engine process appeared"
            time.sleep(0.2)
        for pid in new:
            os.kill(pid, signal.SIGSTOP)
        held_s = HANG_DETECTION_BOUND_S + 5
        time.sleep(held_s)
        for pid in new:
            os.kill(pid, signal.SIGCONT)
        # The API answers again with no human step.
        wait_until_serving(stack, 600, "no completion within 600 s of the freeze")
        recovered_s = time.monotonic() - frozen_at
        print(f"\nhang: stream ended with an error {stream_ended_s:.0f}s after the freeze; "
              f"/readyz answered 503 in {readyz_s:.1f}s; completions again after {recovered_s:.0f}s, "
              f"{held_s}s of which the test held the replacement engine still during its load")
        assert set(new) <= set(engine_pids(stack)), "the slow replacement engine was not waited for"
        # The watchdog killed the frozen engine (SIGKILL works on stopped
        # processes); it was never resumed.
        assert all(process_gone(pid) for pid in pids), "the frozen engine was not killed"
        log = serve_log(stack)
        assert log.count("watchdog: FIRED") == fired_before + 1, log[-3000:]
        deadline = time.monotonic() + 60
        while metric_total(stack, "ray_llm_watchdog_firings_total") < 1:
            assert time.monotonic() < deadline, "the firing was not counted in ray_llm_watchdog_firings_total"
            time.sleep(3)
    finally:
        kill_if_stopped(pids)  # never resumed: killed if the watchdog did not
        thread.join(timeout=5)


# --------------------------------------------------------- graceful stop ---
def stream_in_background(url: str, headers: dict[str, str], outcome: dict[str, object]) -> threading.Thread:
    def run() -> None:
        finish = None
        try:
            with httpx.Client(timeout=120) as client:
                with client.stream("POST", url, headers=headers,
                                   json=chat_body(max_tokens=1800, stream=True, ignore_eos=True)) as r:
                    outcome["status"] = r.status_code
                    for line in r.iter_lines():
                        outcome.setdefault("first", time.monotonic())
                        match = re.search(r'"finish_reason":\s*"(\w+)"', line)
                        finish = match.group(1) if match else finish
        except httpx.HTTPError as err:
            outcome["exception"] = repr(err)
        outcome["finish"] = finish

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 30
    while "first" not in outcome and thread.is_alive():
        assert time.monotonic() < deadline, "stream did not start"
        time.sleep(0.02)
    return thread


def test_graceful_stop_lets_in_flight_streams_finish(stack: LocalStack) -> None:
    """Runs last: `down` (nginx SIGQUIT, then Serve SIGTERM) while streams run."""
    # Serving first, so a failed test before this one (an engine still being
    # replaced) shows as that failure, not as a 503 here.
    wait_until_serving(stack, 600, "the stack did not serve before the graceful-stop test")
    via_nginx: dict[str, object] = {}
    thread = stream_in_background(stack.base_url + "/v1/chat/completions", auth(), via_nginx)
    out = stack.down("nginx")
    thread.join(timeout=60)
    assert out.returncode == 0, out.stderr
    assert via_nginx.get("finish") == "length", via_nginx

    direct: dict[str, object] = {}
    thread = stream_in_background(f"http://127.0.0.1:{stack.api_port}/v1/chat/completions", {}, direct)
    out = stack.down("serve")
    thread.join(timeout=60)
    assert out.returncode == 0, out.stderr
    assert direct.get("finish") == "length", direct
    assert "draining in-flight requests" in serve_log(stack)
