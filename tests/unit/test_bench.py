"""scripts/bench.py: its own parsing and arithmetic. Its --url mode against a
real stack is tests/integration/local/test_bench_url.py; the full side-by-side
benchmark is `scripts/bench.sh`, with results in docs/benchmarks.md."""

from __future__ import annotations

import importlib.util
import json
import sys
from types import ModuleType

import pytest

from support import REPO_ROOT


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench", REPO_ROOT / "scripts" / "bench.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench"] = module
    spec.loader.exec_module(module)
    return module


bench = load_bench()


def event(content: str | None = None, usage: int | None = None, error: str | None = None) -> str:
    if error is not None:
        return "data: " + json.dumps({"error": {"message": error}})
    chunk: dict = {"choices": [{"delta": {"content": content}}] if content is not None else []}
    if usage is not None:
        chunk["usage"] = {"completion_tokens": usage}
    return "data: " + json.dumps(chunk)


def test_parse_stream_times_first_and_per_token() -> None:
    events = [(10.1, ": keepalive"), (10.2, event("a")), (10.2, event("b")), (10.5, event("c")),
              (10.6, event("d")), (10.6, event(usage=4)), (10.6, "data: [DONE]")]
    sample = bench.parse_stream(events, started=10.0)
    assert sample.ok and sample.tokens == 4
    assert sample.ttft_s == pytest.approx(0.2)
    # (last content - first content) / (tokens - 1): two tokens in one network chunk still count.
    assert sample.itl_s == pytest.approx(0.4 / 3)


@pytest.mark.parametrize("events,reason", [
    ([(1.0, event("a")), (1.1, event(usage=1))], "without [DONE]"),
    ([(1.0, event(error="boom"))], "boom"),
    ([(1.0, "data: {not json")], "bad event"),
    ([(1.0, "data: [DONE]")], "without [DONE] or content"),
])
def test_parse_stream_failures(events: list, reason: str) -> None:
    sample = bench.parse_stream(events, started=0.0)
    assert not sample.ok and reason in sample.error


def test_percentile_is_nearest_rank() -> None:
    values = list(range(1, 101))
    assert bench.percentile(values, 50) == 50 and bench.percentile(values, 99) == 99
    assert bench.percentile([7.0], 99) == 7.0 and bench.percentile([], 50) is None
    assert bench.percentile([3, 1, 2], 50) == 2


def phase(mode: str, concurrency: int, tok_s: float, ttft_ms: float, itl_ms: float, ready: float,
          errors: int = 0) -> object:
    samples = [bench.Sample(ok=True, ttft_s=ttft_ms / 1000, itl_s=itl_ms / 1000, tokens=100) for _ in range(4)]
    samples += [bench.Sample(ok=False, error="x") for _ in range(errors)]
    return bench.Phase(mode, concurrency, wall_s=400 / tok_s, samples=samples, ready_s=ready)


def test_medians_over_cycles_and_ratios() -> None:
    phases = []
    for tok_c16, stack_c16 in ((1000, 900), (1100, 1000), (900, 990)):
        phases += [phase("vllm", 1, 100, 50, 10, 60), phase("vllm", 16, tok_c16, 300, 20, 60),
                   phase("stack", 1, 95, 58, 10.4, 75), phase("stack", 16, stack_c16, 320, 21, 75, errors=1)]
    rows = bench.median_rows(phases)
    by_key = {(r["mode"], r["concurrency"]): r for r in rows}
    assert by_key[("vllm", 16)]["output_tok_s"] == pytest.approx(1000)
    assert by_key[("stack", 16)]["output_tok_s"] == pytest.approx(990)
    assert by_key[("stack", 16)]["errors"] == 3 and by_key[("stack", 16)]["requests"] == 15
    r = bench.ratios(rows)
    assert r["throughput_ratio_c16"] == pytest.approx(0.99)
    assert r["throughput_ratio_c1"] == pytest.approx(0.95)
    assert r["ttft_overhead_ms_c1_p50"] == pytest.approx(8.0)
    assert r["itl_overhead_pct_c1_p50"] == pytest.approx(4.0)
    assert r["ready_ratio"] == pytest.approx(1.25)
    text = bench.table(rows)
    assert "(a) bare vLLM" in text and "(c) stack via Nginx" in text and "3/15" in text


def test_ratios_are_none_without_a_baseline() -> None:
    rows = bench.median_rows([phase("stack", 1, 95, 58, 10.4, 75)])
    assert all(value is None for value in bench.ratios(rows).values())


def test_lever_rows_get_their_own_ratios() -> None:
    phases = [phase("vllm", 1, 100, 50, 10, 60), phase("vllm", 16, 1000, 300, 20, 60),
              phase("stack", 1, 80, 100, 12, 90), phase("stack", 16, 600, 320, 21, 90),
              phase("lever", 1, 90, 70, 11, 80), phase("lever", 16, 800, 320, 21, 80)]
    rows = bench.median_rows(phases)
    assert [r["mode"] for r in rows] == ["vllm", "vllm", "stack", "stack", "lever", "lever"]
    assert bench.ratios(rows)["throughput_ratio_c16"] == pytest.approx(0.6)
    lever = bench.ratios(rows, "lever")
    assert lever["throughput_ratio_c16"] == pytest.approx(0.8) and lever["ttft_overhead_ms_c1_p50"] == pytest.approx(20)
    assert "ray_direct_throughput_ratio_c16" not in lever


@pytest.mark.parametrize("argv,kind", [
    (["ray::ServeReplica:llm:OpenAiIngress"], "ray::ServeReplica:llm:OpenAiIngress"),
    (["VLLM::EngineCore"], "VLLM::EngineCore"),
    (["nginx: worker process"], "nginx"),
    (["/venv/bin/python", "-u", "/venv/lib/ray/dashboard/dashboard.py", "--port=1"], "dashboard.py"),
    (["/venv/bin/python3.11", "-m", "vllm.entrypoints.openai.api_server", "--model", "x"], "vllm.entrypoints.openai.api_server"),
    (["/venv/lib/ray/core/src/ray/raylet/raylet", "--x"], "raylet"),
    ([], "kworker/0:1"),
])
def test_process_kinds(argv: list[str], kind: str) -> None:
    assert bench.process_kind(argv, "kworker/0:1") == kind


def test_cpu_accounting_from_proc(tmp_path) -> None:  # type: ignore[no-untyped-def]
    def fake(pid: int, comm: str, utime: int, stime: int, argv: list[str]) -> None:
        d = tmp_path / str(pid)
        d.mkdir(exist_ok=True)
        fields = ["S", *["0"] * 10, str(utime), str(stime), *["0"] * 10]
        (d / "stat").write_text(f"{pid} ({comm}) " + " ".join(fields) + "\n")
        (d / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")

    fake(10, "ray::Proxy Actor", 100, 50, ["ray::ProxyActor"])
    fake(11, "VLLM::EngineCor", 1000, 0, ["VLLM::EngineCore"])
    (tmp_path / "self").mkdir()
    before = bench.cpu_snapshot(tmp_path)
    assert before == {10: ("ray::ProxyActor", 150), 11: ("VLLM::EngineCore", 1000)}
    fake(10, "ray::Proxy Actor", 150, 100, ["ray::ProxyActor"])
    fake(12, "nginx", 5, 5, ["nginx: worker process"])
    used = bench.cpu_delta(before, bench.cpu_snapshot(tmp_path))
    tick = bench.CLOCK_TICKS
    assert used == {"ray::ProxyActor": pytest.approx(100 / tick), "nginx": pytest.approx(10 / tick)}
    phases = [bench.Phase("stack", 16, 1.0, [bench.Sample(ok=True, tokens=500)], cpu_s={"ray::ProxyActor": 0.5}),
              bench.Phase("stack", 16, 1.0, [bench.Sample(ok=True, tokens=500)], cpu_s={"ray::ProxyActor": 0.5, "x": 0.1})]
    cpu = bench.cpu_per_token(phases, 16)
    assert cpu["ray::ProxyActor"] == {"stack": pytest.approx(1.0)} and cpu["total"] == {"stack": pytest.approx(1.1)}
    assert "| ray::ProxyActor | 1.00 |" in bench.cpu_table(cpu)


@pytest.mark.parametrize("argv,message", [
    (["--cycles", "0"], "--cycles must be at least 1"),
    (["--modes", "vllm,nope"], "--modes takes"),
    (["--max-tokens", "1"], "at least 2"),
    (["--stack-env", "NOVALUE"], "NAME=VALUE"),
    (["--concurrency", "8"], "only applies with --url"),
    (["--lever", "X"], "--lever takes NAME=VALUE"),
    (["--url", "http://127.0.0.1:1/v1", "--lever", "A=1"], "does not go with --url"),
])
def test_bad_arguments_are_refused(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        bench.parse_args(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
