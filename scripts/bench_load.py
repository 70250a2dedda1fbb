#!/usr/bin/env python3
"""Load benchmark: N concurrent streaming clients for a fixed time through Nginx.

    python scripts/bench_load.py --base-url http://127.0.0.1:8080 --api-key KEY \
        --clients 64 --duration 60 --stack-dir .runtime/local-stack

Each client opens a streaming chat completion, reads it to the end, and starts
the next one until the time is up (no new stream after that; running ones
finish). Prints JSON figures: streams, HTTP status counts, errors, time to
first token and stream duration percentiles, and the resident memory of the
Nginx and Ray Serve process trees (from their PID files) before, right after,
and 30 s after the load. Bounded: it stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx


def session_rss_mib(pid_file: Path) -> float | None:
    """Resident memory (MiB) of every process in the session led by the PID in pid_file."""
    if not pid_file.exists():
        return None
    sid = pid_file.read_text().strip()
    pids = subprocess.run(["pgrep", "-s", sid], text=True, capture_output=True, check=False).stdout.split()
    total_kib = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kib += int(line.split()[1])
        except OSError:
            continue
    return round(total_kib / 1024, 1)


def memory(stack_dir: Path | None) -> dict[str, float | None]:
    if stack_dir is None:
        return {}
    return {name: session_rss_mib(stack_dir / f"{name}.pid") for name in ("nginx", "serve")}


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)


async def client_loop(client: httpx.AsyncClient, url: str, body: dict[str, Any], stop_at: float,
                      stats: dict[str, Any]) -> None:
    while time.monotonic() < stop_at:
        stats["streams_started"] += 1
        start = time.monotonic()
        first: float | None = None
        done = False
        try:
            async with client.stream("POST", url, json=body) as response:
                stats["status"][response.status_code] += 1
                if response.status_code != 200:
                    await response.aread()
                    continue
                async for line in response.aiter_lines():
                    if line.startswith("data: ") and first is None and '"content"' in line:
                        first = time.monotonic() - start
                    if line.strip() == "data: [DONE]":
                        done = True
        except httpx.HTTPError as err:
            stats["errors"] += 1
            stats["error_kinds"][type(err).__name__] += 1
            continue
        if done:
            stats["streams_completed"] += 1
            stats["durations"].append(time.monotonic() - start)
            if first is not None:
                stats["ttft"].append(first)
        else:
            stats["streams_incomplete"] += 1


async def run_async(base_url: str, api_key: str, model: str, clients: int, duration_s: float,
                    max_tokens: int) -> dict[str, Any]:
    stats: dict[str, Any] = {"streams_started": 0, "streams_completed": 0, "streams_incomplete": 0, "errors": 0,
                             "status": Counter(), "error_kinds": Counter(), "ttft": [], "durations": []}
    body = {"model": model, "messages": [{"role": "user", "content": "Write a short story."}],
            "max_tokens": max_tokens, "stream": True, "ignore_eos": True}
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    started = time.monotonic()
    async with httpx.AsyncClient(headers=headers, timeout=httpx.Timeout(120), limits=limits) as client:
        stop_at = started + duration_s
        await asyncio.wait_for(
            asyncio.gather(*(client_loop(client, base_url + "/v1/chat/completions", body, stop_at, stats)
                             for _ in range(clients))),
            timeout=duration_s + 180)
    elapsed = time.monotonic() - started
    status = dict(stats.pop("status"))
    ttft, durations = stats.pop("ttft"), stats.pop("durations")
    return {
        **stats,
        "error_kinds": dict(stats["error_kinds"]),
        "clients": clients,
        "duration_s": round(elapsed, 1),
        "max_tokens": max_tokens,
        "status_counts": {str(k): v for k, v in status.items()},
        "http_5xx": sum(v for k, v in status.items() if k >= 500),
        "streams_per_s": round(stats["streams_completed"] / elapsed, 2),
        "tokens_per_s": round(stats["streams_completed"] * max_tokens / elapsed, 1),
        "ttft_s": {"p50": percentile(ttft, 0.5), "p90": percentile(ttft, 0.9), "p99": percentile(ttft, 0.99)},
        "stream_s": {"p50": percentile(durations, 0.5), "p90": percentile(durations, 0.9),
                     "max": round(max(durations), 3) if durations else None,
                     "mean": round(statistics.fmean(durations), 3) if durations else None},
    }


def run_load(base_url: str, api_key: str, model: str, clients: int = 64, duration_s: float = 60,
             max_tokens: int = 64, stack_dir: Path | None = None, settle_s: float = 30) -> dict[str, Any]:
    before = memory(stack_dir)
    result = asyncio.run(run_async(base_url, api_key, model, clients, duration_s, max_tokens))
    right_after = memory(stack_dir)
    deadline = time.monotonic() + settle_s
    while time.monotonic() < deadline:  # let buffers and connections close
        time.sleep(1)
    result["rss_mib"] = {"before": before, "right_after": right_after, "after_settle": memory(stack_dir)}
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", required=True, help="Nginx base URL, e.g. http://127.0.0.1:8080")
    parser.add_argument("--api-key", default="", help="OPENAI_API_KEY of the stack")
    parser.add_argument("--model", default="tiny-llama")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--stack-dir", type=Path, default=None, help="local-stack folder with serve.pid/nginx.pid")
    args = parser.parse_args()
    result = run_load(args.base_url, args.api_key, args.model, args.clients, args.duration, args.max_tokens,
                      args.stack_dir)
    print(json.dumps(result, indent=2))
    return 0 if result["http_5xx"] == 0 and result["errors"] == 0 and result["streams_incomplete"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
