"""scripts/bench.py: its own parsing and arithmetic, and its --url mode against
the session's real stack (a short run; the full side-by-side benchmark is
`scripts/bench.sh`, with results in docs/benchmarks.md)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from types import ModuleType

import pytest

from conftest import REPO_ROOT
from stack_support import API_KEY, MODEL, LocalStack


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


@pytest.mark.parametrize("argv,message", [
    (["--cycles", "0"], "--cycles must be at least 1"),
    (["--modes", "vllm,nope"], "--modes takes"),
    (["--max-tokens", "1"], "at least 2"),
    (["--stack-env", "NOVALUE"], "NAME=VALUE"),
    (["--concurrency", "8"], "only applies with --url"),
])
def test_bad_arguments_are_refused(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        bench.parse_args(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.e2e
def test_url_mode_against_the_local_stack(stack: LocalStack) -> None:
    """The same workload users run against their GPU box, here on the session's stack."""
    out = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "bench.sh"), "--url", stack.base_url + "/v1", "--api-key", API_KEY,
         "--concurrency", "3", "--c1-requests", "2", "--c16-requests", "3", "--max-tokens", "8", "--warmup", "1",
         "--prompt-words", "20"],
        text=True, capture_output=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    result = json.loads(lines[-1])
    assert "| --url | 1 |" in out.stdout and "| --url | 3 |" in out.stdout
    rows = {r["concurrency"]: r for r in result["rows"]}
    assert set(rows) == {1, 3} and rows[1]["requests"] == 2 and rows[3]["requests"] == 3
    for row in rows.values():
        assert row["errors"] == 0, out.stderr[-2000:]
        assert row["output_tok_s"] > 0 and row["ttft_p50_ms"] > 0 and row["itl_p50_ms"] > 0
    assert f"model '{MODEL}'" in out.stderr  # found through /v1/models
    # No bare vLLM in this mode, so no ratios.
    assert result["throughput_ratio_c16"] is None and result["settings"]["url"] == stack.base_url + "/v1"
    assert API_KEY not in out.stdout + out.stderr
