"""Profile `monitoring` (Prometheus, the Nginx exporter, Grafana with Ray's
dashboards) and profile `tunnel` (cloudflared behind a key check), statically:
Compose's own `docker compose config`, Prometheus' own `promtool` and the real
secret-file.sh. The scrape of a running stack is
tests/integration/local/test_monitoring.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from support import REPO_ROOT, require_tool
from support.compose_project import ComposeProject
from support.monitoring import dashboard_queries, dashboards, prometheus_config

MONITORING = REPO_ROOT / "docker" / "monitoring"
PROVISIONING = MONITORING / "grafana" / "provisioning"
SECRET_FILE_SH = REPO_ROOT / "docker" / "nginx" / "secret-file.sh"
IMAGE_SCRIPT_DIR = "/usr/local/lib/ray-llm-nginx/"

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
    out = subprocess.run([sys.executable, str(REPO_ROOT / "tools" / "make-dashboards.py"), "--check"],
                         capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr


def test_dashboards_load_and_use_the_provisioned_datasource() -> None:
    found = dashboards()
    # Ray's three (tools/make-dashboards.py) and the project's per-key usage.
    assert set(found) == {"serve_grafana_dashboard.json", "serve_deployment_grafana_dashboard.json",
                          "serve_llm_grafana_dashboard.json", "ray_llm_keys_dashboard.json"}
    datasources = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert [d["type"] for d in datasources] == ["prometheus"] and datasources[0]["isDefault"] is True
    for name, dashboard in found.items():
        variables = {v["name"]: v for v in dashboard["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
        assert dashboard["uid"] and len(dashboard_queries(dashboard)) > (4 if name.startswith("ray_llm") else 10), name


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
    assert guard["command"] == ["CLOUDFLARE_TUNNEL_TOKEN", "/out/token", "65532:65532", "OPENAI_API_KEY|API_KEY_*"]
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
    assert out.returncode == 1 and "OPENAI_API_KEY or API_KEY_* is empty" in out.stderr
    assert not token.exists() and "eyJ" not in out.stderr + out.stdout


def test_tunnel_accepts_a_named_key(project: ComposeProject, tmp_path: Path) -> None:
    out, token = run_rendered_guard(project, "tunnel-secret", "tunnel",
                                    "OPENAI_API_KEY=\nAPI_KEY_team_a=sk-a\nCLOUDFLARE_TUNNEL_TOKEN=eyJhIjoiYiJ9\n",
                                    tmp_path)
    assert out.returncode == 0, out.stderr
    assert token.read_text() == "eyJhIjoiYiJ9"


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
