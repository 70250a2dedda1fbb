"""A real Prometheus (Debian's) with the configuration Compose renders,
pointed at the shared local CPU stack (Ray's metrics port, and Nginx through
Debian's prometheus-nginx-exporter): vLLM's token counters grow after a
completion, and every query of the provisioned dashboards names a series the
stack really exports (or one listed as not exported here)."""

from __future__ import annotations

from typing import Iterator

import httpx
import openai
import pytest

from support.local_stack import MODEL, LocalStack
from support.monitoring import (
    NOT_EXPORTED_HERE,
    ONLY_AFTER_AN_EVENT,
    Prometheus,
    dashboard_queries,
    dashboards,
    fill_variables,
    metric_names,
)

pytestmark = [pytest.mark.e2e]


@pytest.fixture(scope="module")
def prometheus(stack: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    stack.ensure_up()
    prom = Prometheus(tmp_path_factory.mktemp("prometheus"), ray_targets=f"127.0.0.1:{stack.metrics_port}")
    try:
        prom.start(status_port=stack.status_port)
        prom.wait("every scrape target up", prom.targets_up)
        yield prom
    finally:
        prom.stop()


def completion(stack: LocalStack, max_tokens: int) -> int:
    client = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=stack.api_key, max_retries=0, timeout=120)
    done = client.completions.create(model=MODEL, prompt="Count to ten:", max_tokens=max_tokens,
                                     extra_body={"ignore_eos": True})
    assert done.usage is not None
    return done.usage.completion_tokens


def test_prometheus_sees_vllm_tokens_grow_after_a_completion(stack: LocalStack, prometheus: Prometheus) -> None:
    query = "sum(ray_vllm_generation_tokens_total)"
    before = prometheus.wait("vLLM's token counter in Prometheus",
                             lambda: prometheus.api("query", query=query)["result"] and [prometheus.value(query)])[0]
    tokens = completion(stack, 12)
    assert tokens == 12
    prometheus.wait(f"{query} to grow by {tokens} from {before}",
                    lambda: prometheus.value(query) >= before + tokens)
    # Nginx's own counters arrive through the exporter.
    assert prometheus.value('sum(nginx_connections_accepted{job="nginx"})') >= 1
    assert prometheus.value('max(up{job="ray"})') == 1


def test_every_dashboard_query_names_a_scraped_metric(stack: LocalStack, prometheus: Prometheus) -> None:
    # One request of each kind the dashboards chart, so their series exist.
    completion(stack, 4)
    httpx.get(f"{stack.base_url}/v1/models", headers={"Authorization": f"Bearer {stack.api_key}"}, timeout=30)
    # A stream: the per-key time to first token (ray_llm_keys_dashboard.json).
    client = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=stack.api_key, max_retries=0, timeout=120)
    assert list(client.completions.create(model=MODEL, prompt="hi", max_tokens=4, stream=True))
    needed = {name for d in dashboards().values() for q in dashboard_queries(d) for name in metric_names(q)}

    def scraped() -> set[str]:
        names = set(prometheus.api("label/__name__/values"))
        return names if not (needed - names - set(NOT_EXPORTED_HERE) - set(ONLY_AFTER_AN_EVENT)) else set()

    try:
        names = prometheus.wait("every dashboard metric in the scrape", scraped, timeout=60)
    except AssertionError:
        names = set(prometheus.api("label/__name__/values"))
    missing = needed - names - set(ONLY_AFTER_AN_EVENT)
    assert missing <= set(NOT_EXPORTED_HERE), f"dashboard metrics the stack does not export: {sorted(missing)}"
    assert set(NOT_EXPORTED_HERE) <= needed, "no dashboard uses: " + ", ".join(sorted(set(NOT_EXPORTED_HERE) - needed))
    assert not (set(NOT_EXPORTED_HERE) & names), "exported now, drop from NOT_EXPORTED_HERE: " + \
        ", ".join(sorted(set(NOT_EXPORTED_HERE) & names))
    # Every query is valid PromQL for Prometheus (Grafana's variables filled in).
    for dashboard in dashboards().values():
        for query in dashboard_queries(dashboard):
            if query.startswith("label_values("):
                continue
            prometheus.api("query", query=fill_variables(query))
