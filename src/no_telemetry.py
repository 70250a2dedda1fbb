"""No usage telemetry on the way to a ready model when usage stats are off.

At the end of every engine start, Ray Serve LLM's ``LLMServer._start_engine``
(ray/llm/_internal/serve/core/server/llm_server.py) calls
``push_telemetry_report_for_all_models``: it gets or creates a detached
``TelemetryAgent`` actor on the head node (the first replica of a cluster
waits for a new Ray worker process to start and import Ray Serve LLM), blocks
on its ``record`` call (with LoRA it also lists the adapter store first), and
so records usage tags in Ray's cluster store. Those tags only ever leave the
cluster in Ray's usage report. With ``RAY_USAGE_STATS_ENABLED=0`` (this
project's default) no report is sent, so the work only delays readiness: 3.7 s
of every start on the 2-core test machine (docs/benchmarks.md, "Start-up
cut 2"), and the actor's process then stays for the life of the cluster.

``NoTelemetryLLMServer._start_engine`` starts the engine as Ray's does and
skips both usage records (the telemetry report and the direct-streaming tag)
when Ray's own ``usage_stats_enabled()`` says usage stats are off. With usage
stats on it is Ray's method unchanged. Both names are private to Ray;
tests/unit/test_no_telemetry.py pins them and fails when a Ray upgrade changes
what ``_start_engine`` does.

Nothing here imports Ray at import time.
"""

from __future__ import annotations

from lazy_classes import lazy_attributes


def no_telemetry_server_class() -> type:
    """Ray's public LLMServer without the usage records when usage stats are off."""
    from ray._common.usage.usage_lib import usage_stats_enabled
    from ray.serve.llm import LLMServer

    class NoTelemetryLLMServer(LLMServer):  # type: ignore[misc, valid-type]
        async def _start_engine(self) -> None:
            if usage_stats_enabled():
                await super()._start_engine()
                return
            if self.engine is None:
                raise ValueError("Engine is not set")
            await self.engine.start()

    return NoTelemetryLLMServer


# Built on first use (it derives from Ray's class); the other server classes
# (first_chunk, engine_watchdog) derive from it.
__getattr__ = lazy_attributes(globals(), {"NoTelemetryLLMServer": no_telemetry_server_class})
