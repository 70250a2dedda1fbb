"""The README's main command for real: `docker compose up` of the cpu profile on
a real Docker engine, through the repo's compose file and .env, with
environment overrides only (the tiny model mounted through MODELS_DIR).

The tests share one stack and run in file order; the last one takes it down.
Timings go to .runtime/docker-timings.json (scripts/test.sh prints them).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from readiness import MODEL_TIMEOUT_S
from support import (
    REPO_ROOT,
    TINY_MODEL_DIR,
    kill_if_stopped,
    make_tiny_model,
    process_gone,
)
from support.compose_stack import (
    API_KEY,
    DASH_PASSWORD,
    GRAFANA_PASSWORD,
    HF_TOKEN,
    MODEL,
    NGINX,
    RAY_TOKEN,
    S3_SECRET,
    SERVE,
    TUNNEL_TOKEN,
    ComposeStack,
    wait_for,
)
from support.nginx import access_log_entries, make_cert, read_dotenv
from support.fake_hub import FakeHub

pytestmark = pytest.mark.docker

TIMINGS = REPO_ROOT / ".runtime" / "docker-timings.json"
PLANTED = {"OPENAI_API_KEY": API_KEY, "HF_TOKEN": HF_TOKEN, "RAY_AUTH_TOKEN": RAY_TOKEN,
           "NGINX_DASHBOARD_PASSWORD": DASH_PASSWORD, "AWS_SECRET_ACCESS_KEY": S3_SECRET}
timings: dict[str, float] = {}


def record(name: str, seconds: float) -> None:
    timings[name] = round(seconds, 1)
    TIMINGS.parent.mkdir(parents=True, exist_ok=True)
    TIMINGS.write_text(json.dumps(timings, indent=2) + "\n")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[ComposeStack]:
    """Build, then `up -d --wait`; always `down --volumes` at the end, with logs on failure."""
    make_tiny_model()
    s = ComposeStack(tmp_path_factory.mktemp("compose"))
    failed_before = request.session.testsfailed
    try:
        started = time.monotonic()
        s.build = s.compose("build", timeout=1800)  # type: ignore[attr-defined]
        record("build_s", time.monotonic() - started)
        if s.build.returncode == 0:  # type: ignore[attr-defined]
            s.up_started = datetime.now().astimezone()  # type: ignore[attr-defined]
            started = time.monotonic()
            s.up = s.compose("up", "-d", "--wait", timeout=1200)  # type: ignore[attr-defined]
            record("up_wait_s", time.monotonic() - started)
        yield s
    finally:
        if request.session.testsfailed > failed_before:
            print("\n----- docker compose logs (tail) -----\n" + s.logs())
        out = s.down()
        assert out.returncode == 0, out.stderr
        left = s.docker("ps", "-aq", "--filter", f"label=com.docker.compose.project={s.project}")
        assert not left.stdout.split(), f"containers left behind: {left.stdout}"


@pytest.fixture()
def up(stack: ComposeStack) -> ComposeStack:
    build = stack.build  # type: ignore[attr-defined]
    assert build.returncode == 0, f"docker compose build failed:\n{build.stdout[-4000:]}{build.stderr[-4000:]}"
    result = stack.up  # type: ignore[attr-defined]
    assert result.returncode == 0, f"docker compose up -d --wait failed:\n{result.stderr[-3000:]}\n{stack.logs()}"
    return stack


def client(s: ComposeStack, key: str | None = API_KEY, timeout: float = 60, tls: bool = False) -> openai.OpenAI:
    """The openai client on Nginx's HTTP port, or its HTTPS one (the test's self-signed certificate)."""
    if tls:
        return openai.OpenAI(base_url=s.https_url + "/v1", api_key=key or "none", max_retries=0, timeout=timeout,
                             http_client=httpx.Client(verify=False, timeout=timeout))
    return openai.OpenAI(base_url=s.base_url + "/v1", api_key=key or "none", max_retries=0, timeout=timeout)


def chat_ok(s: ComposeStack) -> bool:
    try:
        reply = client(s, timeout=15).chat.completions.create(model=MODEL, max_tokens=4,
                                                  messages=[{"role": "user", "content": "hello"}])
    except openai.OpenAIError:
        return False
    return bool(reply.choices)


def docker_time(text: str) -> datetime:
    """Docker's RFC 3339 times carry nanoseconds; Python takes microseconds."""
    return datetime.fromisoformat(re.sub(r"(\.\d{6})\d*", r"\1", text.replace("Z", "+00:00")))


# --- Build and start ----------------------------------------------------------------

def test_images_build(up: ComposeStack) -> None:
    """`docker compose build`: the CPU image (same Dockerfile, FLAVOR=cpu) and the nginx image."""
    for image in ("ray-llm-serve:cpu-local", "ray-llm-nginx:local"):
        assert up.docker("image", "inspect", image).returncode == 0, image
    config = up.inspect("ray-llm-serve:cpu-local")["Config"]
    assert config["User"] == "10001"
    assert config["Entrypoint"] == ["/app/docker/container-entrypoint.sh"]
    # The build's extra CA (a build secret) never lands in the image.
    history = up.docker("history", "--no-trunc", "ray-llm-serve:cpu-local").stdout
    assert "BEGIN CERTIFICATE" not in history
    # The venv carries its bytecode: the app user cannot write its __pycache__,
    # and without .pyc files every process of every start compiles vLLM, torch
    # and Ray again (docs/benchmarks.md, start-up in Compose).
    pyc = "/opt/venv/lib/python3.11/site-packages/vllm/__pycache__/__init__.cpython-311.pyc"
    assert up.docker("run", "--rm", "--entrypoint", "test", "ray-llm-serve:cpu-local", "-f", pyc).returncode == 0


def test_serving_is_healthy_only_after_a_completion_and_nginx_starts_after(up: ComposeStack) -> None:
    serve_id, nginx_id = up.container(SERVE), up.container(NGINX)
    since = up.up_started.isoformat()  # type: ignore[attr-defined]
    events = up.docker("events", "--since", since, "--until", datetime.now().astimezone().isoformat(),
                       "--filter", f"container={serve_id}", "--format", "{{json .}}")
    assert events.returncode == 0, events.stderr
    lines = [json.loads(line) for line in events.stdout.splitlines()]
    healthy = [e for e in lines if e.get("status") == "health_status: healthy"]
    assert healthy, "no health_status: healthy event"
    first_healthy = healthy[0]["timeNano"]
    probes = [e for e in lines if e.get("status", "").startswith("exec_die") and e["timeNano"] < first_healthy]
    failed = [e for e in probes if e["Actor"]["Attributes"].get("exitCode") != "0"]
    # The engine takes far longer to load than the 5 s start interval: the
    # probe (a 1-token completion) failed before it first succeeded.
    assert failed, "the healthcheck never failed while the model was loading: it does not wait for a completion"
    nginx_started = docker_time(up.inspect(nginx_id)["State"]["StartedAt"])
    assert nginx_started.timestamp() * 1e9 >= first_healthy, "nginx started before the model server was healthy"


def test_api_through_the_published_port(up: ComposeStack) -> None:
    assert httpx.get(up.base_url + "/healthz", timeout=10).json() == {"status": "ok"}
    assert httpx.get(up.base_url + "/readyz", timeout=30).json() == {"status": "ready"}
    with pytest.raises(openai.AuthenticationError):
        client(up, key=None).models.list()
    assert [m.id for m in client(up).models.list().data] == [MODEL]
    chunks: list[str] = []
    finish = None
    for chunk in client(up).chat.completions.create(
            model=MODEL, stream=True, max_tokens=16, messages=[{"role": "user", "content": "Say hello"}]):
        if chunk.choices:
            chunks.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
    assert len(chunks) >= 2 and finish in ("length", "stop")


def test_errors_in_openai_shape_inside_compose(up: ComposeStack) -> None:
    """The proxy middleware (openai_errors) runs in the container as on the host."""
    with pytest.raises(openai.NotFoundError) as err:
        client(up).chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    assert err.value.body["code"] == "model_not_found" and "no-such-model" in err.value.body["message"]
    with pytest.raises(openai.BadRequestError) as err:
        client(up).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=0)
    assert err.value.body["param"] == "max_tokens" and "Internal exception" not in err.value.body["message"]
    r = httpx.get(up.base_url + "/v1/chat/completions", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30)
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed", r.text


def prometheus_query(s: ComposeStack, query: str) -> float:
    body = httpx.get(f"http://127.0.0.1:{s.prometheus_port}/api/v1/query", params={"query": query}, timeout=10).json()
    result = body["data"]["result"]
    return float(result[0]["value"][1]) if result else -1.0


def test_monitoring_profile_scrapes_ray_vllm_and_nginx_inside_compose(up: ComposeStack) -> None:
    """Profile monitoring beside cpu: Prometheus and the Nginx exporter (local
    stand-ins of their images) scrape the running stack over the Compose
    network, with the configuration Compose renders."""
    services = ("prometheus", "nginx-exporter")
    try:
        out = up.compose("--profile", "cpu", "--profile", "monitoring", "up", "-d", "--wait", *services, timeout=600)
        assert out.returncode == 0, out.stderr + up.logs()
        assert up.health(SERVE) == "healthy", "adding the profile must not recreate the model server"

        def all_up() -> bool:
            try:
                return all(prometheus_query(up, f'up{{job="{job}"}}') == 1 for job in ("ray", "nginx"))
            except (httpx.HTTPError, KeyError, ValueError):
                return False

        wait_for("Prometheus' ray and nginx targets up", all_up, timeout=120)
        query = "sum(ray_vllm_generation_tokens_total)"
        wait_for("vLLM's token counter in Prometheus", lambda: prometheus_query(up, query) >= 0, timeout=120)
        before = prometheus_query(up, query)
        reply = client(up).completions.create(model=MODEL, prompt="one two", max_tokens=10,
                                              extra_body={"ignore_eos": True})
        assert reply.usage is not None and reply.usage.completion_tokens == 10
        wait_for(f"{query} to grow by 10 from {before}", lambda: prometheus_query(up, query) >= before + 10,
                 timeout=120)
        assert prometheus_query(up, 'sum(nginx_http_requests_total{job="nginx"})') >= 1
        per_key_usage_matches_the_answers(up)
    finally:
        up.compose("--profile", "cpu", "--profile", "monitoring", "rm", "--stop", "--force", *services, timeout=120)
        up.docker("volume", "rm", "-f", f"{up.project}_prometheus-data")


KEY_SERIES = ("ray_llm_key_prompt_tokens_total", "ray_llm_key_completion_tokens_total",
              'ray_llm_key_requests_total{status="200"}', "ray_llm_key_time_to_first_token_seconds_count")


USAGE_KEY = "sk-compose-usage-0123456789abcdef01234"


def key_totals(s: ComposeStack, name: str) -> tuple[float, ...]:
    """The series of key NAME (0 before their first sample)."""
    def total(series: str) -> float:
        selector = series.replace("{", f'{{key_name="{name}",') if "{" in series else series + f'{{key_name="{name}"}}'
        return max(prometheus_query(s, f"sum({selector})"), 0.0)
    return tuple(total(series) for series in KEY_SERIES)


def per_key_usage_matches_the_answers(s: ComposeStack) -> None:
    """A key added for this check (no traffic before it): its series in
    Prometheus sum up exactly what the same requests' usage said, for a
    completion, a stream that asked for usage, and one that did not (it gets
    none, and is counted all the same)."""
    s.write_secrets(f"API_KEY_usage={USAGE_KEY}\n")
    try:
        out = reload_nginx(s)
        assert out.returncode == 0, out.stdout + out.stderr
        usage_of_three_requests(s)
    finally:
        s.write_secrets()
        reload_nginx(s)


def usage_of_three_requests(s: ComposeStack) -> None:
    before = key_totals(s, "usage")
    assert before == (0, 0, 0, 0), before
    c = client(s, key=USAGE_KEY)
    plain = c.completions.create(model=MODEL, prompt="one two three", max_tokens=5, extra_body={"ignore_eos": True})
    messages = [{"role": "user", "content": "count to ten"}]
    asked = [chunk for chunk in c.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=6, stream=True, stream_options={"include_usage": True},
        extra_body={"ignore_eos": True})]
    silent = [chunk for chunk in c.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=6, stream=True, extra_body={"ignore_eos": True})]
    assert plain.usage is not None and asked[-1].usage is not None
    assert not any(chunk.usage for chunk in silent), "a stream that did not ask for usage got it"
    stream_usage = asked[-1].usage
    expected = (plain.usage.prompt_tokens + 2 * stream_usage.prompt_tokens,
                plain.usage.completion_tokens + 2 * stream_usage.completion_tokens, 3, 2)

    def grown() -> bool:
        return all(n >= e for n, e in zip(key_totals(s, "usage"), expected))

    wait_for(f"the usage key's series to reach {expected}", grown, timeout=120)
    time.sleep(5)  # one more export and scrape: nothing else arrives
    assert key_totals(s, "usage") == expected


def test_tunnel_refuses_to_start_without_an_api_key_inside_compose(up: ComposeStack, tmp_path: Path) -> None:
    """tunnel-secret in the project's nginx image, with .secrets mounted as in
    production: an empty OPENAI_API_KEY stops it (and so cloudflared)."""
    secrets = tmp_path / "secrets"
    secrets.write_text("OPENAI_API_KEY=\nCLOUDFLARE_TUNNEL_TOKEN=eyJ0dW5uZWwiOiJ0ZXN0In0\n")
    secrets.chmod(0o600)
    env = {**up.env(), "SECRETS_FILE": str(secrets)}
    try:
        out = subprocess.run(["docker", "compose", "--profile", "cpu", "--profile", "tunnel", "run", "--rm", "--no-deps", "-T",
                              "tunnel-secret"], cwd=REPO_ROOT, env=env, text=True, capture_output=True,
                             timeout=300, check=False)
        assert out.returncode != 0, out.stdout + out.stderr
        said = out.stdout + out.stderr  # compose run -T: the container's stderr may come on either
        assert "OPENAI_API_KEY or API_KEY_* is empty" in said and "eyJ0" not in said, said
    finally:
        up.docker("volume", "rm", "-f", f"{up.project}_tunnel-secret")


# Runs in the model server's container, on the Compose network like
# cloudflared: requests as cloudflared sends them (the client's address in
# CF-Connecting-IP) to Nginx's tunnel door, and the same header to the public
# door. Prints the status codes.
TUNNEL_CLIENT_PY = r"""
import json, sys, urllib.error, urllib.request
tunnel, public, key = sys.argv[1:4]
def get(base, client, token):
    req = urllib.request.Request(base + "/v1/models", headers={"CF-Connecting-IP": client,
                                                             "Authorization": "Bearer " + token})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as err:
        return err.code
out = {"key": get(tunnel, "192.0.2.7", key),
       "wrong_a": [get(tunnel, "192.0.2.7", "sk-wrong-key") for _ in range(30)],
       "wrong_b": get(tunnel, "192.0.2.8", "sk-wrong-key"),
       "public_a": [get(public, "192.0.2.9", "sk-wrong-key") for _ in range(30)],
       "public_b": get(public, "192.0.2.10", "sk-wrong-key")}
print(json.dumps(out))
"""


def test_tunnel_door_takes_the_client_address_from_cloudflared_inside_compose(up: ComposeStack) -> None:
    """Behind the tunnel, per-address limits and the log see the client's
    address from CF-Connecting-IP (cloudflared's header), not cloudflared's
    container address: requests sent the way cloudflared sends them, from a
    container on the Compose network (cloudflared itself needs Cloudflare's
    edge). The tunnel's door is not published, and the public door ignores
    the header."""
    port = int(up.env().get("NGINX_TUNNEL_PORT") or read_dotenv()["NGINX_TUNNEL_PORT"])
    assert port not in {published for _, published in published_ports(up, NGINX)}
    tunnel, public = f"http://nginx:{port}", f"http://nginx:{up.http_port}"
    out = up.docker("exec", up.container(SERVE), "python", "-c", TUNNEL_CLIENT_PY, tunnel, public, API_KEY,
                    timeout=120)
    assert out.returncode == 0, out.stderr
    codes = json.loads(out.stdout.strip().splitlines()[-1])
    assert codes["key"] == 200, codes
    assert codes["wrong_a"].count(429) >= 10 and codes["wrong_b"] == 401, codes  # each client its own budget
    assert codes["public_a"].count(429) >= 10 and codes["public_b"] == 429, codes  # one address: one budget
    serve_ip = next(iter(up.inspect(up.container(SERVE))["NetworkSettings"]["Networks"].values()))["IPAddress"]
    seen = [(e["remote_addr"], e["peer_addr"], e["key_name"]) for e in nginx_access_log(up)
            if e["remote_addr"] in ("192.0.2.7", "192.0.2.8") or e["peer_addr"] == serve_ip]
    assert ("192.0.2.7", serve_ip, "default") in seen and ("192.0.2.8", serve_ip, "") in seen, seen
    assert not {addr for addr, _, _ in seen} & {"192.0.2.9", "192.0.2.10"}, seen


def published_ports(s: ComposeStack, service: str) -> set[tuple[str, int]]:
    ports = s.inspect(s.container(service))["NetworkSettings"]["Ports"]
    return {(b["HostIp"], int(b["HostPort"])) for bindings in ports.values() if bindings for b in bindings}


def test_nothing_but_nginx_is_published(up: ComposeStack) -> None:
    """No way around the key: Ray Serve's and the dashboard's ports stay in
    the Compose network; the dashboard is Nginx's /dashboard/ (behind its password)."""
    assert published_ports(up, SERVE) == set()
    assert published_ports(up, NGINX) == {("127.0.0.1", up.http_port), ("127.0.0.1", up.https_port)}
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{up.api_port}/v1/models", timeout=5)


def test_serving_processes_run_as_the_non_root_user(up: ComposeStack) -> None:
    serve_id = up.container(SERVE)
    top = up.docker("top", serve_id, "-eo", "uid,pid,comm")
    assert top.returncode == 0, top.stderr
    rows = [line.split(None, 2) for line in top.stdout.splitlines()[1:]]
    assert len(rows) > 5 and {uid for uid, _, _ in rows} == {"10001"}, top.stdout
    # PID 1 of the container is tini, as the app user.
    pid1 = up.docker("exec", serve_id, "cat", "/proc/1/comm").stdout.strip()
    assert pid1 == "tini"
    # The fresh cache volume is the app user's: vLLM wrote its cache there.
    probe = up.docker("exec", "-u", "10001", serve_id, "sh", "-c",
                      "touch /cache/.write-probe && rm /cache/.write-probe && stat -c %U /cache /cache/vllm && "
                      "find /cache/vllm -type f | head -n 1")
    assert probe.returncode == 0, probe.stderr
    owners, first_file = probe.stdout.splitlines()[:2], probe.stdout.splitlines()[2:]
    assert owners == ["ray", "ray"] and first_file, probe.stdout


def test_nginx_root_is_read_only(up: ComposeStack) -> None:
    nginx_id = up.container(NGINX)
    host_config = up.inspect(nginx_id)["HostConfig"]
    assert host_config["ReadonlyRootfs"] is True and host_config["CapDrop"] == ["ALL"]
    write = up.docker("exec", nginx_id, "touch", "/etc/nginx/probe")
    assert write.returncode != 0 and "Read-only file system" in write.stderr
    # Rendered at start by render.sh into the tmpfs.
    listing = up.docker("exec", nginx_id, "ls", "/etc/nginx/conf.d")
    assert "nginx.conf" in listing.stdout.split()


def test_models_dir_is_mounted_read_only_and_serves_the_model(up: ComposeStack) -> None:
    """MODELS_DIR at /models, read-only, with MODEL_SOURCE=/models/<folder> (the offline layout)."""
    serve_id = up.container(SERVE)
    mounts = {m["Destination"]: m for m in up.inspect(serve_id)["Mounts"]}
    assert mounts["/models"]["RW"] is False and mounts["/models"]["Source"] == str(TINY_MODEL_DIR.parent)
    write = up.docker("exec", serve_id, "touch", f"/models/{TINY_MODEL_DIR.name}/probe")
    assert write.returncode != 0 and "Read-only file system" in write.stderr
    assert up.compose("exec", "-T", SERVE, "printenv", "MODEL_SOURCE", "HF_HUB_OFFLINE").stdout.split() == [
        f"/models/{TINY_MODEL_DIR.name}", "1"]
    assert [m.id for m in client(up).models.list().data] == [MODEL]


def test_models_file_is_read_inside_the_container(up: ComposeStack) -> None:
    """MODELS_FILE from .env reaches deploy.py in the image (the Compose config
    mount), and is validated there by Ray's and vLLM's own models (--dry-run)."""
    models = up.work_dir / "dry-run-models.yaml"
    source = f"/models/{TINY_MODEL_DIR.name}"
    models.write_text(f"models:\n  - {{MODEL_ID: tiny-llama, SERVED_MODEL_NAME: one, MODEL_SOURCE: {source}}}\n"
                      f"  - {{MODEL_ID: tiny-llama, SERVED_MODEL_NAME: two, MODEL_SOURCE: {source},"
                      " ENGINE_KWARGS: {enable_prefix_caching: false}}\n")
    env = {**up.env(), "MODELS_FILE": str(models), "CPU_MODEL_ID": "", "SERVED_MODEL_NAME": "", "MODEL_SOURCE": ""}

    def dry_run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(["docker", "compose", "run", "--rm", "--no-deps", "-T", SERVE, "python",
                               "/app/src/deploy.py", "--dry-run"], cwd=REPO_ROOT, env=env, text=True,
                              capture_output=True, timeout=300, check=False)

    out = dry_run()
    assert out.returncode == 0, out.stdout + out.stderr
    configs = json.loads(out.stdout)["serving_args"]["llm_configs"]
    assert [(c["model_loading_config"]["model_id"], c["model_loading_config"]["model_source"]) for c in configs] == [
        ("one", source), ("two", source)]
    models.write_text(models.read_text().replace("SERVED_MODEL_NAME: two", "SERVED_MODEL_NAME: one"))
    refused = dry_run()
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "MODELS_FILE entries 1 and 2 are both served as 'one'" in refused.stderr


def test_doctor_checks_engine_arguments_in_the_built_image(up: ComposeStack) -> None:
    """scripts/doctor.sh with ENGINE_KWARGS set runs deploy.py --dry-run in the
    built image (`docker compose run --rm --no-deps`): a tool-call parser vLLM
    lacks fails the check in vLLM's words, a known one passes, and the
    throwaway container is gone afterwards."""
    def engine_args(parser: str) -> list[dict[str, str]]:
        env = {**up.env(), "ENGINE_KWARGS": json.dumps({"enable_auto_tool_choice": True, "tool_call_parser": parser})}
        out = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "doctor.sh"), "--json", "--profile", "cpu"],
                             cwd=REPO_ROOT, env=env, text=True, capture_output=True, timeout=600, check=False)
        assert "{" in out.stdout, out.stdout + out.stderr
        checks = json.loads(out.stdout[out.stdout.index("{"):])["checks"]
        return [c for c in checks if c["name"] == "engine-args"]

    before = set(up.compose("ps", "-aq").stdout.split())
    refused = engine_args("hermess")
    assert [c["status"] for c in refused] == ["fail"], refused
    assert "tool_call_parser='hermess' is not a parser this vLLM knows: did you mean 'hermes'?" in refused[0]["message"]
    accepted = engine_args("hermes")
    assert [c["status"] for c in accepted] == ["pass"], accepted
    assert set(up.compose("ps", "-aq").stdout.split()) == before


def test_serve_config_is_written_from_the_image(up: ComposeStack, tmp_path: Path) -> None:
    """scripts/serve-config.sh (docs/outgrow-compose.md): deploy.py --serve-config
    in the built image of the active profile; the files reach the host's folder,
    hold the stack's app with the image's src/, no planted secret, and no
    container is left behind. Bad settings write nothing."""
    import yaml

    before = set(up.compose("ps", "-aq").stdout.split())
    script = str(REPO_ROOT / "scripts" / "serve-config.sh")
    out = subprocess.run(["bash", script, str(tmp_path / "out")], cwd=tmp_path, env=up.env(), text=True,
                         capture_output=True, timeout=600, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    text = (tmp_path / "out" / "serve-config.yaml").read_text()
    env_text = (tmp_path / "out" / "ray-node.env").read_text()
    [app] = yaml.safe_load(text)["applications"]
    assert app["args"]["llm_configs"][0]["model_loading_config"]["model_id"] == MODEL
    assert "PYTHONPATH=/app/src\n" in env_text
    objects = list(yaml.safe_load_all((tmp_path / "out" / "rayservice.yaml").read_text()))
    assert [o["kind"] for o in objects] == ["RayService", "Deployment", "Service"]
    assert yaml.safe_load(objects[0]["spec"]["serveConfigV2"])["applications"] == [app]
    for name, value in PLANTED.items():
        assert value not in text + env_text + yaml.safe_dump_all(objects), f"{name} is in the Serve config"
    # KubeRay starts Ray in the image with `bash -lc`: a login shell finds the venv's ray and python.
    image = up.env()["LLM_CPU_IMAGE"] if "LLM_CPU_IMAGE" in up.env() else "ray-llm-serve:cpu-local"
    login = up.docker("run", "--rm", "--entrypoint", "/bin/bash", image, "-lc", "command -v ray python")
    assert login.returncode == 0 and login.stdout.split() == ["/opt/venv/bin/ray", "/opt/venv/bin/python"], (
        login.stdout + login.stderr)
    refused = subprocess.run(["bash", script, str(tmp_path / "bad")], cwd=tmp_path,
                             env={**up.env(), "MAX_REPLICAS": "0"}, text=True, capture_output=True, timeout=600,
                             check=False)
    assert refused.returncode != 0 and "MAX_REPLICAS" in refused.stderr, refused.stderr
    assert list((tmp_path / "bad").iterdir()) == []
    assert set(up.compose("ps", "-aq").stdout.split()) == before


def test_download_model_fills_the_cache_volume(up: ComposeStack) -> None:
    """scripts/download-model.sh without --dest: in the image (docker compose run),
    into the model-cache volume, from a stand-in Hub (tests/support/fake_hub.py) that
    listens on the project network's gateway, our own address in 198.19.0.0/16."""
    network = up.docker("network", "inspect", f"{up.project}_llm", "--format",
                        "{{(index .IPAM.Config 0).Gateway}}")
    gateway = network.stdout.strip()
    assert network.returncode == 0 and gateway.startswith("198.19."), network.stdout + network.stderr
    hub = FakeHub({"local-test/tiny-llama": TINY_MODEL_DIR})
    url = hub.start(host=gateway)
    try:
        env = {**up.env(), "HF_ENDPOINT": url, "HF_HUB_OFFLINE": "", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
        done = subprocess.run(["bash", str(REPO_ROOT / "scripts" / "download-model.sh"), "--model",
                               "local-test/tiny-llama"], cwd=REPO_ROOT, env=env, text=True, capture_output=True,
                              timeout=300, check=False)
    finally:
        hub.stop()
    assert done.returncode == 0, done.stdout + done.stderr
    snapshot = f"/cache/huggingface/hub/models--local-test--tiny-llama/snapshots/{FakeHub.commit('local-test/tiny-llama')}"
    assert done.stdout.strip().splitlines()[-1] == snapshot
    assert HF_TOKEN not in done.stdout + done.stderr
    # The token from .secrets (the Compose secret) went with the requests.
    assert {r.authorization for r in hub.requests if "local-test" in r.path} == {f"Bearer {HF_TOKEN}"}
    listing = up.compose("exec", "-T", SERVE, "ls", snapshot)
    expected = sorted(p.name for p in TINY_MODEL_DIR.iterdir() if p.is_file() and not p.name.startswith("."))
    assert sorted(listing.stdout.split()) == expected, listing.stdout + listing.stderr


def test_no_secret_in_docker_inspect(up: ComposeStack) -> None:
    """Every container and image of the project: no planted secret value."""
    ids = up.compose("ps", "-aq").stdout.split()
    assert len(ids) == 2
    inspected = up.docker("inspect", *ids, "ray-llm-serve:cpu-local", "ray-llm-nginx:local")
    assert inspected.returncode == 0, inspected.stderr
    for name, value in PLANTED.items():
        assert value not in inspected.stdout, f"{name} is in docker inspect"
    # ...yet they were used: the key gates the API, the dashboard takes its password.
    assert chat_ok(up)
    dash = httpx.get(up.base_url + "/dashboard/api/version", auth=("admin", DASH_PASSWORD), timeout=30)
    assert dash.status_code == 200, dash.text


# --- The shared gateway (issue 24) -----------------------------------------------

def test_nginx_refuses_an_open_api_on_a_public_address_inside_compose(up: ComposeStack, tmp_path: Path) -> None:
    """.secrets without a key and NGINX_BIND_ADDRESS=0.0.0.0: the nginx
    container stops at its start, naming the variables."""
    secrets = tmp_path / "secrets"
    secrets.write_text(f"HF_TOKEN={HF_TOKEN}\n")
    secrets.chmod(0o600)
    env = {**up.env(), "SECRETS_FILE": str(secrets), "NGINX_BIND_ADDRESS": "0.0.0.0"}
    out = subprocess.run(["docker", "compose", "run", "--rm", "--no-deps", "-T", NGINX], cwd=REPO_ROOT, env=env,
                         text=True, capture_output=True, timeout=300, check=False)
    said = out.stdout + out.stderr
    assert out.returncode != 0, said
    assert "no API key is set" in said and "NGINX_BIND_ADDRESS=0.0.0.0" in said and "NGINX_ALLOW_OPEN_API" in said


def nginx_access_log(s: ComposeStack) -> list[dict[str, Any]]:
    return access_log_entries(s.compose("logs", "--no-color", "--no-log-prefix", NGINX, timeout=60).stdout)


KEY_B = "sk-compose-team-b-0123456789abcdef0123"
KEY_C = "sk-compose-team-c-0123456789abcdef0123"


def reload_nginx(s: ComposeStack) -> subprocess.CompletedProcess[str]:
    """The user's command after editing .secrets."""
    return subprocess.run([str(REPO_ROOT / "scripts" / "reload-nginx.sh")], cwd=REPO_ROOT, env=s.env(),
                          text=True, capture_output=True, timeout=120, check=False)


def long_stream(s: ComposeStack, key: str, outcome: dict[str, object], tokens: int = 400,
                tls: bool = False, hold: threading.Event | None = None) -> threading.Thread:
    """A chat stream of TOKENS tokens in the background; returns once it has
    started. With HOLD, the client stops reading after the first chunk until
    HOLD is set: Nginx cannot hand it the rest (a stream of 1900 tokens,
    about 400 KB, is more than the sockets buffer), so the request stays in flight there
    however fast the engine is."""
    started = threading.Event()

    def run() -> None:
        try:
            for chunk in client(s, key=key, timeout=300, tls=tls).chat.completions.create(
                    model=MODEL, stream=True, max_tokens=tokens, extra_body={"ignore_eos": True},
                    stream_options={"include_usage": True}, messages=[{"role": "user", "content": "count"}]):
                if not started.is_set():
                    started.set()
                    if hold is not None:
                        hold.wait(300)
                if chunk.usage:
                    outcome["completion_tokens"] = chunk.usage.completion_tokens
        except openai.OpenAIError as err:
            outcome["error"] = repr(err)
        finally:
            started.set()

    thread = threading.Thread(target=run)
    thread.start()
    assert started.wait(120), "the stream never started"
    return thread


def test_named_keys_are_added_and_revoked_with_a_reload_inside_compose(up: ComposeStack) -> None:
    """Edit .secrets, run scripts/reload-nginx.sh: the new key works at once, a
    revoked key gets 401, a stream in flight finishes, the model server is not
    restarted, and the log shows the key's name, never the key."""
    serve_started = up.inspect(up.container(SERVE))["State"]["StartedAt"]
    with pytest.raises(openai.AuthenticationError):
        client(up, key=KEY_B).models.list()
    outcome: dict[str, object] = {}
    thread = long_stream(up, API_KEY, outcome)
    try:
        up.write_secrets(f"API_KEY_team_b={KEY_B}\n")
        out = reload_nginx(up)
        assert out.returncode == 0 and "2 API key(s)" in out.stdout + out.stderr, out.stdout + out.stderr
        assert [m.id for m in client(up, key=KEY_B).models.list().data] == [MODEL]
        # Revoked: team_b gone, default kept.
        up.write_secrets()
        assert reload_nginx(up).returncode == 0
        with pytest.raises(openai.AuthenticationError):
            client(up, key=KEY_B).models.list()
        # A bad edit (a key too short) is refused and changes nothing.
        up.write_secrets("API_KEY_team_c=short-key\n")
        out = reload_nginx(up)
        assert out.returncode != 0 and "API_KEY_team_c" in out.stderr and "short-key" not in out.stderr, out.stderr
        assert chat_ok(up)
    finally:
        up.write_secrets()
        thread.join(300)
    assert outcome == {"completion_tokens": 400}, outcome
    assert up.inspect(up.container(SERVE))["State"]["StartedAt"] == serve_started
    names = {entry["key_name"] for entry in nginx_access_log(up)}
    assert {"default", "team_b", ""} <= names, names
    logs = up.compose("logs", "--no-color", timeout=60).stdout
    assert KEY_B not in logs and API_KEY not in logs


def recreate_nginx(s: ComposeStack, **settings: str) -> None:
    s.extra_env.update(settings)
    out = s.compose("up", "-d", "--wait", "--no-deps", NGINX, timeout=300)
    assert out.returncode == 0, out.stderr + s.logs()


def timed_completion(s: ComposeStack, key: str, base_url: str) -> float:
    started = time.monotonic()
    r = httpx.post(base_url + "/v1/completions", headers={"Authorization": f"Bearer {key}"}, verify=False,
                   json={"model": MODEL, "prompt": "hello", "max_tokens": 4}, timeout=60)
    assert r.status_code == 200, r.text
    return time.monotonic() - started


def test_per_key_limits_fairness_and_tls_inside_compose(up: ComposeStack) -> None:
    """Nginx recreated with NGINX_KEY_CONN_LIMIT=2 and a certificate:
    - team_c at its limit (2 streams) gets 429 with Retry-After, and the
      default key is served meanwhile at about its idle latency;
    - TLS: HSTS, plain HTTP /v1 redirected, /healthz on HTTP, TLS 1.1 refused."""
    certs = make_cert(up.work_dir / "certs")
    up.write_secrets(f"API_KEY_team_c={KEY_C}\n")
    recreate_nginx(up, NGINX_KEY_CONN_LIMIT="2", NGINX_CERTS_DIR=str(certs))
    try:
        https = up.https_url
        idle = sorted(timed_completion(up, API_KEY, https) for _ in range(3))[1]
        # team_c's two streams are held open (their client reads nothing after
        # the first chunk): the tiny model writes 1900 tokens in a few seconds,
        # and a client that read on could let Nginx finish a stream before the
        # third request (two runs saw a 200 that way).
        hold = threading.Event()
        outcomes: list[dict[str, object]] = [{}, {}]
        streams = [long_stream(up, KEY_C, outcome, tokens=1900, tls=True, hold=hold) for outcome in outcomes]
        try:
            refused = httpx.get(https + "/v1/models", headers={"Authorization": f"Bearer {KEY_C}"}, verify=False,
                                timeout=30)
            assert refused.status_code == 429 and refused.headers["Retry-After"] == "1", refused.text
            assert refused.json()["error"]["code"] == "rate_limit_exceeded"
            busy = sorted(timed_completion(up, API_KEY, https) for _ in range(3))[1]
        finally:
            hold.set()
        print(f"\nfairness: default key's completion median {idle * 1000:.0f} ms idle, "
              f"{busy * 1000:.0f} ms while team_c holds its 2 streams")
        # Served, and not queued behind team_c: a 4-token completion beside two streams.
        assert busy < idle * 4 + 1.0, (idle, busy)
        for thread in streams:
            thread.join(300)
        assert outcomes == [{"completion_tokens": 1900}] * 2, outcomes
        # TLS: HSTS on HTTPS; plain HTTP redirects /v1 and keeps /healthz.
        r = httpx.get(https + "/v1/models", headers={"Authorization": f"Bearer {API_KEY}"}, verify=False, timeout=30)
        assert r.status_code == 200 and r.headers["Strict-Transport-Security"] == "max-age=63072000"
        plain = httpx.get(up.base_url + "/v1/models", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30)
        assert plain.status_code == 308 and plain.headers["Location"].startswith(f"https://127.0.0.1:{up.https_port}/v1/")
        assert httpx.get(up.base_url + "/healthz", timeout=10).status_code == 200
        old = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{up.https_port}", "-tls1_1",
                              "-cipher", "DEFAULT@SECLEVEL=0"], input="", text=True, capture_output=True,
                             timeout=30, check=False)
        assert old.returncode != 0 and "alert protocol version" in old.stderr, old.stderr
    finally:
        up.write_secrets()
        for name in ("NGINX_KEY_CONN_LIMIT", "NGINX_CERTS_DIR"):
            up.extra_env.pop(name, None)
        recreate_nginx(up)


def process_environments(s: ComposeStack, service: str) -> dict[int, str]:
    """/proc/<pid>/environ of every process of the service's container, read
    from the host (the suite runs as root; `docker top` gives host PIDs)."""
    top = s.docker("top", s.container(service), "-eo", "pid")
    assert top.returncode == 0, top.stderr
    environments: dict[int, str] = {}
    for pid in (int(line) for line in top.stdout.split()[1:]):
        try:
            environments[pid] = Path(f"/proc/{pid}/environ").read_bytes().replace(b"\0", b"\n").decode(errors="replace")
        except FileNotFoundError:  # exited meanwhile
            continue
    return environments


def test_each_process_gets_only_the_secrets_it_needs(up: ComposeStack) -> None:
    """/proc/<pid>/environ of every process of each container: the model server
    never holds Nginx's keys or passwords, the tunnel token or Grafana's
    password; Nginx never holds the HF token, the adapter store's secret, the
    tunnel token or Grafana's password. The server's private copy of .secrets
    has only its own lines."""
    never = {SERVE: [API_KEY, DASH_PASSWORD, TUNNEL_TOKEN, GRAFANA_PASSWORD, HF_TOKEN],
             NGINX: [HF_TOKEN, S3_SECRET, TUNNEL_TOKEN, GRAFANA_PASSWORD]}
    for service, values in never.items():
        environments = process_environments(up, service)
        assert len(environments) >= (10 if service == SERVE else 2), environments.keys()
        for pid, environ in environments.items():
            for value in values:
                assert value not in environ, f"{service} {pid} holds a secret it does not need"
    # Ray's own processes do hold Ray's token and the store's keys (Ray and
    # boto3 read them there); the HF token went to a file.
    serving = process_environments(up, SERVE).values()
    assert any(RAY_TOKEN in environ for environ in serving)
    assert any(f"AWS_SECRET_ACCESS_KEY={S3_SECRET}" in environ for environ in serving)
    copy = up.docker("exec", up.container(SERVE), "cat", "/run/ray-llm/secrets")
    assert copy.returncode == 0, copy.stderr
    assert sorted(line.split("=", 1)[0] for line in copy.stdout.splitlines()) == [
        "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "HF_TOKEN", "RAY_AUTH_TOKEN"]


def test_request_bounds_inside_compose(up: ComposeStack) -> None:
    """.env's REQUEST_MAX_N (8) and REQUEST_MAX_TOKENS (4096), in Ray Serve's proxy."""
    for extra, param in (({"n": 9}, "n"), ({"max_tokens": 4097}, "max_tokens")):
        with pytest.raises(openai.BadRequestError) as err:
            client(up).completions.create(model=MODEL, prompt="hi", **extra)  # type: ignore[call-overload]
        assert err.value.body["param"] == param and err.value.body["code"] == "value_above_server_limit", err.value.body
    reply = client(up).completions.create(model=MODEL, prompt="hi", n=2, max_tokens=2)
    assert len(reply.choices) == 2


def test_tmpfs_a_client_can_fill_has_a_size_inside_compose(up: ComposeStack) -> None:
    tmpfs = up.inspect(up.container(NGINX))["HostConfig"]["Tmpfs"]
    assert tmpfs == {"/etc/nginx/conf.d": "mode=0755,size=4m", "/tmp": "mode=1777,size=256m"}, tmpfs
    df = up.docker("exec", up.container(NGINX), "df", "-k", "/tmp")
    assert df.returncode == 0 and " 262144 " in df.stdout, df.stdout
    # Bodies above NGINX_CLIENT_MAX_BODY_SIZE (10m) never reach the tmpfs.
    r = httpx.post(up.base_url + "/v1/completions", timeout=60,
                   headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
                   content=b'{"prompt": "' + b"x" * (11 * 1024 * 1024) + b'"}')
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large", r.text


# --- Every answer under /v1 while the model server comes and goes ----------------

def openai_shaped(status: int, content_type: str, text: str) -> bool:
    if status == 200:
        return True
    if not content_type.startswith("application/json"):
        return False
    try:
        error = json.loads(text)["error"]
    except (ValueError, KeyError, TypeError):
        return False
    return isinstance(error, dict) and set(error) == {"message", "type", "param", "code"}


@contextlib.contextmanager
def every_answer_checked(s: ComposeStack, window: str) -> Iterator[list[tuple[int, str, str]]]:
    """Completions sent one after another, 4 per second, for the with-block:
    afterwards each answer must be a 200 or an error in OpenAI's shape (never
    HAProxy's or Nginx's text), and some must have failed (the window was hit)."""
    answers: list[tuple[int, str, str]] = []
    stop = threading.Event()

    def probe() -> None:
        with httpx.Client(timeout=120) as http:
            while not stop.is_set():
                try:
                    r = http.post(s.base_url + "/v1/completions", headers={"Authorization": f"Bearer {API_KEY}"},
                                  json={"model": MODEL, "prompt": "hi", "max_tokens": 1})
                    answers.append((r.status_code, r.headers.get("content-type", ""), r.text[:500]))
                except httpx.HTTPError as err:
                    answers.append((0, "", repr(err)))
                stop.wait(0.25)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    try:
        yield answers
    finally:
        stop.set()
        thread.join(150)
    statuses = sorted({a[0] for a in answers})
    print(f"\n{window}: {len(answers)} answers, statuses {statuses}")
    bad = [a for a in answers if not openai_shaped(*a)]
    assert not bad, f"{window}: answers not in OpenAI's shape: {bad[:5]}"
    assert any(a[0] != 200 for a in answers), f"{window}: no request fell into the window ({statuses})"


KILL_DEPLOY_PY = """
import os, signal
for pid in filter(str.isdigit, os.listdir("/proc")):
    argv = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\\0")
    if int(pid) != os.getpid() and argv[0].endswith(b"python") and b"/app/src/deploy.py" in argv:
        os.kill(int(pid), signal.SIGKILL)
        print(pid)
"""


def test_killed_model_server_is_restarted_by_the_restart_policy(up: ComposeStack) -> None:
    serve_id = up.container(SERVE)
    restarts = up.inspect(serve_id)["RestartCount"]
    started = time.monotonic()
    with every_answer_checked(up, "model server killed (HAProxy ingress)"):
        # The image has no pkill: find deploy.py's Python process in /proc.
        kill = up.docker("exec", serve_id, "python", "-c", KILL_DEPLOY_PY)
        assert kill.returncode == 0 and kill.stdout.strip(), kill.stdout + kill.stderr
        wait_for("a restart", lambda: up.inspect(serve_id)["RestartCount"] > restarts, timeout=120, interval=1)
        wait_for("healthy again", lambda: up.health(SERVE) == "healthy", timeout=900, interval=3)
        wait_for("a completion through nginx", lambda: chat_ok(up), timeout=120)
    record("kill_to_serving_s", time.monotonic() - started)


def engine_pids(s: ComposeStack) -> list[int]:
    """Host PIDs of the vLLM engine processes in the model server container."""
    top = s.docker("top", s.container(SERVE), "-eo", "pid,args")
    return [int(line.split(None, 1)[0]) for line in top.stdout.splitlines()[1:] if "EngineCore" in line]


def test_frozen_engine_in_the_container_is_replaced(up: ComposeStack) -> None:
    """The hang watchdog in Compose: SIGSTOP the engine inside the container; it
    is killed (never resumed) and the API answers again with no human step."""
    pids = engine_pids(up)
    assert pids, "no EngineCore process in the container"
    started = time.monotonic()
    try:
        with every_answer_checked(up, "engine frozen, watchdog recovery (HAProxy ingress)"):
            for pid in pids:
                os.kill(pid, signal.SIGSTOP)
            wait_for("a completion through nginx after the freeze", lambda: chat_ok(up), timeout=600, interval=3)
        record("freeze_to_serving_s", time.monotonic() - started)
        assert all(process_gone(pid) for pid in pids), "the frozen engine was not killed"
        logs = up.compose("logs", "--no-color", SERVE, timeout=60).stdout
        assert "watchdog: FIRED" in logs
    finally:
        kill_if_stopped(pids)


SECOND_MODEL = "tiny-two"


def test_recreated_model_server_serves_two_models_and_nginx_follows(up: ComposeStack) -> None:
    """What a user does to add a model: set MODELS_FILE in .env, then
    `docker compose up -d`. The model server is recreated (a new container,
    a new address) with two engines; the same Nginx, never restarted, finds it
    and addresses each model by name; the healthcheck and /readyz ask both."""
    nginx_id = up.container(NGINX)
    before = up.inspect(nginx_id)["State"]
    old_serve = up.container(SERVE)
    models = up.work_dir / "two-models.yaml"
    source = f"/models/{TINY_MODEL_DIR.name}"
    models.write_text(f"models:\n  - {{MODEL_ID: tiny-llama, SERVED_MODEL_NAME: {MODEL}, MODEL_SOURCE: {source}}}\n"
                      f"  - {{MODEL_ID: tiny-llama, SERVED_MODEL_NAME: {SECOND_MODEL}, MODEL_SOURCE: {source},"
                      " MAX_NUM_SEQS: 4, MAX_MODEL_LEN: 512}\n")
    # The single-model variables emptied, as .env must have them beside MODELS_FILE.
    up.extra_env.update(MODELS_FILE=str(models), CPU_MODEL_ID="", SERVED_MODEL_NAME="", MODEL_SOURCE="",
                        # Longer than the next test's freeze (readiness, not the watchdog, is tested there).
                        WATCHDOG_TIMEOUT="90",
                        # Serve's own Python proxy from here on: the start-up window
                        # and the rest of the file run without the HAProxy ingress.
                        RAY_SERVE_ENABLE_HA_PROXY="0")
    started = time.monotonic()
    with every_answer_checked(up, "model server recreated, start-up (Serve's Python proxy)"):
        out = up.compose("up", "-d", "--wait", timeout=1200)  # the user's command; Compose sees the change
    assert out.returncode == 0, out.stderr + up.logs()
    assert up.container(SERVE) != old_serve, "a changed MODELS_FILE must recreate the model server"
    wait_for("a completion through nginx", lambda: chat_ok(up), timeout=120)
    record("recreate_two_models_to_serving_s", time.monotonic() - started)
    after = up.inspect(nginx_id)["State"]
    assert up.container(NGINX) == nginx_id
    assert (after["StartedAt"], after["Running"]) == (before["StartedAt"], True)
    assert up.inspect(nginx_id)["RestartCount"] == 0
    c = client(up, timeout=120)
    assert sorted(m.id for m in c.models.list().data) == sorted([MODEL, SECOND_MODEL])
    for name in (MODEL, SECOND_MODEL):
        reply = c.chat.completions.create(model=name, max_tokens=4, messages=[{"role": "user", "content": "hi"}])
        assert reply.model == name and reply.usage is not None and reply.usage.completion_tokens >= 1
    # Each entry's own engine settings: only the second is limited to 512 tokens.
    with pytest.raises(openai.BadRequestError) as refused:
        c.completions.create(model=SECOND_MODEL, prompt="word " * 400, max_tokens=1)
    assert refused.value.code == "context_length_exceeded", refused.value.body
    assert httpx.get(up.base_url + "/readyz", timeout=30).json() == {"status": "ready"}
    assert len(engine_pids(up)) == 2, "expected one engine per model in the container"


READY_HEADER = {"X-Ray-LLM-Ready": "all"}


def engine_of(s: ComposeStack, name: str) -> int:
    """Host PID of the vLLM engine serving model NAME (a child of its replica)."""
    for pid in engine_pids(s):
        parent = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]
        if f"LLMServer:{name}" in Path(f"/proc/{parent}/cmdline").read_text():
            return pid
    raise AssertionError(f"no EngineCore process found for {name}")


def healthcheck(s: ComposeStack) -> subprocess.CompletedProcess[str]:
    """The container's own healthcheck command, run now."""
    return s.docker("exec", s.container(SERVE), "/app/docker/container-entrypoint.sh", "python",
                    "/app/src/healthcheck.py", timeout=120)


RAY_PROBE_PY = """
import json, os, sys, urllib.error, urllib.request
request = urllib.request.Request(f"http://127.0.0.1:{os.environ['RAY_API_PORT']}/v1/completions", method="POST",
                                 data=b'{"prompt": "ping", "max_tokens": 1}',
                                 headers={"Content-Type": "application/json", "X-Ray-LLM-Ready": "all"})
try:
    with urllib.request.urlopen(request, timeout=float(sys.argv[1])) as answer:
        print(answer.status, answer.read().decode())
except urllib.error.HTTPError as err:
    print(err.code, err.read().decode())
"""


def ray_probe(s: ComposeStack, timeout: float = 60) -> httpx.Response:
    """The healthcheck's request to Ray Serve, inside the container (no Ray
    port is published), for its status and JSON."""
    out = s.docker("exec", s.container(SERVE), "python", "-c", RAY_PROBE_PY, str(timeout), timeout=timeout + 30)
    assert out.returncode == 0, out.stderr
    status, body = out.stdout.strip().split(" ", 1)
    return httpx.Response(int(status), content=body.encode(), headers={"content-type": "application/json"})


def test_readiness_names_the_model_that_does_not_answer(up: ComposeStack) -> None:
    """/readyz and the healthcheck ask every model of MODELS_FILE: one engine is
    frozen for a moment (SIGSTOP, then SIGCONT well inside WATCHDOG_TIMEOUT)
    and both name it, while the other model still answers by name."""
    names = (MODEL, SECOND_MODEL)
    probe = ray_probe(up)
    assert probe.status_code == 200, probe.text
    assert probe.json() == {"status": "ready", "models": {name: "ready" for name in names}}
    assert healthcheck(up).returncode == 0
    # The header is the readiness probe's only: Nginx drops it from clients'
    # requests, which stay completions (here: no model named, two served).
    r = httpx.post(up.base_url + "/v1/completions", json={"prompt": "ping", "max_tokens": 1},
                   headers={"Authorization": f"Bearer {API_KEY}", **READY_HEADER}, timeout=30)
    assert r.status_code == 400 and "status" not in r.json(), r.text
    frozen = engine_of(up, SECOND_MODEL)
    os.kill(frozen, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        nginx = httpx.get(up.base_url + "/readyz", timeout=30)
        assert nginx.status_code == 503 and nginx.json()["error"]["code"] == "model_not_ready", nginx.text
        assert time.monotonic() - t0 < 10
        client(up).completions.create(model=MODEL, prompt="hello", max_tokens=2)
        # The healthcheck waits MODEL_TIMEOUT_S for each model, then names the one missing.
        check = healthcheck(up)
    finally:
        os.kill(frozen, signal.SIGCONT)
    assert check.returncode == 1, check.stdout + check.stderr
    assert f"model {SECOND_MODEL!r}: no answer within {MODEL_TIMEOUT_S:.0f}s" in check.stderr, check.stderr
    assert f"model {MODEL!r}" not in check.stderr
    wait_for("both models ready again", lambda: ray_probe(up).status_code == 200, timeout=60, interval=1)
    assert ray_probe(up).json()["models"] == {name: "ready" for name in names}
    assert healthcheck(up).returncode == 0
    assert engine_of(up, SECOND_MODEL) == frozen, "resumed inside WATCHDOG_TIMEOUT: the engine must not be replaced"


def test_stream_in_flight_completes_during_compose_down(up: ComposeStack) -> None:
    """SIGQUIT to nginx, SIGTERM to deploy.py through tini and uv run: the
    stream in flight finishes within SERVE_STOP_GRACE_PERIOD."""
    result: dict[str, Any] = {}
    first_token = threading.Event()

    def stream() -> None:
        tokens = 0
        try:
            for chunk in client(up).chat.completions.create(
                    model=MODEL, stream=True, max_tokens=1500, extra_body={"ignore_eos": True},
                    stream_options={"include_usage": True}, messages=[{"role": "user", "content": "go"}]):
                if chunk.choices and chunk.choices[0].delta.content:
                    tokens += 1
                    first_token.set()
                if chunk.choices and chunk.choices[0].finish_reason:
                    result["finish"] = chunk.choices[0].finish_reason
                if chunk.usage:
                    result["completion_tokens"] = chunk.usage.completion_tokens
        except Exception as err:  # noqa: BLE001 - reported below
            result["error"] = repr(err)
        finally:
            result["chunks"] = tokens
            first_token.set()

    thread = threading.Thread(target=stream)
    thread.start()
    assert first_token.wait(120), "the stream never started"
    assert "error" not in result, result
    # `down` removes the containers: follow the model server's log meanwhile.
    follow = subprocess.Popen(["docker", "logs", "-f", "--since", "1s", up.container(SERVE)], env=up.env(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    started = time.monotonic()
    down = up.compose("down", "--timeout", "60", timeout=300)
    stop_s = time.monotonic() - started
    thread.join(120)
    serve_log, _ = follow.communicate(timeout=60)
    record("compose_down_with_stream_s", stop_s)
    assert down.returncode == 0, down.stderr
    assert result.get("finish") == "length" and result.get("completion_tokens") == 1500, result
    assert "deploy.py: SIGTERM: draining" in serve_log and "deploy.py: stopped cleanly" in serve_log, serve_log[-3000:]
