"""REQUEST_ROUTER on the real CPU engine: two replicas of the tiny model, once
with Ray's default router and once with the prefix-cache router.

Which replica served each request is read from Ray's own metrics
(`ray_serve_deployment_request_counter_total`, one series per replica, on
RAY_METRICS_PORT), never from this project's code. Requests sharing a long
prompt prefix land on one replica under prefix-cache; under pow2 they spread.
Own folder: each start runs two engines, so no other stack may run beside it.
"""

from __future__ import annotations

import os
import re
import time
from typing import Iterator

import httpx
import pytest

from support import REPO_ROOT
from support.compose_stack import wait_for
from support.local_stack import (API_KEY, DASH_PASSWORD, DASH_USER, MODEL, LocalStack, auth, running,
                                 shared_stack_env)

pytestmark = [pytest.mark.e2e]

REQUESTS = 16
# About 1500 characters every request shares: a system prompt, as chat apps send.
SYSTEM = "You are the help desk of a shared GPU box. " * 35
COUNTER = re.compile(r'^ray_serve_deployment_request_counter_total\{(?P<labels>[^}]*)\} (?P<value>\S+)$', re.M)


def replica_counts(stack: LocalStack) -> dict[str, float]:
    """Requests per model-server replica, as Ray exports them."""
    text = httpx.get(f"http://127.0.0.1:{stack.metrics_port}/metrics", timeout=30).text
    counts: dict[str, float] = {}
    for match in COUNTER.finditer(text):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match["labels"]))
        if "LLMServer" in labels.get("deployment", ""):  # WatchedLLMServer:MODEL, not the ingress
            replica = labels["replica"]
            counts[replica] = counts.get(replica, 0.0) + float(match["value"])
    return counts


def send_shared_prefix_requests(stack: LocalStack) -> dict[str, float]:
    """REQUESTS chats with one long system prompt; Ray's per-replica deltas."""
    before = replica_counts(stack)
    for i in range(REQUESTS):
        body = {"model": MODEL, "max_tokens": 2, "messages": [
            {"role": "system", "content": SYSTEM}, {"role": "user", "content": f"Question number {i}"}]}
        r = httpx.post(f"{stack.base_url}/v1/chat/completions", json=body, timeout=120, headers=auth())
        assert r.status_code == 200, r.text
    deadline = time.monotonic() + 90  # Ray exports metrics every few seconds
    while True:
        after = replica_counts(stack)
        delta = {k: after[k] - before.get(k, 0.0) for k in after}
        if sum(delta.values()) >= REQUESTS or time.monotonic() > deadline:
            return delta
        time.sleep(2)


def running_replicas(stack: LocalStack) -> int:
    """Model-server replicas Ray Serve reports RUNNING (its REST API, through Nginx)."""
    r = httpx.get(stack.base_url + "/dashboard/api/serve/applications/", auth=(DASH_USER, DASH_PASSWORD), timeout=30)
    assert r.status_code == 200, r.text
    deployments = r.json()["applications"]["llm"]["deployments"]
    return sum(replica["state"] == "RUNNING" for name, deployment in deployments.items()
               if "LLMServer" in name for replica in deployment["replicas"])


@pytest.fixture(params=["pow2", "prefix-cache"])
def two_replicas(request: pytest.FixtureRequest) -> Iterator[LocalStack]:
    stack_dir = REPO_ROOT / ".runtime" / f"test-routing-{os.getpid()}"
    env = {**shared_stack_env(), "MIN_REPLICAS": "2", "MAX_REPLICAS": "2", "REQUEST_ROUTER": request.param}
    with running(LocalStack(stack_dir, api_key=API_KEY, extra_env=env), request) as stack:
        # Ready means every model answers, which one replica does: the second
        # may still be starting (the test once passed only because each start
        # was slower). Both must serve before the routers can be compared.
        wait_for("both model replicas RUNNING", lambda: running_replicas(stack) >= 2, timeout=300)
        yield stack


def test_requests_sharing_a_prefix_follow_the_router(two_replicas: LocalStack) -> None:
    router = two_replicas.extra_env["REQUEST_ROUTER"]
    delta = send_shared_prefix_requests(two_replicas)
    served = sorted(delta.values(), reverse=True)
    print(f"\n{router}: requests per replica (Ray's counter) {served}")
    assert len(delta) == 2 and sum(served) >= REQUESTS, delta
    if router == "prefix-cache":
        # The first request may go to the emptier replica; every later one
        # follows the cached prefix.
        assert served[0] >= REQUESTS - 1, delta
    else:
        assert served[1] >= 1, delta  # both replicas served (all 16 on one: p = 2^-15)
