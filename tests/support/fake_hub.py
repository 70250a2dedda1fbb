"""A stand-in for the Hugging Face Hub on loopback, for HF_ENDPOINT.

It serves folders as model repos in the Hub's URL layout, the part of it that
huggingface_hub's snapshot_download uses: the revision info
(/api/models/ORG/NAME/revision/REV), the recursive tree listing
(/api/models/ORG/NAME/tree/REV) and the files (/ORG/NAME/resolve/REV/PATH,
HEAD and GET, with byte ranges). So the real download code runs. It can cut a
file's first download halfway (to prove resume), fail a file, and require a
token. It is a test fixture, not the Hub: it implements only those routes.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit


@dataclass
class Request:
    method: str
    path: str
    range: str | None
    authorization: str | None


@dataclass
class FakeHub:
    repos: dict[str, Path]
    token: str | None = None  # when set, every request must carry it
    cut_once: set[str] = field(default_factory=set)  # files whose first GET stops halfway
    failing: dict[str, int] = field(default_factory=dict)  # file -> HTTP status of its GETs
    requests: list[Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self.url = ""  # set by start()

    # --- repo data ---
    @staticmethod
    def commit(repo: str) -> str:
        return hashlib.sha1(repo.encode()).hexdigest()

    def files(self, repo: str) -> dict[str, Path]:
        root = self.repos[repo]
        return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*"))
                if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)}

    @staticmethod
    def is_lfs(path: str) -> bool:
        return path.endswith((".safetensors", ".bin"))

    @staticmethod
    def digests(data: bytes) -> tuple[str, str]:
        blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        return blob, hashlib.sha256(data).hexdigest()

    # --- server ---
    def start(self, host: str = "127.0.0.1") -> str:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                hub.handle(self, head=True)

            def do_GET(self) -> None:
                hub.handle(self, head=False)

        self._server = ThreadingHTTPServer((host, 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.url = f"http://{host}:{self._server.server_address[1]}"
        return self.url

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    def gets(self, filename: str) -> list[Request]:
        """The GETs of one file of any repo."""
        return [r for r in self.requests if r.method == "GET" and re.search(r"/resolve/[^/]+/" + re.escape(filename) + "$", r.path)]

    # --- routes ---
    def handle(self, h: BaseHTTPRequestHandler, head: bool) -> None:
        path = unquote(urlsplit(h.path).path)
        with self._lock:
            self.requests.append(Request(h.command, path, h.headers.get("Range"), h.headers.get("Authorization")))
        if self.token and h.headers.get("Authorization") != f"Bearer {self.token}":
            return self.send(h, 401, {"error": "Invalid credentials"}, head, {"X-Error-Code": "GatedRepo",
                                                                          "X-Error-Message": "Access restricted"})
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/revision/([^/]+)", path)
        if m:
            return self.revision(h, m.group(1), m.group(2), head)
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(/.*)?", path)
        if m:
            return self.tree(h, m.group(1), m.group(2), head)
        m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if m:
            return self.resolve(h, m.group(1), m.group(2), m.group(3), head)
        self.send(h, 404, {"error": "not found"}, head)

    def known(self, h: BaseHTTPRequestHandler, repo: str, revision: str, head: bool) -> bool:
        if repo not in self.repos:
            self.send(h, 404, {"error": "Repository not found"}, head, {"X-Error-Code": "RepoNotFound"})
            return False
        if revision not in ("main", self.commit(repo)):
            self.send(h, 404, {"error": f"Invalid rev id: {revision}"}, head, {"X-Error-Code": "RevisionNotFound"})
            return False
        return True

    def revision(self, h: BaseHTTPRequestHandler, repo: str, revision: str, head: bool) -> None:
        if self.known(h, repo, revision, head):
            self.send(h, 200, {"_id": repo, "id": repo, "modelId": repo, "sha": self.commit(repo), "private": False,
                               "gated": bool(self.token), "disabled": False, "tags": [],
                               "siblings": [{"rfilename": f} for f in self.files(repo)]}, head)

    def tree(self, h: BaseHTTPRequestHandler, repo: str, revision: str, head: bool) -> None:
        if not self.known(h, repo, revision, head):
            return
        entries = []
        for name, p in self.files(repo).items():
            data = p.read_bytes()
            blob, sha256 = self.digests(data)
            entry = {"type": "file", "oid": blob, "size": len(data), "path": name}
            if self.is_lfs(name):
                entry["lfs"] = {"oid": sha256, "size": len(data), "pointerSize": 134}
            entries.append(entry)
        self.send(h, 200, entries, head)

    def resolve(self, h: BaseHTTPRequestHandler, repo: str, revision: str, name: str, head: bool) -> None:
        if not self.known(h, repo, revision, head):
            return
        p = self.files(repo).get(name)
        if p is None:
            return self.send(h, 404, {"error": "Entry not found"}, head, {"X-Error-Code": "EntryNotFound",
                                                                         "X-Repo-Commit": self.commit(repo)})
        if not head and name in self.failing:
            return self.send(h, self.failing[name], {"error": "injected failure"}, head,
                             {"X-Repo-Commit": self.commit(repo)})
        data = p.read_bytes()
        blob, sha256 = self.digests(data)
        etag = sha256 if self.is_lfs(name) else blob
        headers = {"X-Repo-Commit": self.commit(repo), "ETag": f'"{etag}"', "Accept-Ranges": "bytes"}
        if self.is_lfs(name):
            headers.update({"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(len(data))})
        status, start = 200, 0
        wanted = h.headers.get("Range")
        if wanted and not head:
            start = int(re.fullmatch(r"bytes=(\d+)-", wanted).group(1))  # type: ignore[union-attr]
            status = 206
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        body = data[start:]
        h.send_response(status)
        for key, value in headers.items():
            h.send_header(key, value)
        h.send_header("Content-Length", str(len(body)))
        h.send_header("Content-Type", "application/octet-stream")
        h.end_headers()
        if head:
            return
        with self._lock:
            cut = name in self.cut_once
            self.cut_once.discard(name)
        if cut:
            h.wfile.write(body[: len(body) // 2])
            h.wfile.flush()
            h.close_connection = True
            h.connection.shutdown(2)  # the peer sees the body end early
            return
        h.wfile.write(body)

    @staticmethod
    def send(h: BaseHTTPRequestHandler, status: int, payload: object, head: bool,
             headers: dict[str, str] | None = None) -> None:
        body = json.dumps(payload).encode()
        h.send_response(status)
        for key, value in (headers or {}).items():
            h.send_header(key, value)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if not head:
            h.wfile.write(body)
