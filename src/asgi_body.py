"""Read an ASGI request body ahead of the app, and hand it on unchanged or
rewritten. Shared by the proxy middlewares that look into request bodies
(request_bounds, key_usage). Pure ASGI: nothing here imports Ray."""

from __future__ import annotations

from typing import Any, Awaitable, Callable, MutableMapping

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]


async def read_body(receive: Receive, limit: int | None = None) -> tuple[list[Message], bytes, bool]:
    """The messages read, the body they carry, and whether it is complete
    (False after a disconnect, or once it passed LIMIT bytes)."""
    messages: list[Message] = []
    body = b""
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            return messages, body, False
        body += message.get("body", b"")
        if not message.get("more_body", False):
            return messages, body, True
        if limit is not None and len(body) > limit:
            return messages, body, False


def replay(messages: list[Message], receive: Receive) -> Receive:
    """A receive that gives MESSAGES first, then the rest of RECEIVE's."""
    pending = iter(messages)

    async def replayed() -> Message:
        try:
            return next(pending)
        except StopIteration:
            return await receive()

    return replayed


def body_message(body: bytes) -> list[Message]:
    """A whole body as one request message (a rewritten body)."""
    return [{"type": "http.request", "body": body, "more_body": False}]
