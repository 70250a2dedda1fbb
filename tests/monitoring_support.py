"""A real Prometheus (Debian's) and nginx exporter, run with the configuration
Compose renders, on this host or inside a test host's network namespace (the
multi-node head). Used by test_monitoring (the shared local stack) and
test_multinode (the head scraping both nodes)."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
from pathlib import Path
from typing import Any, Sequence

from compose_support import ComposeProject
from conftest import free_port, require_tool


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
