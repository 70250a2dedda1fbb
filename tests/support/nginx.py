"""Helpers for tests/unit/test_nginx.py: render the real template, run the real nginx
in front of a scripted Ray Serve / dashboard stand-in, all on loopback."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

import httpx
from dotenv import dotenv_values
import pytest

from support import REPO_ROOT, free_port

RENDER = REPO_ROOT / "scripts" / "render-nginx.sh"
ENVSH = REPO_ROOT / "docker" / "nginx" / "entrypoint.d" / "05-ray-llm.envsh"
TEMPLATES = REPO_ROOT / "docker" / "nginx" / "templates"
DOTENV = REPO_ROOT / ".env"

_SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
NGINX = shutil.which("nginx", path=_SEARCH_PATH)
ENVSUBST = shutil.which("envsubst", path=_SEARCH_PATH)
OPENSSL = shutil.which("openssl", path=_SEARCH_PATH)

# The marker of every test module that runs the real nginx.
NEEDS_NGINX = pytest.mark.skipif(
    NGINX is None or ENVSUBST is None,
    reason="needs nginx and envsubst (Debian: apt-get install nginx gettext-base)",
)

# Every event the fake model streams, and the pause between two of them.
SSE_EVENTS = 8
SSE_INTERVAL_S = 0.2


def read_dotenv(path: Path = DOTENV) -> dict[str, str]:
    """A dotenv file's values, with python-dotenv (the Python side's one parser;
    tests/unit/test_env_docs.py checks the shell's parsers against it)."""
    return {key: value or "" for key, value in dotenv_values(path).items()}


def access_log_entries(text: str) -> list[dict[str, Any]]:
    """The JSON access log lines (nginx.conf's ray_llm_json format) in TEXT,
    a log that also holds Nginx's other output."""
    return [json.loads(line) for line in text.splitlines() if line.startswith('{"time"')]


def base_env(**overrides: str) -> dict[str, str]:
    """.env defaults on loopback ports, in a minimal environment."""
    env = {k: os.environ[k] for k in ("HOME", "LANG", "TMPDIR") if k in os.environ}
    env["PATH"] = _SEARCH_PATH
    env.update(read_dotenv())
    env.update(
        NGINX_UPSTREAM_HOST="127.0.0.1",
        NGINX_BIND_ADDRESS="127.0.0.1",
        NGINX_HTTP_PORT=str(free_port()),
        NGINX_HTTPS_PORT=str(free_port()),
        RAY_API_PORT=str(free_port()),
        RAY_DASHBOARD_PORT=str(free_port()),
        NGINX_STATUS_PORT=str(free_port()),
        NGINX_TUNNEL_PORT=str(free_port()),
        NGINX_CERTS_DIR="",
    )
    env.update(overrides)
    return env


def render(out_dir: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(RENDER), str(out_dir)], env=env, text=True,
                          capture_output=True, timeout=60, check=False)


def nginx_test(out_dir: Path, prefix: Path) -> subprocess.CompletedProcess[str]:
    prefix.mkdir(parents=True, exist_ok=True)
    assert NGINX is not None
    return subprocess.run([NGINX, "-t", "-p", f"{prefix}/", "-e", "stderr", "-c", str(out_dir / "nginx.conf")],
                          text=True, capture_output=True, timeout=60, check=False)


def make_cert(directory: Path) -> Path:
    """A self-signed tls.crt/tls.key pair for localhost in DIRECTORY."""
    assert OPENSSL is not None, "openssl is needed for the HTTPS tests"
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run([OPENSSL, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-keyout", str(directory / "tls.key"),
                    "-out", str(directory / "tls.crt")], check=True, capture_output=True, timeout=60)
    return directory


def worker_traversable_dir(prefix: str) -> Path:
    """A new folder below the system temp folder that nginx's workers can traverse.

    When the tests run as root, nginx's workers run as another user (nobody on
    Debian) and open dashboard.htpasswd in the rendered folder per request:
    every folder above it must be traversable (pytest's tmp_path is 0700).
    The caller removes it."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o711)
    return path


def raw_http(port: int, data: bytes, timeout: float = 5.0) -> tuple[str, dict[str, str], bytes]:
    """Send DATA as is on a new connection; return the status line, the headers
    (lower-case names) and the body (by Content-Length, else up to EOF)."""
    raw = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        length: int | None = None
        head = b""
        while True:
            if length is None and b"\r\n\r\n" in raw:
                head = raw.split(b"\r\n\r\n", 1)[0]
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value.strip())
            if length is not None and len(raw) - len(head) - 4 >= length:
                break
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return lines[0], headers, body


def wait_for(what: str, check: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll CHECK (bounded) until true; fail with WHAT."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


# --- Scripted upstreams --------------------------------------------------------

@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], kind: str) -> None:
        super().__init__(address, _Handler)
        self.kind = kind
        self.ready = True
        self.seen: list[Seen] = []
        # Set to let /v1/hang (an upstream that never answers) return.
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.connections: set[socket.socket] = set()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        with self.server.lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.lock:
            self.server.connections.discard(self.connection)
        super().finish()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        pass

    def _record(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        with self.server.lock:
            self.server.seen.append(Seen(self.command, self.path,
                                         {k.lower(): v for k, v in self.headers.items()}, body))
        return body

    def _echo_headers(self) -> None:
        # What the test asserts was (not) forwarded; Ray Serve echoes X-Request-Id too.
        self.send_header("X-Upstream-Saw-Request-Id", self.headers.get("X-Request-Id", "<none>"))
        self.send_header("X-Upstream-Saw-Authorization", self.headers.get("Authorization", "<none>"))
        self.send_header("X-Request-Id", self.headers.get("X-Request-Id", "made-by-upstream"))

    def _send(self, code: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self._echo_headers()
        self.end_headers()
        self.wfile.write(body)

    def _json(self, code: int, obj: Any) -> None:
        self._send(code, json.dumps(obj).encode())

    def _stream(self) -> None:
        """SSE, one event per SSE_INTERVAL_S. Chunked like Ray Serve (uvicorn), or
        ended by closing the connection when the request says X-Test-Framing: close:
        nginx passes chunks on as they come even with proxy_buffering on, but holds
        a close-delimited body back until EOF unless buffering is off."""
        chunked = self.headers.get("X-Test-Framing", "chunked") != "close"
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Connection", "close")
            self.close_connection = True
        self._echo_headers()
        self.end_headers()
        for i in range(SSE_EVENTS + 1):
            payload = "[DONE]" if i == SSE_EVENTS else json.dumps(
                {"id": "chatcmpl-1", "object": "chat.completion.chunk",
                 "choices": [{"index": 0, "delta": {"content": f"tok{i}"}}]})
            data = f"data: {payload}\n\n".encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
            self.wfile.flush()
            if i < SSE_EVENTS:
                time.sleep(SSE_INTERVAL_S)  # pacing of the token stream, not ordering
        if chunked:
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()

    def do_GET(self) -> None:  # noqa: N802
        self._record()
        if self.server.kind == "dashboard":
            self._send(200, f"<html><body>ray dashboard {self.path}</body></html>".encode(), "text/html")
        elif self.path == "/v1/models":
            self._json(200, {"object": "list", "data": [{"id": "test-model", "object": "model"}]})
        elif self.path.startswith("/v1/text-error/"):
            # What Ray's HAProxy answers while the app starts or recovers.
            self._send(int(self.path.rsplit("/", 1)[1]), b"Path '/v1/x' not found.", "text/plain")
        elif self.path.startswith("/v1/app-error/"):
            # What src/openai_errors.py sends: the JSON, and the same in X-Ray-LLM-Error.
            status = int(self.path.rsplit("/", 1)[1])
            body = json.dumps({"error": {"message": f"app error {status}", "type": "invalid_request_error",
                                         "param": None, "code": f"app_{status}"}})
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Ray-LLM-Error", body)
            self._echo_headers()
            self.end_headers()
            self.wfile.write(body.encode())
        elif self.path == "/v1/hang":
            self.server.release.wait(timeout=30)  # bounded; stop() releases it
            if self.server.release.is_set():
                return
            self._json(200, {"late": True})
        else:
            self._json(404, {"error": {"message": "upstream: no such route", "code": "upstream_404"}})

    def do_POST(self) -> None:  # noqa: N802
        self._record()
        if self.path == "/v1/chat/completions":
            self._stream()
        elif self.path == "/v1/completions":
            if self.server.ready:
                self._json(200, {"object": "text_completion", "choices": [{"text": "pong"}]})
            else:
                self._json(503, {"error": {"message": "engine loading", "code": "upstream_not_ready"}})
        else:
            self._json(404, {"error": {"message": "upstream: no such route", "code": "upstream_404"}})


class FakeUpstream:
    """A threaded HTTP server on 127.0.0.1:PORT playing Ray Serve or the dashboard."""

    def __init__(self, port: int, kind: str = "api") -> None:
        self.port = port
        self.server = _Server(("127.0.0.1", port), kind)
        # shutdown() waits for the loop's next poll: 0.5 s by default, paid
        # twice per stack teardown (about a second for each test of the tier).
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02},
                                       daemon=True)
        self.thread.start()
        self.running = True

    @property
    def seen(self) -> list[Seen]:
        with self.server.lock:
            return list(self.server.seen)

    def set_ready(self, ready: bool) -> None:
        self.server.ready = ready

    def stop(self) -> None:
        """Stop listening and cut every open connection (nginx's keepalive ones too)."""
        if not self.running:
            return
        self.running = False
        self.server.release.set()
        self.server.shutdown()
        self.server.server_close()
        with self.server.lock:
            connections = list(self.server.connections)
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


# --- Nginx ------------------------------------------------------------------------

@dataclass
class NginxStack:
    """Real nginx rendered from the real template, and its scripted upstreams."""

    workdir: Path
    env: dict[str, str]
    api: FakeUpstream | None = None
    dashboard: FakeUpstream | None = None
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.workdir / "nginx.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.env['NGINX_HTTP_PORT']}"

    @property
    def https_url(self) -> str:
        return f"https://127.0.0.1:{self.env['NGINX_HTTPS_PORT']}"

    def start(self, with_upstreams: bool = True) -> NginxStack:
        out, prefix = self.workdir / "conf", self.workdir / "prefix"
        prefix.mkdir(parents=True, exist_ok=True)
        rendered = render(out, self.env)
        if rendered.returncode != 0:
            raise RuntimeError(f"render-nginx.sh failed:\n{rendered.stderr}")
        if with_upstreams:
            self.api = FakeUpstream(int(self.env["RAY_API_PORT"]), "api")
            self.dashboard = FakeUpstream(int(self.env["RAY_DASHBOARD_PORT"]), "dashboard")
        assert NGINX is not None
        with self.log_path.open("ab") as log:  # append: nginx reopens /dev/stdout by path
            self.proc = subprocess.Popen(
                [NGINX, "-p", f"{prefix}/", "-e", "stderr", "-c", str(out / "nginx.conf"), "-g", "daemon off;"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            wait_for("nginx to answer /healthz", self._answers)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"nginx did not start:\n{self.log_tail()}") from None
        return self

    def _answers(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"nginx exited with {self.proc.returncode}:\n{self.log_tail()}")
        try:
            return httpx.get(self.url + "/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(timeout=kwargs.pop("timeout", 10), trust_env=False, **kwargs)

    def access_log(self) -> list[dict[str, Any]]:
        return access_log_entries(self.log_path.read_text(errors="replace"))

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no nginx log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        """Stop nginx by its PID (SIGTERM: fast shutdown), then the upstreams."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        for upstream in (self.api, self.dashboard):
            if upstream is not None:
                upstream.stop()
