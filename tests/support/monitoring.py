"""A real Prometheus (Debian's) and nginx exporter, run with the configuration
Compose renders, on this host or inside a test host's network namespace (the
multi-node head), and what the provisioned Grafana dashboards query. Used by
unit/test_monitoring (the dashboards), integration/local/test_monitoring (the
shared local stack) and integration/cluster/test_multinode (the head scraping
both nodes)."""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.parse
from pathlib import Path
from typing import Any, Sequence

from support import REPO_ROOT, free_port, require_tool
from support.compose_project import ComposeProject

DASHBOARDS = REPO_ROOT / "docker" / "monitoring" / "grafana" / "dashboards"


def prometheus_config(project: ComposeProject, profiles: Sequence[str] = ("cpu", "monitoring"),
                      **environ: str) -> str:
    """The Prometheus configuration exactly as Compose renders it from .env."""
    flags = [arg for profile in profiles for arg in ("--profile", profile)]
    cfg = project.config(*flags, **environ)
    return cfg["configs"]["prometheus"]["content"]


class Prometheus:
    """Prometheus and the Nginx exporter on loopback (of this host, or of the
    host whose command prefix is given), scraping `ray_targets` and Nginx's
    status page; queried through that host's curl."""

    def __init__(self, root: Path, ray_targets: str, profiles: Sequence[str] = ("cpu", "monitoring"),
                 prefix: Sequence[str] = ()) -> None:
        self.root = root
        self.prefix = list(prefix)
        self.port = free_port()
        self.exporter_port = free_port()
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []
        self.last_health: dict[str, str] | None = None
        project = ComposeProject(root / "project")
        self.config_text = prometheus_config(
            project, profiles, PROMETHEUS_RAY_TARGETS=ray_targets,
            PROMETHEUS_NGINX_TARGET=f"127.0.0.1:{self.exporter_port}", PROMETHEUS_SCRAPE_INTERVAL="2s")
        (root / "prometheus.yml").write_text(self.config_text)

    def start(self, status_port: int) -> None:
        self.spawn("exporter", [require_tool("prometheus-nginx-exporter"),
                                f"--nginx.scrape-uri=http://127.0.0.1:{status_port}/stub_status",
                                f"--web.listen-address=127.0.0.1:{self.exporter_port}"])
        self.spawn("prometheus", [require_tool("prometheus"), f"--config.file={self.root / 'prometheus.yml'}",
                                  f"--storage.tsdb.path={self.root / 'data'}",
                                  f"--web.listen-address=127.0.0.1:{self.port}"])

    def spawn(self, name: str, cmd: list[str]) -> None:
        log = self.root / f"{name}.log"
        self.logs.append(log)
        with log.open("wb") as sink:
            self.procs.append(subprocess.Popen([*self.prefix, *cmd], stdout=sink, stderr=subprocess.STDOUT,
                                               start_new_session=True))

    def stop(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()

    def log_tails(self) -> str:
        return "\n".join(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}" for log in self.logs
                         if log.exists())

    def api(self, path: str, **params: str) -> Any:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        out = subprocess.run([*self.prefix, "curl", "-s", "--max-time", "10", url], text=True,
                             capture_output=True, timeout=30, check=False)
        assert out.returncode == 0, f"{path} {params}: curl exit {out.returncode} {out.stderr}"
        body = json.loads(out.stdout)
        assert body.get("status") == "success", f"{path} {params}: {body}"
        return body["data"]

    def wait(self, what: str, check: Any, timeout: float = 120) -> Any:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = check()
                if last:
                    return last
            except (AssertionError, ValueError) as exc:
                last = exc
            time.sleep(1)
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last}, targets: "
                             f"{self.last_health})\n{self.log_tails()}")

    def target_health(self) -> dict[str, list[str]]:
        """Each job's targets' health ("up", or "down <error>"), by job name."""
        health: dict[str, list[str]] = {}
        for target in self.api("targets")["activeTargets"]:
            state = f'{target["health"]} {target.get("lastError", "")}'.strip()
            health.setdefault(target["labels"]["job"], []).append(state)
        self.last_health = {job: ", ".join(states) for job, states in health.items()}
        return health

    def targets_up(self, ray_targets: int = 1) -> dict[str, list[str]]:
        """The ray and nginx jobs, once all their targets are up (Prometheus'
        own job scrapes localhost:9090, its port in Compose, not the test's)."""
        health = self.target_health()
        ray_up = health.get("ray", []).count("up") == ray_targets
        return health if ray_up and health.get("nginx") == ["up"] else {}

    def value(self, query: str) -> float:
        result = self.api("query", query=query)["result"]
        return float(result[0]["value"][1]) if result else 0.0


# Metrics that Ray's dashboards chart but that this stack cannot export on a
# CPU-only, single-model, HTTP-only box without Ray's autoscaler. Each must
# really be missing from the scrape (the e2e test checks it), so the list
# cannot go stale.
NOT_EXPORTED_HERE: dict[str, str] = {
    **dict.fromkeys(("autoscaler_active_nodes", "autoscaler_cluster_resources", "autoscaler_pending_nodes",
                     "autoscaler_recently_failed_nodes"), "Ray's autoscaler (KubeRay, cloud clusters) only"),
    **dict.fromkeys(("ray_node_gpus_utilization", "ray_node_gram_available", "ray_node_gram_used"), "GPU nodes only"),
    **dict.fromkeys(("ray_serve_grpc_request_latency_ms_bucket", "ray_serve_num_grpc_error_requests_total",
                     "ray_serve_num_grpc_requests_total", "ray_serve_num_ongoing_grpc_requests"),
                    "Serve's gRPC ingress, which this stack does not use"),
    **dict.fromkeys(("ray_serve_multiplexed_get_model_requests_counter_total",
                     "ray_serve_multiplexed_model_load_latency_ms_bucket",
                     "ray_serve_multiplexed_model_unload_latency_ms_bucket",
                     "ray_serve_multiplexed_models_load_counter_total",
                     "ray_serve_multiplexed_models_unload_counter_total", "ray_serve_num_multiplexed_models",
                     "ray_serve_registered_multiplexed_model_id"), "model multiplexing (LoRA adapters) only"),
    **dict.fromkeys(("ray_vllm_nixl_bytes_transferred_sum", "ray_vllm_nixl_num_failed_transfers",
                     "ray_vllm_nixl_num_kv_expired_reqs_total", "ray_vllm_nixl_post_time_seconds_count",
                     "ray_vllm_nixl_post_time_seconds_sum", "ray_vllm_nixl_xfer_time_seconds_count",
                     "ray_vllm_nixl_xfer_time_seconds_sum"), "NIXL KV transfer (prefill/decode disaggregation) only"),
    "ray_vllm_num_requests_swapped": "vLLM's V0 engine only (V1 does not swap)",
    # Upstream defect in Ray 2.60's Serve deployment dashboard: a variable
    # query names the counter without the _total suffix Prometheus gives it,
    # so that drop-down list stays empty. Its panels use the _total name.
    "ray_serve_deployment_request_counter": "misnamed by Ray's dashboard (exported as ..._total)",
}
# Series that appear only once their event has happened (a prefix-cache hit,
# a replica scheduling retry): may be missing after a short run, or not.
ONLY_AFTER_AN_EVENT: dict[str, str] = {
    "ray_vllm_prefix_cache_hits_total": "the first prefix-cache hit",
    "ray_serve_num_scheduling_tasks_in_backoff": "a replica scheduling retry",
}


def dashboards() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}


def dashboard_queries(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL expression of a dashboard: panel targets and variables."""
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", []) if t.get("expr")]
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        if isinstance(query, dict) and query.get("query"):
            queries.append(query["query"])
    return queries


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (Ray's all start with ray_ or
    autoscaler_): not quoted strings, label names in matchers or in by(...),
    nor label_values' label argument."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    expr = re.sub(r"^label_values\((.*),\s*[A-Za-z_][A-Za-z0-9_]*\s*\)$", r"\1", expr.strip())
    return set(re.findall(r"\b((?:ray|autoscaler)_[A-Za-z0-9_:]*[A-Za-z0-9])\b(?!\s*(?:=|!=|=~|!~))", expr))


def fill_variables(query: str) -> str:
    """Grafana's variables as Grafana would fill them: intervals, and 'All' (.*)."""
    query = re.sub(r"\$\{?__(rate_)?interval\}?|\$\{?__range\}?|\$\{?interval\}?", "1m", query)
    return re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", ".*", query)
