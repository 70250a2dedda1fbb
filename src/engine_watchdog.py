"""Hang watchdog: a model server whose health check really probes its engine.

Ray Serve calls a replica's ``check_health`` every few seconds and replaces the
replica after three failures in a row; a failed or timed-out check counts.
Ray Serve LLM's own check only asks vLLM whether it has *died*: a hung engine
(a frozen process, a stuck GPU kernel or NCCL collective) passes it forever.

``WatchedLLMServer`` (plugged in through ``LLMConfig.server_cls``) adds a
heartbeat: vLLM's ``is_sleeping`` utility call, a round trip to the engine
process that the engine answers between two steps. A long queue therefore
still answers (slow is not hung); an engine that stops stepping does not.
When no heartbeat has been answered for ``WATCHDOG_TIMEOUT`` seconds the
watchdog fires: it logs what it saw, counts the firing in a Ray metric,
SIGKILLs the engine's processes (never resumes them; in-flight requests then
end with an error at once, and the memory is freed for the next engine), and
fails the check, so Serve replaces the replica.

The decision logic (``Heartbeat``) is pure and unit-tested; only the class
below touches Ray, vLLM and processes. Nothing runs at import time apart from
the definitions, but importing the class needs Ray Serve LLM, hence the lazy
import in ``watched_server_class``.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any

from lazy_classes import lazy_attributes
from settings import DEFAULT_WATCHDOG_TIMEOUT_S

# The heartbeat is sent every health check; Serve's period and timeout are set
# from these in llm_config.py.
HEALTH_CHECK_PERIOD_S = 5
PROBE_TIMEOUT_S = 5.0
WATCHDOG_TIMEOUT_VAR = "WATCHDOG_TIMEOUT"
# What a request gets (503) while the engine is dead and its replica replaced.
ENGINE_GONE_MESSAGE = ("The model engine stopped and is being restarted; retry shortly "
                       "(requests wait for the new engine once its replica is starting).")


@dataclass
class Heartbeat:
    """When the engine last answered, and whether that is too long ago."""

    timeout_s: float
    last_ok: float = field(default_factory=time.monotonic)
    fired: bool = False
    missed: int = 0

    def answered(self, now: float) -> None:
        self.last_ok = now
        self.missed = 0

    def unanswered(self, now: float) -> bool:
        """A heartbeat went unanswered; True when the watchdog must fire now."""
        self.missed += 1
        if self.fired or now - self.last_ok < self.timeout_s:
            return False
        self.fired = True
        return True

    def silent_for(self, now: float) -> float:
        return now - self.last_ok


@dataclass
class Recovery:
    """deploy.py's second bound: how long the app has not been healthy."""

    timeout_s: float
    unhealthy_since: float | None = None
    last_status: str = ""

    def observe(self, healthy: bool, now: float, status: str) -> str | None:
        """Record one status poll; a reason to exit when the bound is passed."""
        if healthy:
            self.unhealthy_since = None
        elif self.unhealthy_since is None:
            self.unhealthy_since = now
        self.last_status = status
        if healthy or not self.timeout_s or self.unhealthy_since is None:
            return None
        down_for = now - self.unhealthy_since
        if down_for < self.timeout_s:
            return None
        return (f"the application has not been healthy for {down_for:.0f}s (status {status}; "
                f"WATCHDOG_RECOVERY_TIMEOUT={self.timeout_s:.0f}): exiting so the whole server is restarted")


def process_state(pid: int) -> str:
    """One letter from /proc/PID/stat (R running, S sleeping, T stopped, D disk...)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "?"


def descendants(pid: int) -> list[int]:
    """Every process below PID (the engine core and its workers)."""
    import psutil

    try:
        return [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def watched_server_class() -> type:
    """The LLMServer subclass (imports Ray Serve LLM, so only called in deploy.py)."""
    import asyncio
    import logging

    # Ray's public class (ray.serve.llm.LLMServer, a thin subclass of the
    # internal one). Ray 2.60 exports neither the fatal-error list nor the
    # exception its OpenAI layer turns into an HTTP status: those two stay
    # private imports, pinned by tests/unit/test_watchdog.py.
    from ray.llm._internal.common.errors import VLLM_FATAL_ERRORS
    from ray.llm._internal.serve.core.configs.openai_api_models import OpenAIHTTPException
    from ray.util.metrics import Counter

    import first_chunk

    # Ray's public LLMServer with the first chunk at once (src/first_chunk.py).
    LLMServer = first_chunk.FirstChunkLLMServer  # noqa: N806

    logger = logging.getLogger("ray.serve")

    def engine_gone() -> Exception:
        err = OpenAIHTTPException(status_code=503, message=ENGINE_GONE_MESSAGE, type="ServiceUnavailableError")
        # It crosses to the ingress pickled: without args (OpenAIHTTPException
        # sets none) it cannot be rebuilt there and becomes a bare 500.
        err.args = (503, ENGINE_GONE_MESSAGE, "ServiceUnavailableError")
        return err

    async def engine_dead_as_503(stream: Any) -> Any:
        try:
            async for item in stream:
                yield item
        except VLLM_FATAL_ERRORS:
            raise engine_gone() from None

    class WatchedLLMServer(LLMServer):  # type: ignore[misc, valid-type]
        """LLMServer whose health check fails when the engine stops answering,
        and whose requests answer 503 (not Ray's bare 500) once the engine is gone."""

        async def _run_request(self, *args: Any, **kwargs: Any) -> Any:
            # One seam for chat, completions, embeddings...: Ray Serve LLM
            # turns vLLM's EngineDeadError into "500 Internal Server Error".
            # A dead engine is a replica being replaced: 503, retry shortly.
            engine_client = getattr(self.engine, "_engine_client", None) if self.engine else None
            if engine_client is not None and getattr(engine_client, "errored", False):
                raise engine_gone()
            return engine_dead_as_503(await super()._run_request(*args, **kwargs))

        async def check_health(self) -> None:
            await super().check_health()
            engine_client = getattr(self.engine, "_engine_client", None) if self.engine else None
            if engine_client is None:
                return  # still starting: a long load (download) is not a hang
            heartbeat: Heartbeat | None = getattr(self, "_ray_llm_heartbeat", None)
            if heartbeat is None:
                timeout = float(os.environ.get(WATCHDOG_TIMEOUT_VAR) or DEFAULT_WATCHDOG_TIMEOUT_S)
                heartbeat = self._ray_llm_heartbeat = Heartbeat(timeout)
                self._ray_llm_firings = Counter(
                    "llm_watchdog_firings",
                    description="Hung engines killed by the watchdog (no heartbeat for WATCHDOG_TIMEOUT s).",
                    tag_keys=("model",))
            started = time.monotonic()
            try:
                await asyncio.wait_for(engine_client.is_sleeping(), PROBE_TIMEOUT_S)
            except asyncio.TimeoutError:
                now = time.monotonic()
                if heartbeat.unanswered(now):
                    self._ray_llm_fire(heartbeat, now)
                    raise RuntimeError(
                        f"watchdog: the engine answered no heartbeat for {heartbeat.silent_for(now):.0f}s "
                        f"(WATCHDOG_TIMEOUT={heartbeat.timeout_s:.0f}); engine killed, replica to be replaced"
                    ) from None
                logger.warning("watchdog: engine heartbeat unanswered after %.1fs (silent for %.0fs of %.0fs)",
                               time.monotonic() - started, heartbeat.silent_for(now), heartbeat.timeout_s)
                return
            heartbeat.answered(time.monotonic())

        def _ray_llm_fire(self, heartbeat: Heartbeat, now: float) -> None:
            pids = descendants(os.getpid())
            states = {pid: process_state(pid) for pid in pids}
            model = getattr(getattr(self, "_llm_config", None), "model_id", "") or ""
            logger.error(
                "watchdog: FIRED for model %r: no heartbeat answered for %.0fs (%d missed in a row, "
                "WATCHDOG_TIMEOUT=%.0f); engine processes and states %s; killing them (SIGKILL) so in-flight "
                "requests fail now and Ray Serve replaces this replica",
                model, heartbeat.silent_for(now), heartbeat.missed, heartbeat.timeout_s, states)
            self._ray_llm_firings.inc(tags={"model": model})
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    return WatchedLLMServer


# ``engine_watchdog:WatchedLLMServer`` as an import path (LLMConfig.server_cls);
# pickled by reference, so Ray's workers rebuild the class from src/ instead of
# a closure copy.
__getattr__ = lazy_attributes(globals(), {"WatchedLLMServer": watched_server_class})
