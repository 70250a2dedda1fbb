#!/usr/bin/env python3
"""Container healthcheck: healthy only once the model actually answers.

Ray Serve's /v1/models answers from configuration while the engine is still
loading, so this asks for one token instead, from every served model: the
probe carries READY_HEADER, which src/readiness.py (in Ray Serve's proxy)
answers once each model gave a 1-token completion. With direct streaming
(one model, no proxy middleware) the same request is that model's
completion. Standard library only; exits 0 when the answer says ready or
holds a completion, 1 otherwise (with the reason on stderr).
`healthcheck.py --raylet` is the worker-node check: a raylet is running.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request

TIMEOUT_S = 20.0
# readiness.READY_HEADER (this file imports nothing of the project's).
READY_HEADER = "X-Ray-LLM-Ready"


def probe(port: str, timeout: float = TIMEOUT_S) -> str | None:
    """Return None when healthy, else a one-line reason."""
    body = json.dumps({"prompt": "ping", "max_tokens": 1}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/completions",
        data=body,
        headers={"Content-Type": "application/json", READY_HEADER: "all"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            payload = json.load(response)
    except urllib.error.HTTPError as err:
        return f"HTTP {err.code} from Ray Serve: {error_message(err)}"
    except (OSError, ValueError) as err:
        return f"no answer from Ray Serve: {err}"
    if payload.get("status") != "ready" and not payload.get("choices"):
        return "answer neither ready nor a completion"
    return None


def error_message(err: urllib.error.HTTPError) -> str:
    """The message of an OpenAI-shaped error answer (which models are not ready)."""
    try:
        return str(json.load(err)["error"]["message"])
    except (OSError, ValueError, KeyError, TypeError):
        return "no details"


def raylet_running(proc: str = "/proc") -> str | None:
    """Worker nodes: healthy while this container's raylet process runs."""
    for entry in os.listdir(proc):
        if entry.isdigit():
            try:
                with open(os.path.join(proc, entry, "comm")) as handle:
                    if handle.read().strip() == "raylet":
                        return None
            except OSError:
                continue
    return "no raylet process: this node is not part of a Ray cluster"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args == ["--raylet"]:
        reason = raylet_running()
    else:
        reason = probe(os.environ.get("RAY_API_PORT", "8000"))
    if reason:
        print(f"unhealthy: {reason}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
