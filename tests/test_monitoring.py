"""Profile `monitoring` (Prometheus, the Nginx exporter, Grafana with Ray's
dashboards) and profile `tunnel` (cloudflared behind a key check).

Static checks run Compose's own `docker compose config`, Prometheus' own
`promtool` and the real secret-file.sh. The e2e part runs a real Prometheus
(Debian's) with the configuration Compose renders, pointed at the shared local
CPU stack (Ray's metrics port, and Nginx through Debian's
prometheus-nginx-exporter), and checks that vLLM's token counters grow after a
completion and that every query of the provisioned dashboards names a series
the stack really exports.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import httpx
import openai
import pytest
import yaml

from compose_support import ComposeProject
from conftest import REPO_ROOT, require_tool
from monitoring_support import Prometheus, prometheus_config

MONITORING = REPO_ROOT / "docker" / "monitoring"
DASHBOARDS = MONITORING / "grafana" / "dashboards"
PROVISIONING = MONITORING / "grafana" / "provisioning"
SECRET_FILE_SH = REPO_ROOT / "docker" / "nginx" / "secret-file.sh"
IMAGE_SCRIPT_DIR = "/usr/local/lib/ray-llm-nginx/"

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


@pytest.fixture()
def project(tmp_path: Path) -> ComposeProject:
    return ComposeProject(tmp_path)


def promtool_check(config_text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "prometheus.yml"
    path.write_text(config_text)
    return subprocess.run([require_tool("promtool"), "check", "config", str(path)],
                          capture_output=True, text=True, timeout=60, check=False)


# ------------------------------------------------------------------ static ---

def test_monitoring_profile_renders_beside_cpu(project: ComposeProject) -> None:
    cfg = project.config("--profile", "cpu", "--profile", "monitoring")
    services = cfg["services"]
    assert {"prometheus", "nginx-exporter", "grafana", "grafana-secret", "ray-serve-cpu", "nginx"} <= set(services)
    for name in ("prometheus", "grafana"):
        ports = services[name]["ports"]
        assert [p["host_ip"] for p in ports] == ["127.0.0.1"], f"{name} must publish on loopback only"
    for name in ("prometheus", "nginx-exporter", "grafana"):
        service = services[name]
        # Prometheus' root is writable: Compose cannot write its inline config into a read-only one.
        assert service.get("read_only", False) is (name != "prometheus") and service["cap_drop"] == ["ALL"], name
        assert not service["user"].startswith("0"), f"{name} must run non-root"
    grafana = services["grafana"]
    assert grafana["depends_on"]["grafana-secret"]["condition"] == "service_completed_successfully"
    assert "GF_SECURITY_ADMIN_PASSWORD" not in grafana["environment"], "the password must come from a file"
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD__FILE"] == "/run/grafana-secret/admin_password"
    assert services["grafana-secret"]["command"][:2] == ["GRAFANA_ADMIN_PASSWORD", "/out/admin_password"]
    assert services["nginx-exporter"]["command"][0] == "--nginx.scrape-uri=http://nginx:8081/stub_status"


def test_monitoring_profile_is_not_part_of_the_serving_profiles(project: ComposeProject) -> None:
    for profile in ("single", "cpu", "head", "worker"):
        services = project.config("--profile", profile)["services"]
        assert not {"prometheus", "grafana", "prometheus-head", "grafana-head", "cloudflared"} & set(services), profile


def test_monitoring_head_profile_runs_on_the_heads_host_network(project: ComposeProject, tmp_path: Path) -> None:
    """Profile monitoring-head beside head: the same images and hardening on the
    host network, listening on RAY_PUBLISH_ADDRESS (Prometheus, Grafana) and
    loopback (the exporter, which reads nginx-head's loopback status page)."""
    env = {"RAY_PUBLISH_ADDRESS": "127.0.0.5", "PROMETHEUS_PORT": "9191", "GRAFANA_PORT": "3333",
           "NGINX_STATUS_PORT": "8181", "NGINX_EXPORTER_PORT": "9313",
           "PROMETHEUS_RAY_TARGETS": "198.18.0.1:8080,198.18.0.2:8080", "PROMETHEUS_NGINX_TARGET": "127.0.0.1:9313"}
    cfg = project.config("--profile", "head", "--profile", "monitoring-head", **env)
    services = cfg["services"]
    assert set(services) == {"ray-head", "nginx-head", "prometheus-head", "nginx-exporter-head", "grafana-head",
                             "grafana-secret"}
    bridge = project.config("--profile", "cpu", "--profile", "monitoring")["services"]
    for name in ("prometheus", "nginx-exporter", "grafana"):
        head, same = services[f"{name}-head"], bridge[name]
        assert head["network_mode"] == "host" and "ports" not in head and "networks" not in head, name
        for key in ("image", "user", "read_only", "cap_drop", "security_opt", "restart", "volumes"):
            assert head.get(key) == same.get(key), f"{name}-head differs from {name} in {key}"
    assert services["prometheus-head"]["command"][-1] == "--web.listen-address=127.0.0.5:9191"
    assert services["prometheus-head"]["healthcheck"]["test"][-1] == "http://127.0.0.5:9191/-/ready"
    assert services["nginx-exporter-head"]["command"] == ["--nginx.scrape-uri=http://127.0.0.1:8181/stub_status",
                                                          "--web.listen-address=127.0.0.1:9313"]
    assert services["nginx-exporter-head"]["depends_on"]["nginx-head"]["condition"] == "service_healthy"
    grafana = services["grafana-head"]["environment"]
    assert (grafana["GF_SERVER_HTTP_ADDR"], grafana["GF_SERVER_HTTP_PORT"]) == ("127.0.0.5", "3333")
    assert grafana["RAY_LLM_PROMETHEUS_URL"] == "http://127.0.0.5:9191"
    assert {k: v for k, v in grafana.items() if k.startswith("GF_SECURITY")} == {
        k: v for k, v in bridge["grafana"]["environment"].items() if k.startswith("GF_SECURITY")}
    text = cfg["configs"]["prometheus"]["content"]
    assert promtool_check(text, tmp_path).returncode == 0
    jobs = {job["job_name"]: job["static_configs"][0]["targets"] for job in yaml.safe_load(text)["scrape_configs"]}
    assert jobs["ray"] == ["198.18.0.1:8080", "198.18.0.2:8080"] and jobs["nginx"] == ["127.0.0.1:9313"]
    # The bridge profile beside head is refused, naming what is missing.
    out = project.compose("--profile", "head", "--profile", "monitoring", "config")
    assert out.returncode != 0 and 'depends on undefined service "nginx"' in out.stderr, out.stderr


def test_rendered_prometheus_config_passes_promtool(project: ComposeProject, tmp_path: Path) -> None:
    text = prometheus_config(project)
    out = promtool_check(text, tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    config = yaml.safe_load(text)
    targets = {job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]}
    assert targets["ray"] == ["ray-serve:8080"] and targets["nginx"] == ["nginx-exporter:9113"]


def test_prometheus_targets_follow_env(project: ComposeProject, tmp_path: Path) -> None:
    text = prometheus_config(project, PROMETHEUS_RAY_TARGETS="10.0.0.1:8080, 10.0.0.2:8080", RAY_METRICS_PORT="9999")
    assert promtool_check(text, tmp_path).returncode == 0
    jobs = {job["job_name"]: job for job in yaml.safe_load(text)["scrape_configs"]}
    assert jobs["ray"]["static_configs"][0]["targets"] == ["10.0.0.1:8080", "10.0.0.2:8080"]
    port_only = prometheus_config(project, RAY_METRICS_PORT="9999")
    assert yaml.safe_load(port_only)["scrape_configs"][0]["static_configs"][0]["targets"] == ["ray-serve:9999"]


def test_promtool_rejects_a_bad_rendered_config(project: ComposeProject, tmp_path: Path) -> None:
    """The promtool check can fail: a bad interval from .env is caught."""
    out = promtool_check(prometheus_config(project, PROMETHEUS_SCRAPE_INTERVAL="soon"), tmp_path)
    assert out.returncode != 0 and "soon" in out.stdout + out.stderr


def test_dashboards_are_the_ones_ray_generates() -> None:
    out = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "make-dashboards.py"), "--check"],
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr


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


def test_dashboards_load_and_use_the_provisioned_datasource() -> None:
    found = dashboards()
    assert set(found) == {"serve_grafana_dashboard.json", "serve_deployment_grafana_dashboard.json",
                          "serve_llm_grafana_dashboard.json"}
    datasources = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert [d["type"] for d in datasources] == ["prometheus"] and datasources[0]["isDefault"] is True
    for name, dashboard in found.items():
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
        assert dashboard["uid"] and len(dashboard_queries(dashboard)) > 10, name


def test_grafana_provisions_the_mounted_dashboards(project: ComposeProject) -> None:
    grafana = project.config("--profile", "cpu", "--profile", "monitoring")["services"]["grafana"]
    mounts = {m["target"]: m for m in grafana["volumes"]}
    provider = yaml.safe_load((PROVISIONING / "dashboards" / "ray.yml").read_text())["providers"][0]
    path = provider["options"]["path"]
    assert Path(mounts[path]["source"]) == project.root / "docker" / "monitoring" / "grafana" / "dashboards"
    assert mounts[path]["read_only"] and mounts["/etc/grafana/provisioning"]["read_only"]
    # The datasource's URL is the grafana service's RAY_LLM_PROMETHEUS_URL
    # (Grafana expands ${...} in provisioning files): Prometheus' service name.
    url = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())["datasources"][0]["url"]
    assert url == "${RAY_LLM_PROMETHEUS_URL}"
    assert grafana["environment"]["RAY_LLM_PROMETHEUS_URL"] == "http://prometheus:9090"


def test_tunnel_profile_renders_non_root_read_only_with_a_healthcheck(project: ComposeProject) -> None:
    services = project.config("--profile", "cpu", "--profile", "tunnel")["services"]
    tunnel = services["cloudflared"]
    assert tunnel["user"] == "65532:65532" and tunnel["read_only"] is True and tunnel["cap_drop"] == ["ALL"]
    assert tunnel["healthcheck"]["test"][:3] == ["CMD", "cloudflared", "tunnel"]
    assert "ports" not in tunnel, "a tunnel opens no port"
    assert tunnel["depends_on"]["tunnel-secret"]["condition"] == "service_completed_successfully"
    assert "--token-file" in tunnel["command"] and "TUNNEL_TOKEN" not in (tunnel.get("environment") or {})
    guard = services["tunnel-secret"]
    assert guard["command"] == ["CLOUDFLARE_TUNNEL_TOKEN", "/out/token", "65532:65532", "OPENAI_API_KEY"]
    assert guard["network_mode"] == "none"


def run_rendered_guard(project: ComposeProject, service: str, profile: str, secrets: str,
                       tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], Path]:
    """Run a *-secret service's rendered entrypoint and command on the host:
    the same script, arguments and secrets format as in its container."""
    cfg = project.config("--profile", "cpu", "--profile", profile)["services"][service]
    entrypoint = cfg["entrypoint"][0]
    assert entrypoint.startswith(IMAGE_SCRIPT_DIR)
    script = REPO_ROOT / "docker" / "nginx" / entrypoint.removeprefix(IMAGE_SCRIPT_DIR)
    name, dest, owner, *required = cfg["command"]
    out_dir = tmp_path / "out"
    secrets_file = tmp_path / "secrets"
    secrets_file.write_text(secrets)
    secrets_file.chmod(0o600)
    if os.geteuid() != 0:  # chown to another user needs root
        owner = f"{os.getuid()}:{os.getgid()}"
    out = subprocess.run([require_tool("busybox"), "sh", str(script), name, str(out_dir / Path(dest).name),
                          owner, *required], env={"RAY_LLM_SECRETS_FILE": str(secrets_file), "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, timeout=30, check=False)
    return out, out_dir / Path(dest).name


def test_tunnel_refuses_without_an_api_key(project: ComposeProject, tmp_path: Path) -> None:
    out, token = run_rendered_guard(project, "tunnel-secret", "tunnel",
                                    "OPENAI_API_KEY=\nCLOUDFLARE_TUNNEL_TOKEN=eyJhIjoiYiJ9\n", tmp_path)
    assert out.returncode == 1 and "OPENAI_API_KEY is empty" in out.stderr
    assert not token.exists() and "eyJ" not in out.stderr + out.stdout


def test_tunnel_refuses_without_a_token(project: ComposeProject, tmp_path: Path) -> None:
    out, token = run_rendered_guard(project, "tunnel-secret", "tunnel", "OPENAI_API_KEY=sk-x\n", tmp_path)
    assert out.returncode == 1 and "CLOUDFLARE_TUNNEL_TOKEN is empty" in out.stderr and not token.exists()


def test_tunnel_token_reaches_its_own_private_file(project: ComposeProject, tmp_path: Path) -> None:
    out, token = run_rendered_guard(project, "tunnel-secret", "tunnel",
                                    "OPENAI_API_KEY=sk-x\nexport CLOUDFLARE_TUNNEL_TOKEN='eyJhIjoiYiJ9' \n", tmp_path)
    assert out.returncode == 0, out.stderr
    assert token.read_text() == "eyJhIjoiYiJ9" and oct(token.stat().st_mode & 0o777) == "0o400"
    assert "eyJ" not in out.stderr + out.stdout


def test_grafana_password_is_required(project: ComposeProject, tmp_path: Path) -> None:
    out, password = run_rendered_guard(project, "grafana-secret", "monitoring", "GRAFANA_ADMIN_PASSWORD=\n", tmp_path)
    assert out.returncode == 1 and "GRAFANA_ADMIN_PASSWORD is empty" in out.stderr and not password.exists()
    out, password = run_rendered_guard(project, "grafana-secret", "monitoring",
                                       "GRAFANA_ADMIN_PASSWORD='pass #word'\n", tmp_path)
    assert out.returncode == 0 and password.read_text() == "pass #word"


# --------------------------------------------------------------------- e2e ---

@pytest.fixture(scope="module")
def prometheus(stack: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    prom = Prometheus(tmp_path_factory.mktemp("prometheus"), ray_targets=f"127.0.0.1:{stack.metrics_port}")
    try:
        prom.start(status_port=stack.status_port)
        prom.wait("every scrape target up", prom.targets_up)
        yield prom
    finally:
        prom.stop()


def completion(stack: Any, max_tokens: int) -> int:
    client = openai.OpenAI(base_url=f"{stack.base_url}/v1", api_key=stack.api_key, max_retries=0, timeout=120)
    from stack_support import MODEL

    done = client.completions.create(model=MODEL, prompt="Count to ten:", max_tokens=max_tokens,
                                     extra_body={"ignore_eos": True})
    assert done.usage is not None
    return done.usage.completion_tokens


@pytest.mark.e2e
def test_prometheus_sees_vllm_tokens_grow_after_a_completion(stack: Any, prometheus: Prometheus) -> None:
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


@pytest.mark.e2e
def test_every_dashboard_query_names_a_scraped_metric(stack: Any, prometheus: Prometheus) -> None:
    # One request of each kind the dashboards chart, so their series exist.
    completion(stack, 4)
    httpx.get(f"{stack.base_url}/v1/models", headers={"Authorization": f"Bearer {stack.api_key}"}, timeout=30)
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


def fill_variables(query: str) -> str:
    """Grafana's variables as Grafana would fill them: intervals, and 'All' (.*)."""
    query = re.sub(r"\$\{?__(rate_)?interval\}?|\$\{?__range\}?|\$\{?interval\}?", "1m", query)
    return re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", ".*", query)
