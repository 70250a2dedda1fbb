"""The shared gateway on the real nginx with stand-in upstreams (issue 24):
never open by accident, named keys from .secrets with a reload that drops no
stream, per-key limits with Retry-After, an unauthenticated budget of its
own, and TLS that refuses old protocols and weak ciphers. The same checks run
against the Compose nginx in tests/integration/compose."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from support import REPO_ROOT
from support.nginx import (
    NEEDS_NGINX,
    OPENSSL,
    SSE_EVENTS,
    NginxStack,
    base_env,
    make_cert,
    render,
    wait_for,
)

pytestmark = NEEDS_NGINX

RELOAD = REPO_ROOT / "docker" / "nginx" / "reload.sh"
KEY_A = "sk-team-a-0123456789abcdef0123456789ab"
KEY_B = "sk-team-b-0123456789abcdef0123456789ab"
KEY_C = "sk-team-c-0123456789abcdef0123456789ab"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def write_secrets(path: Path, **keys: str) -> None:
    """Rewrite .secrets in place (same inode), as a mounted file needs."""
    with path.open("w") as handle:
        handle.write("HF_TOKEN=hf_not_for_nginx\n")
        handle.writelines(f"{name}={value}\n" for name, value in keys.items())
    path.chmod(0o600)


@pytest.fixture
def keyed(tmp_path: Path) -> Iterator[NginxStack]:
    """Keys from a secrets file, as in Compose: default (OPENAI_API_KEY) and team_a."""
    secrets = tmp_path / "secrets"
    write_secrets(secrets, OPENAI_API_KEY=KEY_C, API_KEY_team_a=KEY_A)
    env = base_env(RAY_LLM_SECRETS_FILE=str(secrets), NGINX_KEY_CONN_LIMIT="1",
                   NGINX_KEY_RATE_LIMIT="", NGINX_CONN_LIMIT="0")
    stack = NginxStack(tmp_path, env).start()
    yield stack
    stack.stop()


def reload(stack: NginxStack) -> subprocess.CompletedProcess[str]:
    """docker/nginx/reload.sh, the script `scripts/reload-nginx.sh` runs in the container."""
    env = {**stack.env, "RAY_LLM_NGINX_CONF_DIR": str(stack.workdir / "conf"),
           "RAY_LLM_NGINX_PREFIX": f"{stack.workdir / 'prefix'}/"}
    return subprocess.run(["sh", str(RELOAD)], env=env, text=True, capture_output=True, timeout=60, check=False)


def json_error(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code, error
    return error


# --- 1. Never open by accident -------------------------------------------------------

@pytest.mark.parametrize("address", ["0.0.0.0", "10.1.2.3", "::"])
def test_no_key_on_a_public_address_is_refused(tmp_path: Path, address: str) -> None:
    out = render(tmp_path / "conf", base_env(OPENAI_API_KEY="", NGINX_BIND_ADDRESS=address))
    assert out.returncode != 0
    for name in ("OPENAI_API_KEY", "API_KEY_<NAME>", "NGINX_BIND_ADDRESS", "NGINX_ALLOW_OPEN_API"):
        assert name in out.stderr, out.stderr
    assert not (tmp_path / "conf" / "nginx.conf").exists()


def test_compose_publish_address_counts(tmp_path: Path) -> None:
    """In the bridge network nginx listens on '*'; what counts is where Compose publishes."""
    env = base_env(OPENAI_API_KEY="", NGINX_BIND_ADDRESS="*", NGINX_PUBLISHED_ADDRESS="0.0.0.0")
    assert render(tmp_path / "a", env).returncode != 0
    env = base_env(OPENAI_API_KEY="", NGINX_BIND_ADDRESS="*", NGINX_PUBLISHED_ADDRESS="127.0.0.1")
    assert render(tmp_path / "b", env).returncode == 0


@pytest.mark.parametrize("address", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_no_key_on_loopback_serves(tmp_path: Path, address: str) -> None:
    out = render(tmp_path / "conf", base_env(OPENAI_API_KEY="", NGINX_BIND_ADDRESS=address))
    assert out.returncode == 0, out.stderr


def test_the_dangerous_setting_opens_it_with_a_warning(tmp_path: Path) -> None:
    out = render(tmp_path / "conf", base_env(OPENAI_API_KEY="", NGINX_BIND_ADDRESS="0.0.0.0",
                                              NGINX_ALLOW_OPEN_API="1"))
    assert out.returncode == 0 and "WARNING" in out.stderr and "OPEN" in out.stderr, out.stderr


# --- 2. Named keys -------------------------------------------------------------------

def test_each_named_key_works_and_only_its_name_is_logged(keyed: NginxStack) -> None:
    with keyed.client() as client:
        for key in (KEY_A, KEY_C):
            r = client.get(keyed.url + "/v1/models", headers=bearer(key))
            assert r.status_code == 200 and r.headers["X-Upstream-Saw-Authorization"] == "<none>", r.text
        json_error(client.get(keyed.url + "/v1/models", headers=bearer(KEY_B)), 401, "invalid_api_key")
        # Case matters: a key differing only in case is another key.
        json_error(client.get(keyed.url + "/v1/models", headers=bearer(KEY_A.upper())), 401, "invalid_api_key")
    wait_for("the access log lines", lambda: keyed.log_path.read_text().count('"key_name"') >= 4)
    log = keyed.log_path.read_text()
    names = [entry["key_name"] for entry in keyed.access_log()]
    assert names[:4] == ["team_a", "default", "", ""], names
    rendered = "".join(p.read_text() for p in (keyed.workdir / "conf").glob("*.conf") if p.name != "api-keys.conf")
    for key in (KEY_A, KEY_C):
        assert key not in log and key not in rendered


@pytest.mark.parametrize(("keys", "named"), [
    ({"API_KEY_team_a": "sk-short-0123456789"}, "API_KEY_team_a"),
    ({"OPENAI_API_KEY": KEY_A, "API_KEY_team_a": KEY_A}, "API_KEY_team_a"),
    ({"API_KEY_default": KEY_A, "OPENAI_API_KEY": KEY_B}, "default"),
    ({"API_KEY_team_a": KEY_A[:-1] + "!"}, "API_KEY_team_a"),
], ids=["short", "same-key-twice", "name-default-twice", "bad-character"])
def test_short_duplicate_or_bad_keys_are_refused(tmp_path: Path, keys: dict[str, str], named: str) -> None:
    secrets = tmp_path / "secrets"
    write_secrets(secrets, **keys)
    env = base_env(RAY_LLM_SECRETS_FILE=str(secrets))
    env.pop("OPENAI_API_KEY", None)
    out = render(tmp_path / "conf", env)
    assert out.returncode != 0 and named in out.stderr, out.stderr
    for key in keys.values():
        assert key not in out.stderr + out.stdout


def test_a_name_set_twice_in_the_file_is_refused(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    secrets.write_text(f"API_KEY_team_a={KEY_A}\nAPI_KEY_team_a={KEY_B}\n")
    env = base_env(RAY_LLM_SECRETS_FILE=str(secrets))
    out = render(tmp_path / "conf", env)
    assert out.returncode != 0 and "API_KEY_team_a is set twice" in out.stderr, out.stderr


def stream_in_background(stack: NginxStack, key: str, outcome: dict[str, object]) -> threading.Thread:
    def run() -> None:
        try:
            with stack.client() as client, client.stream("POST", stack.url + "/v1/chat/completions",
                                                         headers=bearer(key), json={"stream": True}) as r:
                outcome["status"] = r.status_code
                outcome["events"] = sum(1 for line in r.iter_lines() if line.startswith("data:"))
        except httpx.HTTPError as err:
            outcome["error"] = repr(err)

    thread = threading.Thread(target=run)
    thread.start()
    wait_for("the stream to start", lambda: bool(stack.api and stack.api.seen), timeout=5)
    return thread


def test_reload_adds_and_revokes_keys_without_dropping_a_stream(keyed: NginxStack) -> None:
    secrets = Path(keyed.env["RAY_LLM_SECRETS_FILE"])
    with keyed.client() as client:
        json_error(client.get(keyed.url + "/v1/models", headers=bearer(KEY_B)), 401, "invalid_api_key")
        # Add team_b while team_a streams.
        outcome: dict[str, object] = {}
        thread = stream_in_background(keyed, KEY_A, outcome)
        write_secrets(secrets, OPENAI_API_KEY=KEY_C, API_KEY_team_a=KEY_A, API_KEY_team_b=KEY_B)
        out = reload(keyed)
        assert out.returncode == 0 and "3 API key(s)" in out.stderr, out.stderr
    # New connections reach the new workers (old ones finish what they serve).
    with keyed.client() as client:
        assert client.get(keyed.url + "/v1/models", headers=bearer(KEY_B)).status_code == 200
        thread.join(30)
        assert outcome == {"status": 200, "events": SSE_EVENTS + 1}, outcome
        # Revoke team_a while it streams: its stream ends normally, new requests get 401.
        outcome = {}
        thread = stream_in_background(keyed, KEY_A, outcome)
        write_secrets(secrets, OPENAI_API_KEY=KEY_C, API_KEY_team_b=KEY_B)
        assert reload(keyed).returncode == 0
    with keyed.client() as client:
        json_error(client.get(keyed.url + "/v1/models", headers=bearer(KEY_A)), 401, "invalid_api_key")
        thread.join(30)
        assert outcome == {"status": 200, "events": SSE_EVENTS + 1}, outcome
        # A bad edit is refused, naming the variable, and the running keys stay.
        write_secrets(secrets, OPENAI_API_KEY=KEY_C, API_KEY_team_b="too-short-key")
        out = reload(keyed)
        assert out.returncode != 0 and "API_KEY_team_b" in out.stderr and "stays" in out.stderr, out.stderr
        assert client.get(keyed.url + "/v1/models", headers=bearer(KEY_B)).status_code == 200
    assert "too-short-key" not in keyed.log_path.read_text()


# --- 3. Per-key limits -----------------------------------------------------------------

def test_a_key_at_its_concurrency_limit_leaves_other_keys_served(keyed: NginxStack) -> None:
    """NGINX_KEY_CONN_LIMIT=1: team_a's second request in flight is a 429 with
    Retry-After; the default key is served meanwhile."""
    outcome: dict[str, object] = {}
    thread = stream_in_background(keyed, KEY_A, outcome)
    with keyed.client() as client:
        refused = client.get(keyed.url + "/v1/models", headers=bearer(KEY_A))
        error = json_error(refused, 429, "rate_limit_exceeded")
        assert error["type"] == "rate_limit_error" and refused.headers["Retry-After"] == "1"
        started = time.monotonic()
        other = client.get(keyed.url + "/v1/models", headers=bearer(KEY_C))
        assert other.status_code == 200 and time.monotonic() - started < 2
    thread.join(30)
    assert outcome == {"status": 200, "events": SSE_EVENTS + 1}, outcome


def test_key_rate_limit_is_per_key(tmp_path: Path) -> None:
    env = base_env(OPENAI_API_KEY=KEY_C, API_KEY_team_a=KEY_A, NGINX_KEY_RATE_LIMIT="2r/s",
                   NGINX_KEY_RATE_BURST="1")
    stack = NginxStack(tmp_path, env).start()
    try:
        with stack.client() as client:
            codes = [client.get(stack.url + "/v1/models", headers=bearer(KEY_A)).status_code for _ in range(8)]
            assert codes[0] == 200 and 429 in codes and codes.count(200) <= 3, codes
            assert client.get(stack.url + "/v1/models", headers=bearer(KEY_C)).status_code == 200
            r = client.get(stack.url + "/v1/models", headers=bearer(KEY_A))
            if r.status_code == 429:
                assert r.headers["Retry-After"] == "1"
    finally:
        stack.stop()


def test_unauthenticated_traffic_has_its_own_budget(keyed: NginxStack) -> None:
    """Wrong keys from an address: 401s, then 429s once their budget (5/s, bursts
    of 10) is spent; a key's requests from the same address go on."""
    with keyed.client() as client:
        codes = [client.get(keyed.url + "/v1/models", headers=bearer(KEY_B)).status_code for _ in range(30)]
        assert codes[:5] == [401] * 5 and codes.count(429) >= 10, codes
        assert client.get(keyed.url + "/v1/models", headers=bearer(KEY_A)).status_code == 200
        assert client.get(keyed.url + "/v1/models").status_code in (401, 429)


def test_connections_per_address_are_capped_before_the_key_is_checked(tmp_path: Path) -> None:
    env = base_env(OPENAI_API_KEY=KEY_C, NGINX_CONN_LIMIT="1")
    stack = NginxStack(tmp_path, env).start()
    try:
        outcome: dict[str, object] = {}
        thread = stream_in_background(stack, KEY_C, outcome)
        with stack.client() as client:
            # No key at all: still counted against the address, so 429, not 401.
            json_error(client.get(stack.url + "/v1/models"), 429, "rate_limit_exceeded")
        thread.join(30)
        assert outcome.get("status") == 200, outcome
    finally:
        stack.stop()


# Documentation addresses (RFC 5737): only ever a header's value, never a peer.
CLIENT_A, CLIENT_B = "192.0.2.7", "192.0.2.8"


def test_behind_the_tunnel_the_client_address_comes_from_cloudflared(keyed: NginxStack) -> None:
    """The tunnel's door (NGINX_TUNNEL_PORT) takes the client's address from
    CF-Connecting-IP, as cloudflared sends it: each client behind the tunnel
    gets its own unauthenticated budget and its own line in the log. The public
    door ignores the same header, so no client can pick its address."""
    tunnel = f"http://127.0.0.1:{keyed.env['NGINX_TUNNEL_PORT']}"
    with keyed.client() as client:
        # A key works through the tunnel's door, the same routes and limits.
        assert client.get(tunnel + "/v1/models", headers={**bearer(KEY_A), "CF-Connecting-IP": CLIENT_A}
                          ).status_code == 200
        # Client A spends its budget of wrong keys; client B still gets 401s.
        codes = [client.get(tunnel + "/v1/models", headers={**bearer(KEY_B), "CF-Connecting-IP": CLIENT_A}
                            ).status_code for _ in range(30)]
        assert codes.count(429) >= 10, codes
        json_error(client.get(tunnel + "/v1/models", headers={**bearer(KEY_B), "CF-Connecting-IP": CLIENT_B}),
                   401, "invalid_api_key")
        # The public door: the header counts for nothing, the address does.
        codes = [client.get(keyed.url + "/v1/models", headers={**bearer(KEY_B), "CF-Connecting-IP": CLIENT_A}
                            ).status_code for _ in range(30)]
        assert codes.count(429) >= 10, codes
        json_error(client.get(keyed.url + "/v1/models", headers={**bearer(KEY_B), "CF-Connecting-IP": CLIENT_B}),
                   429, "rate_limit_exceeded")
    wait_for("the access log lines", lambda: len(keyed.access_log()) >= 63)
    lines = keyed.access_log()
    assert (lines[0]["remote_addr"], lines[0]["peer_addr"], lines[0]["key_name"]) == (CLIENT_A, "127.0.0.1", "team_a")
    assert lines[31]["remote_addr"] == CLIENT_B
    assert {line["remote_addr"] for line in lines[32:]} == {"127.0.0.1"}, lines[32:]


def test_the_tunnels_door_is_never_public(tmp_path: Path) -> None:
    """Where the tunnel's door listens: loopback for host runs and host
    networking, even when the public door binds every address; every address
    only inside the bridge-network container (NGINX_BIND_ADDRESS '*'), whose
    port Compose never publishes."""
    for bind, expected in (("0.0.0.0", "127.0.0.1"), ("127.0.0.1", "127.0.0.1"), ("*", "*")):
        env = base_env(OPENAI_API_KEY=KEY_C, NGINX_BIND_ADDRESS=bind)
        out = tmp_path / bind.replace("*", "star")
        assert render(out, env).returncode == 0
        conf = (out / "nginx.conf").read_text()
        for port in (env["NGINX_TUNNEL_PORT"], env["NGINX_STATUS_PORT"]):
            assert f"listen {expected}:{port};" in conf, (bind, port)


def test_tls_leaves_the_tunnels_door_on_plain_http(tls_stack: NginxStack) -> None:
    """cloudflared speaks plain HTTP to its origin (the edge does the client's
    TLS): the tunnel's door answers /v1 there, with no redirect and no HSTS."""
    with tls_stack.client() as client:
        r = client.get(f"http://127.0.0.1:{tls_stack.env['NGINX_TUNNEL_PORT']}/v1/models", headers=bearer(KEY_C))
        assert r.status_code == 200 and "Strict-Transport-Security" not in r.headers, r.text


# --- 5. OpenAI errors in every window ----------------------------------------------------

@pytest.mark.parametrize(("status", "answered", "code"), [
    (404, 503, "model_not_ready"), (500, 503, "service_unavailable"), (502, 503, "model_server_unavailable"),
    (503, 503, "service_unavailable"), (504, 504, "upstream_timeout"),
])
def test_text_errors_from_upstream_leave_in_openai_shape(keyed: NginxStack, status: int, answered: int,
                                                        code: str) -> None:
    """HAProxy's text/plain answers (app starting, restarting, recovering)."""
    with keyed.client() as client:
        r = client.get(keyed.url + f"/v1/text-error/{status}", headers=bearer(KEY_A))
    json_error(r, answered, code)
    assert "X-Ray-LLM-Error" not in r.headers


@pytest.mark.parametrize("status", [400, 401, 403, 404, 405, 413, 415, 429, 431, 500, 501, 502, 503, 504])
def test_the_model_servers_own_errors_pass_unchanged(keyed: NginxStack, status: int) -> None:
    with keyed.client() as client:
        r = client.get(keyed.url + f"/v1/app-error/{status}", headers=bearer(KEY_A))
    error = json_error(r, status, f"app_{status}")
    assert error["message"] == f"app error {status}" and "X-Ray-LLM-Error" not in r.headers
    assert r.headers["X-Request-Id"]


# --- 7. TLS -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tls_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NginxStack]:
    if OPENSSL is None:
        pytest.skip("needs the openssl CLI")
    tmp = tmp_path_factory.mktemp("gateway-tls")
    stack = NginxStack(tmp, base_env(OPENAI_API_KEY=KEY_C, NGINX_CERTS_DIR=str(make_cert(tmp / "certs")))).start()
    yield stack
    stack.stop()


def s_client(stack: NginxStack, *args: str) -> subprocess.CompletedProcess[str]:
    assert OPENSSL is not None
    return subprocess.run([OPENSSL, "s_client", "-connect", f"127.0.0.1:{stack.env['NGINX_HTTPS_PORT']}",
                           "-servername", "localhost", *args], input="", text=True, capture_output=True,
                          timeout=30, check=False)


def test_plain_http_redirects_the_api_and_keeps_healthz(tls_stack: NginxStack) -> None:
    with tls_stack.client() as client:
        r = client.post(tls_stack.url + "/v1/chat/completions?x=1", headers=bearer(KEY_C), json={})
        assert r.status_code == 308, r.text
        assert r.headers["Location"] == f"https://127.0.0.1:{tls_stack.env['NGINX_HTTPS_PORT']}/v1/chat/completions?x=1"
        assert "Strict-Transport-Security" not in r.headers
        health = client.get(tls_stack.url + "/healthz")
        assert health.status_code == 200 and "Strict-Transport-Security" not in health.headers
    with tls_stack.client(verify=False) as client:
        r = client.get(tls_stack.https_url + "/v1/models", headers=bearer(KEY_C))
        assert r.status_code == 200 and r.headers["Strict-Transport-Security"] == "max-age=63072000"
        denied = client.get(tls_stack.https_url + "/v1/models")
        assert denied.status_code == 401 and denied.headers["Strict-Transport-Security"] == "max-age=63072000"


def test_tls_refuses_old_protocols_and_weak_ciphers(tls_stack: NginxStack) -> None:
    # The client offers TLS 1.1 (seclevel 0 lets OpenSSL 3 do so): refused.
    # The server's alert, not a client that could not even try.
    old = s_client(tls_stack, "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0")
    assert old.returncode != 0 and "alert protocol version" in old.stderr, old.stderr
    # TLS 1.2 with a suite outside Mozilla's intermediate list (no forward secrecy, CBC): refused.
    weak = s_client(tls_stack, "-tls1_2", "-cipher", "AES128-SHA")
    assert weak.returncode != 0 and "alert handshake failure" in weak.stderr, weak.stderr
    good = s_client(tls_stack, "-tls1_2", "-cipher", "ECDHE-RSA-AES128-GCM-SHA256")
    assert good.returncode == 0 and "ECDHE-RSA-AES128-GCM-SHA256" in good.stdout, good.stdout + good.stderr
    modern = s_client(tls_stack, "-tls1_3")
    assert modern.returncode == 0 and "TLSv1.3" in modern.stdout, modern.stdout + modern.stderr
