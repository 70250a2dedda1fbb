"""The middlewares of Ray Serve's HTTP proxy, in the order Ray applies them.

Ray's proxy imports the callable named by RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH
(deploy.py and ray-node.sh set it to ``PROXY_CALLBACK``) and wraps its app in
what it returns. Each middleware lives in its own module; this one only puts
them together, so none of them imports another's module. Nothing here
imports Ray.
"""

from __future__ import annotations

from typing import Any

# The import path Ray's HTTP proxy calls for extra middlewares.
PROXY_CALLBACK_VAR = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
PROXY_CALLBACK = "proxy_middlewares.proxy_middlewares"


def proxy_middlewares() -> list[Any]:
    """RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH target: the proxy's extra
    middlewares. Ray wraps them in list order (ray.serve._private.http_util.
    _apply_middlewares: each wraps the app built so far), so the LAST is the
    outermost. Outermost first: the readiness probe (answers in OpenAI's
    shape itself), the per-key usage counters (key_usage: they see what
    clients get), the OpenAI error shape, and innermost the request bounds
    (REQUEST_MAX_N, REQUEST_MAX_TOKENS), whose 400s pass through the error
    shape like any other answer."""
    from starlette.middleware import Middleware

    from key_usage import KeyUsageMiddleware
    from openai_errors import OpenAIErrorMiddleware
    from readiness import ReadinessMiddleware
    from request_bounds import RequestBoundsMiddleware

    return [Middleware(RequestBoundsMiddleware), Middleware(OpenAIErrorMiddleware), Middleware(KeyUsageMiddleware),
            Middleware(ReadinessMiddleware)]
