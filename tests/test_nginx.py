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
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from nginx_support import (
    ENVSH,
    ENVSUBST,
    NGINX,
    OPENSSL,
    SSE_EVENTS,
    SSE_INTERVAL_S,
    NginxStack,
    base_env,
    make_cert,
    nginx_test,
    render,
)

pytestmark = pytest.mark.skipif(
    NGINX is None or ENVSUBST is None,
    reason="needs nginx and envsubst (Debian: apt-get install nginx gettext-base)",
)

API_KEY = "sk-test.Key+42/abc=_~"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
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
    """API key set, certificates present, 1k body limit."""
    tmp = tmp_path_factory.mktemp("nginx-secured")
    certs = make_cert(tmp / "certs")
    stack = _start(tmp, OPENAI_API_KEY=API_KEY, NGINX_CERTS_DIR=str(certs), NGINX_CLIENT_MAX_BODY_SIZE="1k")
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
    text = (out / "nginx.conf").read_text()
    for name in ("nginx.conf", "https.conf"):
        leftover = OUR_VARS.search((out / name).read_text())
        assert leftover is None, f"{name}: unrendered {leftover.group(0)}"
    # nginx's own variables must survive envsubst.
    assert "$host;" in text and "default $request_id;" in text and "$http_authorization" in text
    return text


def test_render_defaults_passes_nginx_t(tmp_path: Path) -> None:
    text = _render_ok(tmp_path)
    assert "worker_processes auto;" in text
    assert re.search(r"^\s*default 1;", text, re.M), "no key: the API must be open"
    assert 'include "/dev/null";' in text, "no certificates: no HTTPS"
    assert "client_max_body_size 10m;" in text and "proxy_read_timeout 600s;" in text


def test_render_with_key_and_workers(tmp_path: Path) -> None:
    text = _render_ok(tmp_path, OPENAI_API_KEY=API_KEY, NGINX_WORKER_PROCESSES="2")
    assert "worker_processes 2;" in text
    assert re.search(r"^\s*default 0;", text, re.M)
    assert '"~^Bearer sk-test[.]Key[+]42/abc=_~$" 1;' in text


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
    docker_dir = Path(__file__).resolve().parent.parent / "docker"
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
])
def test_bad_setting_is_refused(tmp_path: Path, name: str, value: str) -> None:
    rendered = render(tmp_path / "conf", base_env(**{name: value}))
    assert rendered.returncode != 0 and name in rendered.stderr, rendered.stderr


def _entrypoint(shell: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """What the official /docker-entrypoint.sh does with *.envsh: `set -e`, then source."""
    script = ('set -e\nfor f in "$0"; do case "$f" in *.envsh) if [ -x "$f" ]; then . "$f"; fi ;; esac; done\n'
              'echo STARTED; env')
    return subprocess.run([*shell, "-c", script, str(ENVSH)], env=env, text=True, capture_output=True,
                          timeout=30, check=False)


@pytest.mark.parametrize("shell", [["sh"], ["busybox", "sh"]], ids=["sh", "busybox"])
def test_bad_key_stops_the_official_entrypoint(shell: list[str]) -> None:
    if shutil.which(shell[0]) is None:
        pytest.skip(f"{shell[0]} is not installed")
    assert os.access(ENVSH, os.X_OK), "the official entrypoint only sources executable *.envsh"
    bad = _entrypoint(shell, base_env(OPENAI_API_KEY="ab;c"))
    assert bad.returncode != 0 and "STARTED" not in bad.stdout
    assert "OPENAI_API_KEY" in bad.stderr and "ab;c" not in bad.stderr
    good = _entrypoint(shell, base_env(OPENAI_API_KEY=API_KEY))
    assert good.returncode == 0 and "STARTED" in good.stdout, good.stderr
    assert "NGINX_API_AUTH_OPEN=0" in good.stdout.splitlines()  # exported to later scripts


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
    # Upstream errors pass through unchanged.
    assert upstream_404.status_code == 404 and upstream_404.json()["error"]["code"] == "upstream_404"
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


def test_dashboard(secured: NginxStack) -> None:
    assert secured.dashboard is not None
    with secured.client() as client:
        redirect = client.get(secured.url + "/dashboard")
        page = client.get(secured.url + "/dashboard/")
        api = client.get(secured.url + "/dashboard/api/version")
        post = client.post(secured.url + "/dashboard/api/jobs/", json={"entrypoint": "rm -rf /"})
    assert redirect.status_code == 301 and redirect.headers["location"] == "/dashboard/"
    assert page.status_code == 200 and "ray dashboard /" in page.text
    assert api.status_code == 200 and secured.dashboard.seen[-1].path == "/api/version"
    assert_json_error(post, 403)  # read-only: no job submission through the proxy


def test_https_when_certs_exist(secured: NginxStack) -> None:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with httpx.Client(verify=context, trust_env=False, timeout=10) as client:
        r = client.get(secured.https_url + "/healthz")
        api = client.get(secured.https_url + "/v1/models", headers=AUTH)
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    assert api.status_code == 200
    with httpx.Client(trust_env=False, timeout=10) as client:  # plain HTTP to the HTTPS port
        assert_json_error(client.get(f"http://127.0.0.1:{secured.env['NGINX_HTTPS_PORT']}/healthz"), 400)


def test_upstream_down_fails_fast_with_json(fresh_stack: NginxStack) -> None:
    assert fresh_stack.api is not None
    with fresh_stack.client() as client:
        assert client.get(fresh_stack.url + "/v1/models").status_code == 200  # a keepalive connection exists
        assert client.get(fresh_stack.url + "/readyz").status_code == 200
        fresh_stack.api.stop()
        started = time.monotonic()
        r = client.get(fresh_stack.url + "/v1/models")
        elapsed = time.monotonic() - started
        assert_json_error(r, 502, "upstream_unavailable")
        assert elapsed < 5, f"took {elapsed:.1f}s"
        assert_json_error(client.post(fresh_stack.url + "/v1/chat/completions", json={}), 502)
        assert_json_error(client.get(fresh_stack.url + "/readyz"), 503, "model_not_ready")
        assert client.get(fresh_stack.url + "/healthz").status_code == 200
