#!/usr/bin/env python3
"""Container healthcheck: healthy only once the model actually answers.

Ray Serve's /v1/models answers from configuration while the engine is still
loading, so this asks for one token instead. Standard library only; exits 0
when a completion comes back, 1 otherwise (with the reason on stderr).
`healthcheck.py --raylet` is the worker-node check: a raylet is running.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request

TIMEOUT_S = 20.0


def probe(port: str, timeout: float = TIMEOUT_S) -> str | None:
    """Return None when healthy, else a one-line reason."""
    body = json.dumps({"prompt": "ping", "max_tokens": 1}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/completions",
        data=body,
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            payload = json.load(response)
    except urllib.error.HTTPError as err:
        return f"HTTP {err.code} from Ray Serve"
    except (OSError, ValueError) as err:
        return f"no answer from Ray Serve: {err}"
    if not payload.get("choices"):
        return "answer without choices"
    return None


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
