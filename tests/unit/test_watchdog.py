"""The hang watchdog's decisions (src/engine_watchdog.py) and its settings."""

from __future__ import annotations

import signal

import pytest

import llm_config
from engine_watchdog import Heartbeat, Recovery, process_state
from settings import ConfigError, parse_settings


def test_heartbeat_fires_once_after_the_timeout_without_answers() -> None:
    beat = Heartbeat(timeout_s=30, last_ok=100.0)
    assert not beat.unanswered(110.0)
    assert not beat.unanswered(129.9)
    assert beat.unanswered(130.0)
    assert not beat.unanswered(140.0), "fires once per engine"
    assert beat.missed == 4 and beat.silent_for(140.0) == 40.0


def test_an_answer_resets_the_clock() -> None:
    """A loaded engine answers between two steps: slow answers never fire."""
    beat = Heartbeat(timeout_s=30, last_ok=0.0)
    for now in range(0, 600, 5):
        assert not beat.unanswered(now + 4.9)
        beat.answered(now + 5.0)
    assert beat.missed == 0 and not beat.fired


def test_recovery_exits_only_after_staying_unhealthy_for_the_bound() -> None:
    recovery = Recovery(timeout_s=900)
    assert recovery.observe(True, 0, "RUNNING") is None
    assert recovery.observe(False, 10, "DEPLOYING") is None
    assert recovery.observe(False, 909, "UNHEALTHY") is None
    reason = recovery.observe(False, 910, "UNHEALTHY")
    assert reason and "900" in reason and "UNHEALTHY" in reason


def test_recovery_clock_restarts_when_healthy_again() -> None:
    recovery = Recovery(timeout_s=100)
    recovery.observe(False, 0, "UNHEALTHY")
    recovery.observe(True, 90, "RUNNING")
    assert recovery.observe(False, 95, "UNHEALTHY") is None
    assert recovery.observe(False, 194, "UNHEALTHY") is None
    assert recovery.observe(False, 195, "UNHEALTHY")


def test_recovery_timeout_zero_never_exits() -> None:
    recovery = Recovery(timeout_s=0)
    recovery.observe(False, 0, "UNHEALTHY")
    assert recovery.observe(False, 10**6, "UNHEALTHY") is None


def test_process_state_reads_proc() -> None:
    import os

    assert process_state(os.getpid()) in {"R", "S"}
    assert process_state(2**22 + 7) == "?"


def test_watchdog_settings_and_config() -> None:
    on = parse_settings({"DEVICE": "cpu"})
    assert (on.watchdog_timeout_s, on.watchdog_recovery_timeout_s) == (30, 900)
    config = llm_config.llm_config(on)
    assert config["server_cls"] == "engine_watchdog:WatchedLLMServer"
    assert config["deployment_config"]["health_check_period_s"] == 5
    off = llm_config.llm_config(parse_settings({"DEVICE": "cpu", "WATCHDOG_TIMEOUT": "0"}))
    # Without the watchdog: the first-chunk server (tests/unit/test_first_chunk.py), no health period.
    assert off["server_cls"] == "first_chunk:FirstChunkLLMServer"
    assert "health_check_period_s" not in off["deployment_config"]


@pytest.mark.parametrize(("value", "fragment"), [("5", "at least 10"), ("-1", "integer >= 0"), ("x", "integer")])
def test_bad_watchdog_timeout_is_refused(value: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_settings({"WATCHDOG_TIMEOUT": value})
    assert any("WATCHDOG_TIMEOUT" in p and fragment in p for p in err.value.problems), err.value.problems


def test_watched_server_class_is_a_real_llm_server() -> None:
    """The import path LLMConfig.server_cls takes resolves to a subclass of
    Ray's public LLMServer with its own health check, and Ray's LLMConfig
    accepts it. The two private names it still imports exist (a Ray upgrade
    that moves them fails here, not in a replica)."""
    from ray.llm._internal.common.errors import VLLM_FATAL_ERRORS
    from ray.llm._internal.serve.core.configs.openai_api_models import OpenAIHTTPException
    from ray.serve.llm import LLMConfig, LLMServer

    import engine_watchdog

    assert VLLM_FATAL_ERRORS and issubclass(OpenAIHTTPException, Exception)
    cls = engine_watchdog.WatchedLLMServer
    assert issubclass(cls, LLMServer) and cls.check_health is not LLMServer.check_health
    assert cls.__module__ == "engine_watchdog" and cls.__qualname__ == "WatchedLLMServer"
    config = LLMConfig(**llm_config.llm_config(parse_settings({"DEVICE": "cpu"})))
    assert config.server_cls is cls


# --- The local stack's stand-in for Compose's restart policy -----------------------

LOCAL_STACK = str(__import__("support").REPO_ROOT / "scripts" / "local-stack.sh")


def test_local_stack_supervisor_restarts_deploy_py_on_status_3(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import subprocess

    runs = tmp_path / "runs"
    child = f'n=$(cat {runs} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {runs}; [ $n -ge 3 ] && exit 0; exit 3'
    out = subprocess.run(["bash", LOCAL_STACK, "_supervise", "sh", "-c", child], text=True,
                         capture_output=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert runs.read_text().strip() == "3" and out.stderr.count("starting it again") == 2
    # Any other status ends the supervisor with that status (2 = bad configuration).
    out = subprocess.run(["bash", LOCAL_STACK, "_supervise", "sh", "-c", "exit 2"], text=True,
                         capture_output=True, timeout=60, check=False)
    assert out.returncode == 2


def test_local_stack_supervisor_passes_sigterm_on(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import signal
    import subprocess
    import time

    marker, ready = tmp_path / "stopped", tmp_path / "ready"
    child = f'trap "echo clean > {marker}; exit 0" TERM; touch {ready}; while :; do sleep 0.1; done'
    proc = subprocess.Popen(["bash", LOCAL_STACK, "_supervise", "sh", "-c", child], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while not ready.exists():  # the child's trap is in place
        assert time.monotonic() < deadline and proc.poll() is None, "the supervised child never started"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert marker.read_text().strip() == "clean"


def test_sigterm_during_a_status_poll_is_not_swallowed(monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM arriving while deploy.py asks Serve for the app's status must end
    the watch (and so start the drain), never count as an unknown status. Seen
    once in the suite's Compose `down`: the stop was logged as 'RUNNING ->
    unknown (StopRequested)', no drain ran, and Docker killed the container
    after its timeout."""
    import deploy

    class Serve:
        polls = 0

        def status(self) -> object:
            self.polls += 1
            if self.polls > 1:  # pytest.fail is no Exception: the poll cannot swallow it
                pytest.fail("the SIGTERM was swallowed: watch_app polled again")
            deploy.raise_stop(signal.SIGTERM, None)  # the handler, run inside the poll
            raise AssertionError("unreachable")

    monkeypatch.setattr(deploy, "STATUS_POLL_S", 0)
    with pytest.raises(deploy.StopRequested):
        deploy.watch_app(Serve(), Recovery(timeout_s=900))
