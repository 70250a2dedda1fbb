#!/usr/bin/env python3
"""Container healthcheck: healthy only once the model actually answers.

Ray Serve's /v1/models answers from configuration while the engine is still
loading, so this asks for one token instead. Standard library only; exits 0
when a completion comes back, 1 otherwise (with the reason on stderr).
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


def main() -> int:
    reason = probe(os.environ.get("RAY_API_PORT", "8000"))
    if reason:
        print(f"unhealthy: {reason}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
