"""scripts/bench.py: its own parsing, arithmetic and the command it gives vLLM's
client. Its --url mode against a real stack is
tests/integration/local/test_bench_url.py; the full side-by-side benchmark is
`scripts/bench.sh`, with results in docs/benchmarks.md."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

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
DATA = Path(__file__).parent / "data"
# The keys of the final JSON line (and of each of its rows), as before the
# benchmark moved to vLLM's client: the docs and users' scripts read them.
RESULT_KEYS = {"throughput_ratio_c16", "throughput_ratio_c1", "ttft_overhead_ms_c1_p50", "itl_overhead_pct_c1_p50",
               "ready_ratio", "ray_direct_throughput_ratio_c16", "cycles", "settings", "rows", "cpu_ms_per_token"}
ROW_KEYS = {"mode", "concurrency", "cycles", "ttft_p50_ms", "ttft_p99_ms", "itl_p50_ms", "itl_p99_ms", "output_tok_s",
            "ready_s", "errors", "requests"}


def test_phase_from_a_real_vllm_result() -> None:
    """A file written by `vllm bench serve --save-result` (bare vLLM, c16, 16 requests of 64 tokens)."""
    result = json.loads((DATA / "vllm-bench-serve-result.json").read_text())
    phase = bench.phase_from_result("vllm", 16, result, ready_s=55.6, cpu_s={"VLLM::Worker": 1.0})
    assert (phase.requests, phase.errors, phase.output_tokens) == (16, 0, 1024)
    assert phase.ttft_p50_ms == pytest.approx(727.615, abs=1e-3) and phase.ttft_p99_ms == pytest.approx(1074.529, abs=1e-3)
    # ITL is vLLM's TPOT (per request), not its per-chunk ITL (which has p99 297 ms here).
    assert phase.itl_p50_ms == pytest.approx(27.597, abs=1e-3) and phase.itl_p99_ms == pytest.approx(35.570, abs=1e-3)
    assert phase.output_tok_s == pytest.approx(410.09, abs=1e-2)
    assert phase.ready_s == 55.6 and phase.cpu_s == {"VLLM::Worker": 1.0}


def test_phase_from_a_failed_vllm_run() -> None:
    """Every request failed (a wrong model name, real file): vLLM writes zeros, we write no figures."""
    phase = bench.phase_from_result("url", 4, json.loads((DATA / "vllm-bench-serve-failed.json").read_text()))
    assert (phase.requests, phase.errors, phase.output_tokens) == (3, 3, 0)
    assert all(getattr(phase, name) is None for name in bench.FIGURES)


def test_client_command_is_vllm_bench_serve() -> None:
    cmd = bench.client_command("/venv/bin/python", "http://127.0.0.1:8000", "m", "/models/m", Path("/w/s.jsonl"),
                               16, 48, 128, Path("/w/s.json"))
    assert cmd[:2] == ["/venv/bin/python", "-c"]
    for flag, value in {"--backend": "openai-chat", "--base-url": "http://127.0.0.1:8000",
                        "--endpoint": "/v1/chat/completions", "--max-concurrency": "16", "--num-prompts": "48",
                        "--custom-output-len": "128", "--dataset-name": "custom", "--dataset-path": "/w/s.jsonl",
                        "--tokenizer": "/models/m", "--result-dir": "/w", "--result-filename": "s.json"}.items():
        assert cmd[cmd.index(flag) + 1] == value, flag
    assert {"--ignore-eos", "--save-result", "--skip-chat-template"} <= set(cmd)
    # The pinned vLLM's own parser takes every option (it would exit 2 on an unknown one).
    from vllm.benchmarks.serve import add_cli_args
    parser = argparse.ArgumentParser()
    add_cli_args(parser)
    args = parser.parse_args(cmd[3:])
    assert args.ignore_eos and args.max_concurrency == 16 and args.num_prompts == 48 and args.custom_output_len == 128
    assert args.metric_percentiles == "50,99" and "tpot" in args.percentile_metrics


def test_run_client_accounts_cpu_between_its_marks(tmp_path: Path) -> None:
    marks = "; ".join(f"print({m!r})" for m in bench.CLIENT_MARKS)
    cpu = bench.run_client([sys.executable, "-c", f"print('start'); {marks}"], {}, tmp_path / "client.log")
    assert isinstance(cpu, dict) and "start" in (tmp_path / "client.log").read_text()
    with pytest.raises(RuntimeError, match="exited with 3"):
        bench.run_client([sys.executable, "-c", f"{marks}; raise SystemExit(3)"], {}, tmp_path / "client.log")
    with pytest.raises(RuntimeError, match="exited with 0"):  # no result banner: no measured run
        bench.run_client([sys.executable, "-c", "print('usage')"], {}, tmp_path / "client.log")


def phase(mode: str, concurrency: int, tok_s: float, ttft_ms: float, itl_ms: float, ready: float,
          errors: int = 0) -> Any:
    return bench.Phase(mode, concurrency, requests=4 + errors, errors=errors, ttft_p50_ms=ttft_ms,
                       ttft_p99_ms=ttft_ms * 2, itl_p50_ms=itl_ms, itl_p99_ms=itl_ms * 2, output_tok_s=tok_s,
                       output_tokens=400, ready_s=ready)


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
    (["vllm-bench-serve"], "vllm-bench-serve"),  # vLLM's client, titled by CLIENT_CODE
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
    phases = [phase("stack", 16, 100, 1, 1, 1), phase("stack", 16, 100, 1, 1, 1)]
    phases[0].cpu_s, phases[1].cpu_s = {"ray::ProxyActor": 0.4}, {"ray::ProxyActor": 0.4, "x": 0.08}
    cpu = bench.cpu_per_token(phases, 16)
    assert cpu["ray::ProxyActor"] == {"stack": pytest.approx(1.0)} and cpu["total"] == {"stack": pytest.approx(1.1)}
    assert bench.cpu_per_token(phases, 1) == {}  # no phase at that concurrency
    assert "| ray::ProxyActor | 1.00 |" in bench.cpu_table(cpu)


@pytest.mark.parametrize("argv,message", [
    (["--cycles", "0"], "--cycles must be at least 1"),
    (["--modes", "vllm,nope"], "--modes takes"),
    (["--max-tokens", "1"], "at least 2"),
    (["--stack-env", "NOVALUE"], "NAME=VALUE"),
    (["--concurrency", "1,16"], "as many positive counts"),  # three request counts by default
    (["--concurrency", "1,0", "--requests", "4,4"], "as many positive counts"),
    (["--concurrency", "1,x"], "invalid counts value"),
    (["--url", "http://127.0.0.1:1"], "ending in /v1"),
    (["--lever", "X"], "--lever takes NAME=VALUE"),
    (["--url", "http://127.0.0.1:1/v1", "--lever", "A=1"], "does not go with --url"),
])
def test_bad_arguments_are_refused(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        bench.parse_args(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_defaults_cycle_through_1_16_and_64() -> None:
    args = bench.parse_args([])
    assert args.concurrency == [1, 16, 64] and args.requests == [8, 48, 128] and args.modes == list(bench.MODES)
    assert args.max_num_seqs >= 64  # the engine admits every request of the c64 phase at once
    args = bench.parse_args(["--url", "http://h/v1", "--concurrency", "2", "--requests", "3"])
    assert (args.concurrency, args.requests) == ([2], [3])


def test_final_json_line_keeps_its_keys(capsys: pytest.CaptureFixture[str]) -> None:
    phases = [phase(mode, c, 100, 50, 10, 60) for mode in ("vllm", "ray", "stack") for c in (1, 16, 64)]
    for p in phases:
        p.cpu_s = {"VLLM::EngineCore": 1.0}
    bench.report(phases, {"cycles": 1})
    out = capsys.readouterr().out
    result = json.loads(out.strip().splitlines()[-1])
    assert set(result) == RESULT_KEYS
    assert [(r["mode"], r["concurrency"]) for r in result["rows"]] == [(p.mode, p.concurrency) for p in phases]
    assert all(set(row) == ROW_KEYS for row in result["rows"])
    assert "CPU ms per output token at concurrency 64" in out and "| (c) stack via Nginx | 64 |" in out
    lever = [phase("vllm", 1, 100, 50, 10, 60), phase("lever", 1, 90, 60, 11, 70)]
    bench.report(lever, {"lever": ["A=1"]})
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(result) == RESULT_KEYS | {"lever"} and result["lever"]["throughput_ratio_c1"] == pytest.approx(0.9)


def test_shared_prefix_workload_shares_only_its_preamble() -> None:
    """--shared-prefix-words: the same preamble first, then what makes each prompt unique."""
    a, b = bench.prompt("s1-0", 20, shared_words=50), bench.prompt("s1-1", 20, shared_words=50)
    preamble = a.split(" s1-0 ")[0]
    assert len(preamble.split()) == 50 and b.startswith(preamble + " s1-1 ")
    assert bench.prompt("s1-0", 20) == a.split(preamble + " ", 1)[1]
    with pytest.raises(SystemExit):
        bench.parse_args(["--shared-prefix-words", "-1"])


def test_py_spy_summary_shares_self_time_by_library_and_function(tmp_path: Path) -> None:
    """tools/py-spy-summary.py (docs/benchmarks.md's per-process profiles) on
    py-spy's raw format: the innermost frame's library and function."""
    spec = importlib.util.spec_from_file_location("py_spy_summary", REPO_ROOT / "tools" / "py-spy-summary.py")
    assert spec is not None and spec.loader is not None
    summary = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(summary)
    site = "/opt/venv/lib/python3.11/site-packages"
    lines = [f"main (/app/src/deploy.py:9);send ({site}/grpc/aio/_call.py:50) 30",
             f"main (/app/src/deploy.py:9);_run ({site}/ray/serve/_private/replica.py:7) 10",
             "select (/usr/lib/python3.11/selectors.py:468) 5",
             "run (/app/src/first_chunk.py:60) 5",
             "send (uvicorn/protocols/http/httptools_impl.py:1);notify (threading.py:3) 7",
             "a line py-spy never writes"]
    total, libraries, functions = summary.summarize(lines)
    assert total == 57
    assert libraries == {"grpc": 30, "ray": 10, "stdlib:selectors": 5, "src/first_chunk": 5, "threading": 7}
    assert functions.most_common(1) == [("send (grpc)", 30)]


def test_the_load_client_keeps_its_own_cpu_row() -> None:
    """A short --url run once lumped the client into "other" behind eight
    busier processes (the suite's bench --url test failed on it)."""
    p = phase("url", 1, 10, 100, 10, 0)
    p.cpu_s = {f"daemon-{i}": 1.0 for i in range(9)} | {bench.CLIENT_KIND: 0.01}
    cpu = bench.cpu_per_token([p], 1)
    assert bench.CLIENT_KIND in cpu and cpu["other"]["url"] == 2.5
