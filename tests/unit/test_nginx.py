"""The Nginx front: the real template, rendered by scripts/render-nginx.sh the way
the official image renders it, run by the real nginx in front of a scripted
Ray Serve / dashboard stand-in. Everything on loopback, ephemeral ports."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import ssl
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from support import REPO_ROOT, require_tool
from support.nginx import (
    NEEDS_NGINX,
    ENVSH,
    OPENSSL,
    SSE_EVENTS,
    SSE_INTERVAL_S,
    TEMPLATES,
    NginxStack,
    base_env,
    make_cert,
    nginx_test,
    raw_http,
    render,
    wait_for,
    worker_traversable_dir,
)

pytestmark = NEEDS_NGINX

API_KEY = "sk-test.Key+42/abc=_~0123456789abcdef"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
DASH_USER = "ops admin"
# Spaces, quotes, $, %, braces and '#': written to the password file as is.
DASH_PASSWORD = "p4ss w0rd\"'$x%s{y}#z"
RAY_TOKEN = "ray-token.0123456789abcdef_~+/="
DASH_ENV = {"NGINX_DASHBOARD_USER": DASH_USER, "NGINX_DASHBOARD_PASSWORD": DASH_PASSWORD,
            "RAY_AUTH_TOKEN": RAY_TOKEN}
OUR_VARS = re.compile(r"\$\{?(NGINX_|RAY_|OPENAI_)[A-Z_]*")

_STACKS: list[NginxStack] = []


def _start(tmp: Path, **overrides: str) -> NginxStack:
    stack = NginxStack(tmp, base_env(**overrides))
    _STACKS.append(stack)
    return stack.start()


def _stop(stack: NginxStack) -> None:
    stack.stop()
    if stack in _STACKS:
        _STACKS.remove(stack)


@pytest.fixture(autouse=True)
def _nginx_log_on_failure() -> Iterator[None]:
    """Print the tail of every running nginx's log; pytest shows it only for failed tests."""
    yield
    for stack in _STACKS:
        print(f"--- tail of {stack.log_path} ---\n{stack.log_tail()}")


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NginxStack]:
    """API key set, 1k body limit, plain HTTP (with certificates, HTTP only
    redirects /v1: tests/unit/test_gateway.py)."""
    tmp = tmp_path_factory.mktemp("nginx-secured")
    stack = _start(tmp, OPENAI_API_KEY=API_KEY, NGINX_CLIENT_MAX_BODY_SIZE="1k")
    yield stack
    _stop(stack)


@pytest.fixture(scope="module")
def with_certs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NginxStack]:
    """API key set, certificates present."""
    tmp = tmp_path_factory.mktemp("nginx-certs")
    stack = _start(tmp, OPENAI_API_KEY=API_KEY, NGINX_CERTS_DIR=str(make_cert(tmp / "certs")))
    yield stack
    _stop(stack)


@pytest.fixture(scope="module")
def open_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NginxStack]:
    """No API key, no certificates."""
    stack = _start(tmp_path_factory.mktemp("nginx-open"), OPENAI_API_KEY="")
    yield stack
    _stop(stack)


@pytest.fixture
def fresh_stack(tmp_path: Path) -> Iterator[NginxStack]:
    """A stack of its own, for tests that stop its upstream."""
    stack = _start(tmp_path, OPENAI_API_KEY="")
    yield stack
    _stop(stack)


@pytest.fixture(scope="module")
def dashboard_stack() -> Iterator[NginxStack]:
    """Dashboard on (user, password, Ray token), API key set. In a folder nginx's
    workers can reach: they read the password file."""
    tmp = worker_traversable_dir("ray-llm-nginx-dashboard-")
    try:
        stack = _start(tmp, OPENAI_API_KEY=API_KEY, **DASH_ENV)
        yield stack
        _stop(stack)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def assert_json_error(response: httpx.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if code is not None:
        assert error["code"] == code
    return body


# --- Rendering ----------------------------------------------------------------------

def _render_ok(tmp_path: Path, **overrides: str) -> str:
    out = tmp_path / "conf"
    rendered = render(out, base_env(**overrides))
    assert rendered.returncode == 0, rendered.stderr
    checked = nginx_test(out, tmp_path / "prefix")
    assert checked.returncode == 0, checked.stderr
    # nginx.conf with the API's routes (api-server.conf, in both servers).
    text = (out / "nginx.conf").read_text() + (out / "api-server.conf").read_text()
    rendered_files = sorted(out.glob("*.conf"))
    assert {f.name for f in rendered_files} >= {"nginx.conf", "api-server.conf", "https.conf", "error-pages.conf",
                                                "dashboard-on.conf", "dashboard-off.conf"}
    for path in rendered_files:
        leftover = OUR_VARS.search(path.read_text())
        assert leftover is None, f"{path.name}: unrendered {leftover.group(0)}"
    # nginx's own variables must survive envsubst.
    assert "$host;" in text and "default $request_id;" in text and "$http_authorization" in text
    return text


def test_render_defaults_passes_nginx_t(tmp_path: Path) -> None:
    text = _render_ok(tmp_path)
    assert "worker_processes auto;" in text
    assert re.search(r'^\s*"" 1;', text, re.M), "no key on loopback: the API must be open"
    assert (tmp_path / "conf" / "api-keys.conf").read_text() == ""
    assert 'include "/dev/null";' in text and 'map "0:$https:$ray_llm_tunnel"' in text, "no certificates: no HTTPS"
    assert "client_max_body_size 10m;" in text and "proxy_read_timeout 600s;" in text
    assert "client_header_timeout 15s;" in text and "client_body_timeout 30s;" in text
    # .env's limits: requests in flight per address (256) and per key (64);
    # the rates off (empty zone keys, placeholder rates).
    assert re.search(r'map "0" \$ray_llm_rate_key', text) and re.search(r'map "1" \$ray_llm_conn_key', text)
    assert re.search(r'map "0:\$api_key_name" \$ray_llm_key_rate_key', text)
    assert re.search(r'map "1:\$api_key_name" \$ray_llm_key_conn_key', text)
    assert "rate=1r/s;" in text and "limit_conn ray_llm_api_conn 256;" in text
    assert "limit_conn ray_llm_key_conn 64;" in text
    # Dashboard off: nothing proxied to it, no password file.
    assert "include dashboard-off.conf;" in text
    assert not (tmp_path / "conf" / "dashboard.htpasswd").exists()


@pytest.mark.parametrize("burst", ["0", ""])
def test_rate_limit_without_burst_renders(tmp_path: Path, burst: str) -> None:
    """NGINX_RATE_BURST=0 (or empty) means no burst; nginx itself refuses burst=0."""
    text = _render_ok(tmp_path, NGINX_RATE_LIMIT="1r/m", NGINX_RATE_BURST=burst)
    assert re.search(r"limit_req zone=ray_llm_api_rate\s+nodelay;", text), text


def test_render_with_limits_and_dashboard(tmp_path: Path) -> None:
    out = tmp_path / "conf"
    text = _render_ok(tmp_path, NGINX_RATE_LIMIT="600r/m", NGINX_RATE_BURST="5", NGINX_CONN_LIMIT="4",
                      NGINX_CLIENT_HEADER_TIMEOUT="3s", **DASH_ENV)
    assert re.search(r'map "1" \$ray_llm_rate_key', text) and re.search(r'map "1" \$ray_llm_conn_key', text)
    assert "rate=600r/m;" in text and "burst=5 nodelay;" in text and "limit_conn ray_llm_api_conn 4;" in text
    assert "client_header_timeout 3s;" in text and "include dashboard-on.conf;" in text
    assert f'proxy_set_header Authorization "Bearer {RAY_TOKEN}";' in (out / "dashboard-on.conf").read_text()
    htpasswd = out / "dashboard.htpasswd"
    assert htpasswd.read_bytes() == f"{DASH_USER}:{{PLAIN}}{DASH_PASSWORD}\n".encode()
    assert stat.S_IMODE(htpasswd.stat().st_mode) == 0o600
    # Rendered again with the dashboard off: the password file goes away.
    assert render(out, base_env()).returncode == 0
    assert not htpasswd.exists() and "include dashboard-off.conf;" in (out / "api-server.conf").read_text()


def test_render_with_key_and_workers(tmp_path: Path) -> None:
    text = _render_ok(tmp_path, OPENAI_API_KEY=API_KEY, NGINX_WORKER_PROCESSES="2")
    assert "worker_processes 2;" in text
    assert re.search(r'^\s*"" 0;', text, re.M)
    keys = (tmp_path / "conf" / "api-keys.conf").read_text()
    assert keys == '"~^Bearer sk-test[.]Key[+]42/abc=_~0123456789abcdef$" "default";\n'
    assert API_KEY not in text


def test_render_with_certs_adds_https(tmp_path: Path) -> None:
    if OPENSSL is None:
        pytest.skip("needs the openssl CLI to make a certificate")
    certs = make_cert(tmp_path / "certs")
    env_port = "8443"
    text = _render_ok(tmp_path, NGINX_CERTS_DIR=str(certs), NGINX_HTTPS_PORT=env_port)
    https = (tmp_path / "conf" / "https.conf").read_text()
    assert f'include "{tmp_path / "conf" / "https.conf"}";' in text
    assert f"listen 127.0.0.1:{env_port} ssl;" in https and f'"{certs}/tls.key"' in https


def test_relative_certs_dir_is_relative_to_docker(tmp_path: Path) -> None:
    if OPENSSL is None:
        pytest.skip("needs the openssl CLI to make a certificate")
    certs = make_cert(tmp_path / "certs")
    docker_dir = REPO_ROOT / "docker"
    relative = os.path.relpath(certs, docker_dir)
    text = _render_ok(tmp_path, NGINX_CERTS_DIR=relative)
    assert "https.conf" in text
    assert f'"{certs}/tls.crt"' in (tmp_path / "conf" / "https.conf").read_text()


@pytest.mark.parametrize("bad_key", ['abc"def', "ab;c", "a$b", "a b", "a{b}", "a\nb", "k'ey"])
def test_bad_key_is_refused_without_echoing_it(tmp_path: Path, bad_key: str) -> None:
    rendered = render(tmp_path / "conf", base_env(OPENAI_API_KEY=bad_key))
    assert rendered.returncode != 0
    assert "OPENAI_API_KEY" in rendered.stderr and "Allowed" in rendered.stderr
    assert bad_key not in rendered.stderr + rendered.stdout
    assert not (tmp_path / "conf" / "nginx.conf").exists()


@pytest.mark.parametrize("name, value", [
    ("NGINX_WORKER_PROCESSES", "many"), ("NGINX_HTTP_PORT", "80;"), ("RAY_API_PORT", "70000"),
    ("NGINX_CLIENT_MAX_BODY_SIZE", "10 m"), ("NGINX_PROXY_READ_TIMEOUT", "soon"),
    ("NGINX_UPSTREAM_HOST", "ray-serve;evil"), ("NGINX_UPSTREAM_HOST", ""),
    ("NGINX_RATE_LIMIT", "10/s"), ("NGINX_RATE_LIMIT", "fast"), ("NGINX_RATE_LIMIT", "0r/s"),
    ("NGINX_RATE_LIMIT", "10r/s;"), ("NGINX_RATE_BURST", "-1"), ("NGINX_CONN_LIMIT", "two"),
    ("NGINX_CLIENT_HEADER_TIMEOUT", "soon"), ("NGINX_CLIENT_BODY_TIMEOUT", "1 m"),
    ("NGINX_KEY_RATE_LIMIT", "5/s"), ("NGINX_KEY_RATE_BURST", "x"), ("NGINX_KEY_CONN_LIMIT", "-2"),
    ("NGINX_ALLOW_OPEN_API", "yes"),
])
def test_bad_setting_is_refused(tmp_path: Path, name: str, value: str) -> None:
    rendered = render(tmp_path / "conf", base_env(**{name: value}))
    assert rendered.returncode != 0 and name in rendered.stderr, rendered.stderr


@pytest.mark.parametrize("overrides, named", [
    ({"RAY_AUTH_TOKEN": ""}, "RAY_AUTH_TOKEN"),
    ({"NGINX_DASHBOARD_PASSWORD": ""}, "NGINX_DASHBOARD_PASSWORD"),
    ({"NGINX_DASHBOARD_USER": ""}, "NGINX_DASHBOARD_USER"),
    ({"NGINX_DASHBOARD_USER": "ops:admin"}, "NGINX_DASHBOARD_USER"),
    ({"NGINX_DASHBOARD_USER": "ops\nadmin"}, "NGINX_DASHBOARD_USER"),
    # Nginx's password file would silently check only what comes before ':'.
    ({"NGINX_DASHBOARD_PASSWORD": DASH_PASSWORD + ":more"}, "NGINX_DASHBOARD_PASSWORD"),
    ({"NGINX_DASHBOARD_PASSWORD": DASH_PASSWORD + "\nmore"}, "NGINX_DASHBOARD_PASSWORD"),
    ({"NGINX_DASHBOARD_PASSWORD": DASH_PASSWORD + "\rmore"}, "NGINX_DASHBOARD_PASSWORD"),
    ({"RAY_AUTH_TOKEN": RAY_TOKEN + '";evil'}, "RAY_AUTH_TOKEN"),
], ids=["no-token", "no-password", "no-user", "colon-user", "newline-user", "colon-password",
        "newline-password", "cr-password", "bad-token"])
def test_dashboard_misconfiguration_is_refused(tmp_path: Path, overrides: dict[str, str], named: str) -> None:
    env = base_env(**{**DASH_ENV, **overrides})
    rendered = render(tmp_path / "conf", env)
    assert rendered.returncode != 0 and named in rendered.stderr, rendered.stderr
    output = rendered.stderr + rendered.stdout
    assert DASH_PASSWORD not in output and RAY_TOKEN not in output  # never printed, even in part
    assert not (tmp_path / "conf" / "nginx.conf").exists()
    assert not (tmp_path / "conf" / "dashboard.htpasswd").exists()


RENDER_SH = REPO_ROOT / "docker" / "nginx" / "render.sh"
SHELLS = [["sh"], ["busybox", "sh"]]  # Debian's dash, and the Alpine image's busybox


def _render_sh(shell: list[str], env: dict[str, str], out: Path) -> subprocess.CompletedProcess[str]:
    """docker/nginx/render.sh as the nginx image runs it (no host wrapper)."""
    require_tool(shell[0])
    return subprocess.run([*shell, str(RENDER_SH), str(TEMPLATES), str(out)], env=env, text=True,
                          capture_output=True, timeout=30, check=False)


@pytest.mark.parametrize("shell", SHELLS, ids=["sh", "busybox"])
def test_bad_key_stops_the_image_render(shell: list[str], tmp_path: Path) -> None:
    bad = _render_sh(shell, base_env(OPENAI_API_KEY="ab;c"), tmp_path / "bad")
    assert bad.returncode != 0 and not (tmp_path / "bad" / "nginx.conf").exists()
    assert "OPENAI_API_KEY" in bad.stderr and "ab;c" not in bad.stderr
    good = _render_sh(shell, base_env(OPENAI_API_KEY=API_KEY), tmp_path / "good")
    assert good.returncode == 0, good.stderr
    assert "Bearer " + re.sub(r"([.+])", r"[\1]", API_KEY) in (tmp_path / "good" / "api-keys.conf").read_text()


@pytest.mark.parametrize("shell", SHELLS, ids=["sh", "busybox"])
def test_dashboard_checks_in_the_image_shells(shell: list[str], tmp_path: Path) -> None:
    """The dashboard checks and the password file, in the shells the image has."""
    out = tmp_path / "out"
    good = _render_sh(shell, base_env(**DASH_ENV), out)
    assert good.returncode == 0, good.stderr
    assert "include dashboard-on.conf;" in (out / "api-server.conf").read_text()
    assert (out / "dashboard.htpasswd").read_text() == f"{DASH_USER}:{{PLAIN}}{DASH_PASSWORD}\n"
    bad = _render_sh(shell, base_env(**{**DASH_ENV, "RAY_AUTH_TOKEN": ""}), tmp_path / "bad")
    assert bad.returncode != 0 and "RAY_AUTH_TOKEN" in bad.stderr
    assert DASH_PASSWORD not in bad.stderr


# Keys need at least 32 characters.
PAD = "-0123456789abcdef0123456789"
SECRETS_FILE_CASES = [
    (f"OPENAI_API_KEY=sk-plain{PAD}\n", f"sk-plain{PAD}"),
    (f"OPENAI_API_KEY='sk-single{PAD}'\n", f"sk-single{PAD}"),
    (f'OPENAI_API_KEY="sk-double{PAD}"\n', f"sk-double{PAD}"),
    (f"export OPENAI_API_KEY=sk-exported{PAD}\n", f"sk-exported{PAD}"),
    (f"  OPENAI_API_KEY=sk-comment{PAD} # a note\n", f"sk-comment{PAD}"),
    (f"# OPENAI_API_KEY=sk-commented-out{PAD}\nOPENAI_API_KEY=sk-real{PAD}", f"sk-real{PAD}"),
    ("HF_TOKEN=hf_x\nOPENAI_API_KEY=\n", ""),
]


@pytest.mark.parametrize("shell", SHELLS, ids=["sh", "busybox"])
@pytest.mark.parametrize(("content", "expected"), SECRETS_FILE_CASES)
def test_secrets_file_is_read_like_python_dotenv(shell: list[str], tmp_path: Path, content: str,
                                                 expected: str) -> None:
    """Compose mounts .secrets as a file (RAY_LLM_SECRETS_FILE); the image's sh
    reads it the way deploy.py (python-dotenv) reads the same file."""
    from dotenv import dotenv_values

    secrets = tmp_path / "secrets"
    secrets.write_text(content)
    assert (dotenv_values(secrets).get("OPENAI_API_KEY") or "") == expected
    env = base_env(RAY_LLM_SECRETS_FILE=str(secrets))
    env.pop("OPENAI_API_KEY", None)
    out = _render_sh(shell, env, tmp_path / "out")
    assert out.returncode == 0, out.stderr
    conf = (tmp_path / "out" / "nginx.conf").read_text()
    keys = (tmp_path / "out" / "api-keys.conf").read_text()
    if expected:
        assert keys == f'"~^Bearer {expected}$" "default";\n' and '"" 0;' in conf
    else:
        assert keys == "" and '"" 1;' in conf  # no key: the API is open (on loopback)
    assert "hf_x" not in conf + keys  # only Nginx's settings are taken


def test_environment_wins_over_the_secrets_file(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    secrets.write_text(f"OPENAI_API_KEY=sk-from-file{PAD}\n")
    out = _render_sh(["sh"], base_env(RAY_LLM_SECRETS_FILE=str(secrets), OPENAI_API_KEY=f"sk-from-env{PAD}"),
                     tmp_path / "out")
    assert out.returncode == 0, out.stderr
    assert "sk-from-env" in (tmp_path / "out" / "api-keys.conf").read_text()


def test_unreadable_secrets_file_stops_the_render(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()  # exists, but cannot be read as a file
    out = _render_sh(["sh"], base_env(RAY_LLM_SECRETS_FILE=str(secrets)), tmp_path / "out")
    assert out.returncode != 0 and "RAY_LLM_SECRETS_FILE" in out.stderr


# --- Real traffic ---------------------------------------------------------------------

@pytest.mark.parametrize("framing", ["chunked", "close"])
def test_sse_stream_is_not_buffered(secured: NginxStack, framing: str) -> None:
    """Ray Serve streams chunked; the close-delimited case is the one that
    proxy_buffering on would hold back (checked by flipping it)."""
    arrivals: list[float] = []
    started = time.monotonic()
    with secured.client() as client, client.stream(
            "POST", secured.url + "/v1/chat/completions", headers={**AUTH, "X-Test-Framing": framing},
            json={"model": "test-model", "stream": True, "messages": [{"role": "user", "content": "hi"}]}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data:"):
                arrivals.append(time.monotonic() - started)
    assert len(arrivals) == SSE_EVENTS + 1
    total = arrivals[-1]
    assert total >= SSE_EVENTS * SSE_INTERVAL_S * 0.8
    # Unbuffered: the first token arrives long before the last one.
    assert arrivals[0] < 0.5 * total, arrivals


def test_api_key_is_required_and_not_forwarded(secured: NginxStack) -> None:
    assert secured.api is not None
    with secured.client() as client:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {API_KEY.upper()}"},
                        # '.' and '+' of the key must match literally, not as regex.
                        {"Authorization": "Bearer sk-testXKey++42/abc=_~"},
                        {"Authorization": f"Bearer {API_KEY}x"}, {"Authorization": API_KEY}):
            r = client.get(secured.url + "/v1/models", headers=headers)
            assert_json_error(r, 401, "invalid_api_key")
            assert r.headers["www-authenticate"] == "Bearer"
            assert r.json()["error"]["type"] == "invalid_request_error"
        before = len(secured.api.seen)
        r = client.get(secured.url + "/v1/models", headers=AUTH)
    assert r.status_code == 200 and r.json()["data"][0]["id"] == "test-model"
    assert r.headers["x-upstream-saw-authorization"] == "<none>"
    assert len(secured.api.seen) == before + 1, "rejected requests must not reach the upstream"
    assert "authorization" not in secured.api.seen[-1].headers


def test_open_api_without_key(open_stack: NginxStack) -> None:
    with open_stack.client() as client:
        plain = client.get(open_stack.url + "/v1/models")
        with_header = client.get(open_stack.url + "/v1/models", headers={"Authorization": "Bearer whatever"})
    assert plain.status_code == 200 and with_header.status_code == 200
    assert with_header.headers["x-upstream-saw-authorization"] == "<none>"


def test_body_over_limit_is_413_json(secured: NginxStack) -> None:
    with secured.client() as client:
        r = client.post(secured.url + "/v1/completions", headers=AUTH,
                        json={"prompt": "x" * 2048, "max_tokens": 1})
        small = client.post(secured.url + "/v1/completions", headers=AUTH, json={"prompt": "x", "max_tokens": 1})
    assert_json_error(r, 413, "request_too_large")
    assert small.status_code == 200


def test_healthz_and_unknown_paths(open_stack: NginxStack) -> None:
    with open_stack.client() as client:
        health = client.get(open_stack.url + "/healthz")
        unknown = client.get(open_stack.url + "/nope")
        root = client.post(open_stack.url + "/", content=b"{}")
        upstream_404 = client.get(open_stack.url + "/v1/no-such-route")
        trace = client.request("TRACE", open_stack.url + "/v1/models")
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    assert health.headers["content-type"] == "application/json"
    assert "server" not in health.headers or health.headers["server"] == "nginx"  # server_tokens off
    assert_json_error(unknown, 404, "not_found")
    assert_json_error(root, 404, "not_found")
    # An upstream 404 without the model server's X-Ray-LLM-Error (HAProxy's
    # "not routed yet"): retry later (tests/unit/test_gateway.py has the rest).
    assert_json_error(upstream_404, 503, "model_not_ready")
    assert_json_error(trace, 405)


def test_malformed_request_gets_json_400(open_stack: NginxStack) -> None:
    port = int(open_stack.env["NGINX_HTTP_PORT"])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: \x01bad\r\n\r\n")
        raw = b""
        while b"}}" not in raw:
            chunk = sock.recv(4096)
            if not chunk:
                break
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), raw
    assert b"Content-Type: application/json" in head
    assert json.loads(body)["error"]["code"] == "bad_request"


def test_request_id_round_trips(open_stack: NginxStack) -> None:
    with open_stack.client() as client:
        given = client.get(open_stack.url + "/v1/models", headers={"X-Request-Id": "client-id-123"})
        absent = client.get(open_stack.url + "/v1/models")
        junk = client.get(open_stack.url + "/v1/models", headers={"X-Request-Id": "bad id\"with junk"})
        on_error = client.get(open_stack.url + "/nope", headers={"X-Request-Id": "client-id-404"})
    assert given.headers.get_list("x-request-id") == ["client-id-123"]
    assert given.headers["x-upstream-saw-request-id"] == "client-id-123"
    generated = absent.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated) and absent.headers["x-upstream-saw-request-id"] == generated
    assert re.fullmatch(r"[0-9a-f]{32}", junk.headers["x-request-id"])
    assert on_error.headers["x-request-id"] == "client-id-404"


def test_readyz_exercises_the_model(secured: NginxStack) -> None:
    assert secured.api is not None
    with secured.client() as client:
        r = client.get(secured.url + "/readyz", headers={"Authorization": "Bearer client-secret"})
        assert r.status_code == 200 and r.json() == {"status": "ready"}, r.text
        probe = secured.api.seen[-1]
        assert (probe.method, probe.path) == ("POST", "/v1/completions")
        assert json.loads(probe.body) == {"prompt": "ping", "max_tokens": 1}
        assert probe.headers["content-type"] == "application/json" and "authorization" not in probe.headers
        secured.api.set_ready(False)  # the engine is "loading": Ray answers, the model does not
        try:
            assert_json_error(client.get(secured.url + "/readyz"), 503, "model_not_ready")
        finally:
            secured.api.set_ready(True)


def test_dashboard_is_off_by_default(open_stack: NginxStack) -> None:
    assert open_stack.dashboard is not None
    basic = httpx.BasicAuth(DASH_USER, DASH_PASSWORD)
    with open_stack.client() as client:
        for path in ("/dashboard", "/dashboard/", "/dashboard/api/version"):
            for auth in (None, basic):
                body = assert_json_error(client.get(open_stack.url + path, auth=auth), 404, "dashboard_disabled")
                assert "NGINX_DASHBOARD_USER" in body["error"]["message"]
        assert_json_error(client.post(open_stack.url + "/dashboard/api/jobs/", json={}), 404, "dashboard_disabled")
    assert open_stack.dashboard.seen == []


def test_dashboard_needs_basic_auth_and_gets_ray_token(dashboard_stack: NginxStack) -> None:
    stack = dashboard_stack
    assert stack.dashboard is not None
    url = stack.url + "/dashboard/api/version"
    with stack.client() as client:
        for auth, headers in ((None, {}), (httpx.BasicAuth(DASH_USER, "wrong"), {}),
                              (httpx.BasicAuth(DASH_USER, DASH_PASSWORD[:-1]), {}),
                              (httpx.BasicAuth(DASH_USER.upper(), DASH_PASSWORD), {}),
                              (None, AUTH), (None, {"Authorization": f"Bearer {RAY_TOKEN}"})):
            r = client.get(url, auth=auth, headers=headers)
            assert_json_error(r, 401, "invalid_dashboard_credentials")
            assert r.headers.get_list("www-authenticate") == ['Basic realm="Ray dashboard"']
            assert r.headers["x-request-id"]
        assert stack.dashboard.seen == [], "rejected requests must not reach the dashboard"
        r = client.get(url, auth=httpx.BasicAuth(DASH_USER, DASH_PASSWORD))
        page = client.get(stack.url + "/dashboard/", auth=httpx.BasicAuth(DASH_USER, DASH_PASSWORD))
        redirect = client.get(stack.url + "/dashboard")
    assert r.status_code == 200 and "ray dashboard /api/version" in r.text, r.text
    assert page.status_code == 200 and "ray dashboard /" in page.text
    # Ray's token replaces the basic-auth credentials upstream.
    assert r.headers["x-upstream-saw-authorization"] == f"Bearer {RAY_TOKEN}"
    seen = stack.dashboard.seen
    assert [x.headers["authorization"] for x in seen] == [f"Bearer {RAY_TOKEN}"] * 2
    assert not any("Basic" in x.headers["authorization"] for x in seen)
    # The redirect has a JSON body too.
    assert_json_error(redirect, 301, "moved_permanently")
    assert redirect.headers["location"] == "/dashboard/"


def test_dashboard_is_read_only(dashboard_stack: NginxStack) -> None:
    stack = dashboard_stack
    assert stack.dashboard is not None
    before = len(stack.dashboard.seen)
    with stack.client() as client:
        for method in ("POST", "PUT", "DELETE", "PATCH"):
            r = client.request(method, stack.url + "/dashboard/api/jobs/", json={"entrypoint": "rm -rf /"},
                               auth=httpx.BasicAuth(DASH_USER, DASH_PASSWORD))
            assert_json_error(r, 403, "forbidden")
        anonymous = client.post(stack.url + "/dashboard/api/jobs/", json={"entrypoint": "rm -rf /"})
    assert anonymous.status_code in (401, 403) and anonymous.json()["error"]
    assert len(stack.dashboard.seen) == before


def test_https_when_certs_exist(with_certs: NginxStack) -> None:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with httpx.Client(verify=context, trust_env=False, timeout=10) as client:
        r = client.get(with_certs.https_url + "/healthz")
        api = client.get(with_certs.https_url + "/v1/models", headers=AUTH)
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    assert api.status_code == 200
    with httpx.Client(trust_env=False, timeout=10) as client:  # plain HTTP to the HTTPS port (497)
        assert_json_error(client.get(f"http://127.0.0.1:{with_certs.env['NGINX_HTTPS_PORT']}/healthz"), 400,
                          "http_to_https_port")


def test_upstream_down_fails_fast_with_json(fresh_stack: NginxStack) -> None:
    assert fresh_stack.api is not None
    with fresh_stack.client() as client:
        assert client.get(fresh_stack.url + "/v1/models").status_code == 200  # a keepalive connection exists
        assert client.get(fresh_stack.url + "/readyz").status_code == 200
        fresh_stack.api.stop()
        started = time.monotonic()
        r = client.get(fresh_stack.url + "/v1/models")
        elapsed = time.monotonic() - started
        assert_json_error(r, 503, "model_server_unavailable")
        assert elapsed < 5, f"took {elapsed:.1f}s"
        assert_json_error(client.post(fresh_stack.url + "/v1/chat/completions", json={}), 503)
        assert_json_error(client.get(fresh_stack.url + "/readyz"), 503, "model_not_ready")
        assert client.get(fresh_stack.url + "/healthz").status_code == 200


# --- Every error Nginx makes is JSON ------------------------------------------------

def _assert_raw_json_error(answer: tuple[str, dict[str, str], bytes], status: int, code: str) -> None:
    status_line, headers, body = answer
    assert status_line.startswith(f"HTTP/1.1 {status}"), answer
    assert headers["content-type"] == "application/json", answer
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code, body


@pytest.mark.parametrize("request_bytes, status, code", [
    (b"GARBAGE\r\n\r\n", 400, "bad_request"),  # no request line to speak of
    (b"GET /healthz HTTP/1.1\r\nHost: \x01bad\r\n\r\n", 400, "bad_request"),
    (b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "uri_too_long"),
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n", 431,
     "request_header_too_large"),
    (b"GET /healthz HTTP/2.0\r\nHost: x\r\n\r\n", 505, "http_version_not_supported"),
    (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501,
     "not_implemented"),
    (b"GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 401, "invalid_api_key"),
    (b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 404, "not_found"),
    (b"TRACE /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 405, "method_not_allowed"),
    (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + API_KEY.encode()
     + b"\r\nContent-Length: 4096\r\nConnection: close\r\n\r\n" + b"x" * 4096, 413, "request_too_large"),
    (b"GET /v1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 301, "moved_permanently"),
], ids=["400-request-line", "400-header", "414", "431", "505", "501", "401", "404", "405", "413", "301"])
def test_nginx_errors_are_json(secured: NginxStack, request_bytes: bytes, status: int, code: str) -> None:
    _assert_raw_json_error(raw_http(int(secured.env["NGINX_HTTP_PORT"]), request_bytes), status, code)


def test_upstream_timeout_is_504_json(tmp_path: Path) -> None:
    stack = _start(tmp_path, OPENAI_API_KEY="", NGINX_PROXY_READ_TIMEOUT="1s")
    try:
        started = time.monotonic()
        with stack.client() as client:
            r = client.get(stack.url + "/v1/hang")
        assert_json_error(r, 504, "upstream_timeout")
        assert time.monotonic() - started < 5
    finally:
        _stop(stack)


# --- Rate and connection limits ---------------------------------------------------------

def test_rate_limit_answers_429_json(tmp_path: Path) -> None:
    stack = _start(tmp_path, OPENAI_API_KEY=API_KEY, NGINX_RATE_LIMIT="2r/s", NGINX_RATE_BURST="1")
    try:
        with stack.client() as client:
            answers = [client.get(stack.url + "/v1/models", headers=AUTH) for _ in range(10)]
            codes = [r.status_code for r in answers]
            assert set(codes) == {200, 429} and codes[0] == 200 and codes.count(200) <= 3, codes
            for r in answers:
                if r.status_code == 429:
                    assert assert_json_error(r, 429, "rate_limit_exceeded")["error"]["type"] == "rate_limit_error"
            # Unauthenticated requests have a budget of their own: a 401, not a 429.
            assert client.get(stack.url + "/v1/models").status_code == 401
            # The bucket drains at 2 requests per second.
            wait_for("a request under the rate limit",
                     lambda: client.get(stack.url + "/v1/models", headers=AUTH).status_code == 200, timeout=3)
    finally:
        _stop(stack)


def test_default_limits_leave_normal_use_alone(open_stack: NginxStack) -> None:
    with open_stack.client() as client:
        codes = [client.get(open_stack.url + "/v1/models").status_code for _ in range(30)]
        with open_stack.client() as other, other.stream(
                "POST", open_stack.url + "/v1/chat/completions", json={"stream": True}) as stream:
            assert stream.status_code == 200
            concurrent = client.get(open_stack.url + "/v1/models").status_code
    assert codes == [200] * 30 and concurrent == 200


def test_connection_limit_answers_429_json(tmp_path: Path) -> None:
    stack = _start(tmp_path, OPENAI_API_KEY="", NGINX_CONN_LIMIT="1")
    try:
        with stack.client() as first, stack.client() as second:
            with first.stream("POST", stack.url + "/v1/chat/completions", json={"stream": True}) as stream:
                assert stream.status_code == 200
                r = second.get(stack.url + "/v1/models")
                assert assert_json_error(r, 429, "rate_limit_exceeded")["error"]["type"] == "rate_limit_error"
                events = [line for line in stream.iter_lines() if line.startswith("data:")]
            assert len(events) == SSE_EVENTS + 1
            # The stream is over: its slot is free again.
            wait_for("the connection slot to be free",
                     lambda: second.get(stack.url + "/v1/models").status_code == 200, timeout=3)
    finally:
        _stop(stack)


# --- Slow clients -----------------------------------------------------------------------

def test_slow_loris_is_cut_off(tmp_path: Path) -> None:
    """Headers sent one byte every 2 s: cut off at client_header_timeout (3 s here),
    which bounds the whole header, however steadily the bytes come."""
    header_timeout = 3.0
    stack = _start(tmp_path, OPENAI_API_KEY="", NGINX_CLIENT_HEADER_TIMEOUT=f"{int(header_timeout)}s")
    try:
        trickle = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 20
        started = time.monotonic()
        cut_off_after = None
        with socket.create_connection(("127.0.0.1", int(stack.env["NGINX_HTTP_PORT"])), timeout=5) as sock:
            sock.settimeout(2.0)  # the pace: one byte, then up to 2 s waiting for nginx to give up
            for byte in trickle[:12]:  # bounded: 12 bytes = 24 s at most
                try:
                    sock.sendall(bytes([byte]))
                    answer = sock.recv(4096)
                except socket.timeout:
                    continue
                except OSError:  # reset (reset_timedout_connection) or broken pipe
                    answer = b""
                assert answer == b"", f"nginx answered {answer!r}"  # closed without answering
                cut_off_after = time.monotonic() - started
                break
        assert cut_off_after is not None, "nginx kept a slow-loris connection open"
        assert header_timeout - 0.5 <= cut_off_after <= header_timeout + 2.5, cut_off_after
    finally:
        _stop(stack)
