"""scripts/bench.sh --url against the shared local stack: the same workload
users run against their GPU box, as a short run of vLLM's client."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from support import REPO_ROOT, TINY_MODEL_DIR
from support.local_stack import API_KEY, MODEL, LocalStack

pytestmark = [pytest.mark.e2e]


def test_url_mode_against_the_local_stack(stack: LocalStack) -> None:
    """The same workload users run against their GPU box, here on the session's stack."""
    out = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "bench.sh"), "--url", stack.base_url + "/v1", "--api-key", API_KEY,
         "--concurrency", "1,3", "--requests", "2,3", "--max-tokens", "8", "--warmup", "1", "--prompt-words", "20",
         "--tokenizer", str(TINY_MODEL_DIR)],  # Ray Serve's /v1/models names no local path: no hub here
        text=True, capture_output=True, timeout=300, check=False, env={**os.environ, "HF_HUB_OFFLINE": "1"})
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
    # vLLM's client measured it (its result files), and its CPU is accounted.
    phases = Path(os.environ.get("RUNTIME_DIR", REPO_ROOT / ".runtime")) / "bench" / "phases"
    results = [json.loads(p.read_text()) for p in phases.glob("*.json")]
    assert sorted((r["max_concurrency"], r["completed"], r["total_output_tokens"]) for r in results) == [
        (1, 2, 16), (3, 3, 24)]
    assert "vllm-bench-serve" in result["cpu_ms_per_token"]
    # No bare vLLM in this mode, so no ratios.
    assert result["throughput_ratio_c16"] is None and result["settings"]["url"] == stack.base_url + "/v1"
    assert API_KEY not in out.stdout + out.stderr
    assert all(API_KEY not in p.read_text() for p in phases.iterdir())
