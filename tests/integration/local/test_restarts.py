"""What happens to the shared local stack when something stops: a killed
engine, a frozen engine, the model server gone behind a running Nginx, and a
graceful stop with streams in flight.

One ordered scenario (pytest runs a file's tests in order), last in its folder
by name: each step leaves the stack serving except the graceful stop, which
takes it down. Any test that finds it down starts it again (the folder's
conftest), so the order saves engine starts but nothing depends on it.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time

import httpx
import openai
import pytest

from openai_errors import INTERNALS
from support import assert_openai_error_body, kill_if_stopped, process_gone
from support.local_stack import (
    API_KEY,
    DASH_PASSWORD,
    DASH_USER,
    MODEL,
    WATCHDOG_TIMEOUT_S,
    LocalStack,
    auth,
    chat_body,
    good_request_works,
    wait_until_serving,
)

pytestmark = [pytest.mark.e2e]


# ------------------------------------------------------------------- faults ---
def test_killed_engine_fails_fast_and_recovers_by_itself(stack: LocalStack) -> None:
    pids = stack.engine_pids()
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
    assert stack.engine_pids() and set(stack.engine_pids()).isdisjoint(pids)
    good_request_works(stack)


def metric_total(stack: LocalStack, name: str) -> float:
    """A counter's total from Ray's metrics endpoint (port via the dashboard API)."""
    summary = httpx.get(stack.base_url + "/dashboard/nodes?view=summary", auth=(DASH_USER, DASH_PASSWORD),
                        timeout=30).text
    port = int(re.search(r'"metricsExportPort":\s*(\d+)', summary).group(1))  # type: ignore[union-attr]
    metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines() if line.startswith(name))


# The watchdog's documented bounds (.env): detection within WATCHDOG_TIMEOUT
# (the shared stack sets it to its minimum) plus one heartbeat round (15 s).
HANG_DETECTION_BOUND_S = WATCHDOG_TIMEOUT_S + 15


def test_frozen_engine_is_replaced_without_being_resumed(stack: LocalStack) -> None:
    """SIGSTOP the engine mid-stream (a hung GPU or NCCL collective): the stream
    ends with an error within the bound, /readyz says 503 quickly, and the API
    answers again by itself. The frozen process is never sent SIGCONT. The
    replacement's slow start (held still longer than the bound) does not make
    the watchdog fire a second time."""
    pids = stack.engine_pids()
    assert pids, "no vLLM EngineCore process found"
    fired_before = stack.serve_log().count("watchdog: FIRED")
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
        while not (new := [p for p in stack.engine_pids() if p not in pids]):
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
        assert set(new) <= set(stack.engine_pids()), "the slow replacement engine was not waited for"
        # The watchdog killed the frozen engine (SIGKILL works on stopped
        # processes); it was never resumed.
        assert all(process_gone(pid) for pid in pids), "the frozen engine was not killed"
        log = stack.serve_log()
        assert log.count("watchdog: FIRED") == fired_before + 1, log[-3000:]
        deadline = time.monotonic() + 60
        while metric_total(stack, "ray_llm_watchdog_firings_total") < 1:
            assert time.monotonic() < deadline, "the firing was not counted in ray_llm_watchdog_firings_total"
            time.sleep(3)
    finally:
        kill_if_stopped(pids)  # never resumed: killed if the watchdog did not
        thread.join(timeout=5)


# ------------------------------------------------------------ backend loss ---
def test_backend_loss_fails_fast_and_recovers(stack: LocalStack) -> None:
    """Serve stopped under a running Nginx: a quick 503 in OpenAI's shape, then
    `local-stack.sh up serve` brings it back behind the same Nginx."""
    nginx_pid = stack.session_pids()["nginx"]
    out = stack.down("serve")
    assert out.returncode == 0, out.stderr
    start = time.monotonic()
    r = httpx.post(stack.base_url + "/v1/chat/completions", headers=auth(), timeout=30,
                   json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
    elapsed = time.monotonic() - start
    assert r.status_code == 503 and r.headers["content-type"].startswith("application/json"), r.text
    assert_openai_error_body(r.json())
    assert elapsed < 10, f"took {elapsed:.1f}s to fail"
    assert httpx.get(stack.base_url + "/readyz", timeout=30).status_code == 503
    stack.up("serve")
    assert stack.session_pids()["nginx"] == nginx_pid, "nginx must not be restarted"
    good_request_works(stack)
    assert httpx.get(stack.base_url + "/readyz", timeout=30).status_code == 200


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
    """The scenario's last step: `down` (nginx SIGQUIT, then Serve SIGTERM) while streams run."""
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
    assert "draining in-flight requests" in stack.serve_log()
