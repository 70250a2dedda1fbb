#!/usr/bin/env python3
"""Side-by-side serving benchmark: bare vLLM, Ray Serve LLM direct, and the
full stack through Nginx, on the same model, engine settings and machine.

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

Workload, the same for all: streaming chat, every prompt salted with a unique
prefix (vLLM's prefix cache would otherwise skip later prefills), a fixed
prompt length in words and a fixed output length (`ignore_eos`), concurrency
1 and 16 with fixed request counts, and warm-up requests before each phase
that are not counted. Figures per phase:
  TTFT   time from sending to the first content chunk;
  ITL    per request, (last chunk - first chunk) / (output tokens - 1): robust
         to servers that write several tokens per network chunk (Ray Serve LLM
         batches its stream every 50 ms by default);
  tok/s  output tokens of the phase / its wall time;
  ready  start to the first answered completion.
The last line printed is JSON (medians over cycles, and the ratios of (c) to
(a)). Nothing in the stack is set up for the benchmark: it gets the bench
model (random weights, `load_format: dummy`) through the documented
MODEL_SOURCE, SERVED_MODEL_NAME and ENGINE_KWARGS variables.
Bounded: every wait has a timeout and every phase a fixed request count.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent
RUNTIME_DIR = Path(os.environ.get("RUNTIME_DIR", REPO_ROOT / ".runtime"))
BENCH_MODEL_NAME = "bench-llama"
BENCH_API_KEY = "sk-bench-local"
READY_TIMEOUT_S = 900
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


# --- Measuring ---------------------------------------------------------------------

@dataclass
class Sample:
    """One streamed request."""

    ok: bool
    ttft_s: float | None = None
    itl_s: float | None = None
    tokens: int = 0
    error: str | None = None


@dataclass
class Phase:
    """One mode at one concurrency in one cycle."""

    mode: str
    concurrency: int
    wall_s: float
    samples: list[Sample] = field(default_factory=list)
    ready_s: float | None = None
    cpu_s: dict[str, float] = field(default_factory=dict)  # CPU seconds per process kind, this machine


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


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil(n * q / 100), at least 1
    return ordered[int(min(rank, len(ordered))) - 1]


def summarize(phase: Phase) -> dict[str, Any]:
    ok = [s for s in phase.samples if s.ok]
    ttft = [s.ttft_s * 1000 for s in ok if s.ttft_s is not None]
    itl = [s.itl_s * 1000 for s in ok if s.itl_s is not None]
    tokens = sum(s.tokens for s in ok)
    return {
        "mode": phase.mode, "concurrency": phase.concurrency, "requests": len(phase.samples),
        "errors": len(phase.samples) - len(ok),
        "ttft_p50_ms": percentile(ttft, 50), "ttft_p99_ms": percentile(ttft, 99),
        "itl_p50_ms": percentile(itl, 50), "itl_p99_ms": percentile(itl, 99),
        "output_tok_s": tokens / phase.wall_s if phase.wall_s > 0 else None,
        "ready_s": phase.ready_s,
    }


def parse_stream(events: Iterable[tuple[float, str]], started: float) -> Sample:
    """A Sample from (arrival time, SSE line) pairs of one chat completion stream."""
    first = last = None
    tokens = 0
    finished = False
    for arrived, line in events:
        if not line.startswith("data: "):
            continue
        data = line[6:].strip()
        if data == "[DONE]":
            finished = True
            continue
        try:
            chunk = json.loads(data)
        except ValueError:
            return Sample(ok=False, error=f"bad event: {data[:80]}")
        if "error" in chunk:
            return Sample(ok=False, error=str(chunk["error"].get("message", chunk["error"]))[:200])
        for choice in chunk.get("choices") or []:
            if (choice.get("delta") or {}).get("content"):
                first = arrived if first is None else first
                last = arrived
        usage = chunk.get("usage")
        if usage:
            tokens = int(usage.get("completion_tokens") or 0)
    if not finished or first is None or last is None:
        return Sample(ok=False, error="stream ended without [DONE] or content")
    itl = (last - first) / (tokens - 1) if tokens > 1 else None
    return Sample(ok=True, ttft_s=first - started, itl_s=itl, tokens=tokens)


def prompt(salt: str, words: int) -> str:
    body = " ".join(WORDS[i % len(WORDS)] for i in range(words - 1))
    return f"{salt} {body}"


async def one_request(client: httpx.AsyncClient, url: str, model: str, salt: str, prompt_words: int,
                      max_tokens: int) -> Sample:
    body = {"model": model, "stream": True, "max_tokens": max_tokens, "ignore_eos": True,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": prompt(salt, prompt_words)}]}
    started = time.monotonic()
    events: list[tuple[float, str]] = []
    try:
        async with client.stream("POST", url, json=body) as response:
            if response.status_code != 200:
                text = (await response.aread()).decode(errors="replace")
                return Sample(ok=False, error=f"HTTP {response.status_code}: {text[:200]}")
            async for line in response.aiter_lines():
                events.append((time.monotonic(), line))
    except httpx.HTTPError as err:
        return Sample(ok=False, error=f"{type(err).__name__}: {err}"[:200])
    return parse_stream(events, started)


async def run_phase_async(base_url: str, api_key: str, model: str, concurrency: int, requests: int,
                          prompt_words: int, max_tokens: int, salt: str, warmup: int) -> tuple[float, list[Sample], dict[str, float]]:
    url = base_url.rstrip("/") + "/chat/completions"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(max_connections=concurrency + 1, max_keepalive_connections=concurrency + 1)
    timeout = httpx.Timeout(600, connect=10)
    async with httpx.AsyncClient(headers=headers, limits=limits, timeout=timeout, trust_env=False) as client:
        for i in range(warmup):
            await one_request(client, url, model, f"warmup-{salt}-{i}", prompt_words, max_tokens)
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(requests):
            queue.put_nowait(i)
        samples: list[Sample] = []

        async def worker() -> None:
            while True:
                try:
                    i = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                samples.append(await one_request(client, url, model, f"{salt}-{i}", prompt_words, max_tokens))

        before = cpu_snapshot()
        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.monotonic() - started
        return wall, samples, cpu_delta(before, cpu_snapshot())


def run_phase(mode: str, base_url: str, api_key: str, model: str, concurrency: int, args: argparse.Namespace,
              salt: str, ready_s: float | None) -> Phase:
    requests = args.c1_requests if concurrency == 1 else args.c16_requests
    wall, samples, cpu = asyncio.run(run_phase_async(base_url, api_key, model, concurrency, requests,
                                                     args.prompt_words, args.max_tokens, salt, args.warmup))
    phase = Phase(mode, concurrency, wall, samples, ready_s, cpu)
    s = summarize(phase)
    log(f"{MODE_TITLES[mode]} c{concurrency}: {s['output_tok_s'] or 0:.0f} tok/s, TTFT p50 "
        f"{fmt(s['ttft_p50_ms'])} ms, ITL p50 {fmt(s['itl_p50_ms'])} ms, {s['errors']} errors")
    for sample in samples:
        if not sample.ok:
            log(f"  error: {sample.error}")
            break
    return phase


# --- Reporting ---------------------------------------------------------------------

def median_rows(phases: Sequence[Phase]) -> list[dict[str, Any]]:
    """One row per (mode, concurrency): each figure is the median over cycles."""
    rows = []
    keys = sorted({(p.mode, p.concurrency) for p in phases},
                  key=lambda k: (list(MODE_TITLES).index(k[0]), k[1]))
    for mode, concurrency in keys:
        runs = [summarize(p) for p in phases if (p.mode, p.concurrency) == (mode, concurrency)]
        row: dict[str, Any] = {"mode": mode, "concurrency": concurrency, "cycles": len(runs)}
        for name in ("ttft_p50_ms", "ttft_p99_ms", "itl_p50_ms", "itl_p99_ms", "output_tok_s", "ready_s"):
            values = [r[name] for r in runs if r[name] is not None]
            row[name] = statistics.median(values) if values else None
        row["errors"] = sum(r["errors"] for r in runs)
        row["requests"] = sum(r["requests"] for r in runs)
        rows.append(row)
    return rows


def ratios(rows: Sequence[dict[str, Any]], stack: str = "stack") -> dict[str, float | None]:
    """(c) (or (d), the stack with --lever) against (a): the figures the targets
    in docs/benchmarks.md are about."""
    def get(mode: str, concurrency: int, name: str) -> float | None:
        for row in rows:
            if (row["mode"], row["concurrency"]) == (mode, concurrency):
                return row[name]
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


def cpu_per_token(phases: Sequence[Phase], concurrency: int, top: int = 8) -> dict[str, dict[str, float]]:
    """kind -> {mode: CPU ms per output token} at one concurrency, over all cycles;
    the `top` kinds by their largest figure, the rest summed as "other"."""
    per_mode: dict[str, dict[str, float]] = {}
    for mode in dict.fromkeys(p.mode for p in phases if p.concurrency == concurrency):
        chosen = [p for p in phases if (p.mode, p.concurrency) == (mode, concurrency)]
        tokens = sum(s.tokens for p in chosen for s in p.samples if s.ok)
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
        name = kind if i < top else "other"
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
    print("\nTimes in ms (ITL: per output token); medians over cycles; errors are failed/all requests.")
    print(table(rows))
    high = max((p.concurrency for p in phases), default=16)
    cpu = cpu_per_token(phases, high)
    if cpu:
        print(f"\nCPU ms per output token at concurrency {high}, by process on this machine (all cycles):")
        print(cpu_table(cpu))
    result = {**ratios(rows), "cycles": max((r["cycles"] for r in rows), default=0), "settings": settings,
              "rows": rows, "cpu_ms_per_token": cpu}
    if any(r["mode"] == "lever" for r in rows):
        result["lever"] = ratios(rows, "lever")
        print("\n(d) is the stack with " + " ".join(settings.get("lever") or []) + "; against (a): "
              + ", ".join(f"{k} {v}" for k, v in result["lever"].items()))
    print(json.dumps(result, sort_keys=True))
    return result


# --- Starting and stopping servers -------------------------------------------------

def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] bench: {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def answers(base_url: str, api_key: str, model: str) -> bool:
    try:
        r = httpx.post(base_url + "/chat/completions", timeout=30, trust_env=False,
                       headers={"Authorization": f"Bearer {api_key}"} if api_key else {},
                       json={"model": model, "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]})
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


def stop_group(proc: subprocess.Popen[bytes], grace_s: float = 60) -> None:
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
        return [run_phase("vllm", base, "", BENCH_MODEL_NAME, c, args, f"v{cycle}c{c}", ready) for c in (1, 16)]
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
        if lever:
            return [run_phase("lever", f"http://127.0.0.1:{http_port}/v1", BENCH_API_KEY, BENCH_MODEL_NAME, c, args,
                              f"l{cycle}c{c}", ready) for c in (1, 16)]
        phases = [run_phase("ray", f"http://127.0.0.1:{api_port}/v1", "", BENCH_MODEL_NAME, c, args,
                            f"r{cycle}c{c}", ready) for c in (1, 16)]
        phases += [run_phase("stack", f"http://127.0.0.1:{http_port}/v1", BENCH_API_KEY, BENCH_MODEL_NAME, c, args,
                             f"s{cycle}c{c}", ready) for c in (1, 16)]
        return phases
    finally:
        subprocess.run(["bash", *script, "down"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       timeout=300, check=False)


# --- Entry point -------------------------------------------------------------------

def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="load this OpenAI base URL (ending in /v1) instead of starting servers")
    p.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY", ""), help="with --url (default: $OPENAI_API_KEY)")
    p.add_argument("--model", help="with --url: the served model name (default: the first of /v1/models)")
    p.add_argument("--cycles", type=int, default=1, help="repeat the whole cycle N times; medians are reported")
    p.add_argument("--modes", default=",".join(MODES), help="which of vllm,ray,stack to run (default: all)")
    p.add_argument("--c1-requests", type=int, default=8, help="requests at concurrency 1")
    p.add_argument("--c16-requests", type=int, default=48, help="requests at concurrency 16")
    p.add_argument("--concurrency", type=int, default=16,
                   help="with --url: the high concurrency (default 16; the side-by-side run always uses 16)")
    p.add_argument("--prompt-words", type=int, default=100)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--warmup", type=int, default=2, help="uncounted requests before each phase")
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--max-num-seqs", type=int, default=32)
    p.add_argument("--kv-cache-gib", type=int, default=1)
    p.add_argument("--stack-env", action="append", default=[], metavar="NAME=VALUE",
                   help="a setting for the stack (as in .env), e.g. to measure a lever; repeatable")
    p.add_argument("--lever", action="append", default=[], metavar="NAME=VALUE",
                   help="also run (d): the stack with this setting, in the same cycles, to measure a lever "
                        "side by side with the defaults; repeatable (one lever of several settings)")
    p.add_argument("--python", default=sys.executable, help="the venv's python (vLLM, Ray)")
    args = p.parse_args(argv)
    for name in ("cycles", "c1_requests", "c16_requests", "concurrency", "prompt_words", "max_tokens"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.max_tokens < 2:
        p.error("--max-tokens must be at least 2 (ITL needs two tokens)")
    if args.concurrency != 16 and not args.url:
        p.error("--concurrency only applies with --url (the side-by-side run uses 1 and 16)")
    modes = [m for m in args.modes.split(",") if m]
    if not modes or set(modes) - set(MODES):
        p.error(f"--modes takes a comma-separated subset of {','.join(MODES)}")
    args.modes = modes
    for flag, items in (("--stack-env", args.stack_env), ("--lever", args.lever)):
        for item in items:
            if "=" not in item:
                p.error(f"{flag} takes NAME=VALUE, got {item!r}")
    if args.lever and args.url:
        p.error("--lever starts stacks, so it does not go with --url")
    return args


def url_mode(args: argparse.Namespace) -> list[Phase]:
    base = args.url.rstrip("/")
    model = args.model
    if not model:
        r = httpx.get(base + "/models", headers={"Authorization": f"Bearer {args.api_key}"}, timeout=30,
                      trust_env=False)
        r.raise_for_status()
        model = r.json()["data"][0]["id"]
    log(f"loading {base} (model {model!r})")
    return [run_phase("url", base, args.api_key, model, c, args, f"u{time.time_ns()}c{c}", None)
            for c in (1, args.concurrency)]


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    settings = {k: v for k, v in vars(args).items() if k not in ("api_key", "python")}
    if args.url:
        report(url_mode(args), settings)
        return 0
    workdir = RUNTIME_DIR / "bench"
    workdir.mkdir(parents=True, exist_ok=True)
    model_dir = make_bench_model(args.python)
    settings["model_shape"] = BENCH_MODEL_SHAPE
    phases: list[Phase] = []
    for cycle in range(1, args.cycles + 1):
        if "vllm" in args.modes:
            phases += bare_vllm_cycle(args, model_dir, cycle, workdir)
        if {"ray", "stack"} & set(args.modes):
            phases += [p for p in stack_cycle(args, model_dir, cycle, workdir) if p.mode in args.modes]
        if args.lever:
            phases += stack_cycle(args, model_dir, cycle, workdir, args.lever)
    (workdir / "phases.json").write_text(json.dumps([asdict(p) for p in phases], indent=1))
    report(phases, settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
