"""A loopback stand-in for the KFP v2beta1 REST API, for contract tests.

It speaks the JSON the real API server speaks (the shapes ``kfp_server_api`` decodes), keeps
experiments, pipelines, versions, runs and recurring runs in memory, and records every
request so a test can assert exactly what a client sent. Reusable by any test:

    with FakeKFP() as kfp_api:
        settings = load_settings(kfp_host=kfp_api.url, ...)
        ...
        assert kfp_api.calls("POST", "/apis/v2beta1/runs")[0].json["display_name"] == ...

``kfp_api.down()`` closes the listening socket (connection refused, as when the API is
down); ``kfp_api.fail[(method, path)] = status`` makes one endpoint answer with an error.

Its healthz answers what the backend's HTTP proxy writes (backend/src/apiserver/main.go):
``{"commit_sha": …, "tag_name": …, "multi_user": …, "pipeline_store": "database"}``, where
``tag_name`` is the release the API server image was built as (``unknown`` for a dev build).
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qs, urlparse

PREFIX = "/apis/v2beta1"


@dataclass
class Call:
    """One request as the server received it."""

    method: str
    path: str
    query: dict[str, str]
    json: Any = None
    files: dict[str, bytes] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)


class FakeKFP:
    """The fake API server (a ThreadingHTTPServer on 127.0.0.1, random port)."""

    def __init__(self, multi_user: bool = False, tag_name: str = "2.17.0") -> None:
        self.multi_user = multi_user
        self.tag_name = tag_name
        self.requests: list[Call] = []
        self.experiments: dict[str, dict] = {}
        self.pipelines: dict[str, dict] = {}
        self.versions: dict[str, dict] = {}
        self.packages: dict[str, bytes] = {}
        self.runs: dict[str, dict] = {}
        self.recurring: dict[str, dict] = {}
        self.fail: dict[tuple[str, str], int] = {}
        self.lock = threading.Lock()
        handler = type("Handler", (_Handler,), {"api": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    def down(self) -> None:
        """Stop answering: later requests get connection refused."""
        if self.thread.is_alive():
            self.server.shutdown()
        self.server.server_close()

    def calls(self, method: str | None = None, path: str | None = None) -> list[Call]:
        return [c for c in self.requests if (method is None or c.method == method) and (path is None or c.path == path)]

    def set_run_state(self, run_id: str, state: str) -> None:
        self.runs[run_id]["state"] = state

    # --- the API --------------------------------------------------------------------------
    def handle(self, call: Call) -> tuple[int, Any]:
        m, p, q = call.method, call.path, call.query
        if (m, p) in self.fail:
            return self.fail[(m, p)], {"error": "injected failure", "code": 13, "message": "injected failure"}
        if not p.startswith(PREFIX):
            return 404, {"error": "not found"}
        p = p[len(PREFIX):]
        if m == "GET" and p == "/healthz":
            return 200, {"commit_sha": "0" * 40 if self.tag_name != "unknown" else "unknown", "tag_name": self.tag_name,
                         "multi_user": self.multi_user, "pipeline_store": "database"}
        if p == "/experiments" and m == "GET":
            return 200, _listing("experiments", self.experiments.values(), q)
        if p == "/experiments" and m == "POST":
            exp = {"experiment_id": _id(), "display_name": call.json["display_name"],
                   "namespace": call.json.get("namespace"), "storage_state": "AVAILABLE"}
            self.experiments[exp["experiment_id"]] = exp
            return 200, exp
        if p == "/pipelines" and m == "GET":
            return 200, _listing("pipelines", self.pipelines.values(), q)
        if p == "/pipelines/upload" and m == "POST":
            name = q.get("name") or q.get("display_name")
            if any(x["display_name"] == name for x in self.pipelines.values()):
                return 409, {"error": f"pipeline {name} already exists", "code": 6}
            pipe = {"pipeline_id": _id(), "display_name": name, "description": q.get("description"),
                    "namespace": q.get("namespace")}
            self.pipelines[pipe["pipeline_id"]] = pipe
            self._add_version(pipe["pipeline_id"], name, call.files.get("uploadfile", b""))
            return 200, pipe
        if p == "/pipelines/upload_version" and m == "POST":
            pid = q.get("pipelineid")
            if pid not in self.pipelines:
                return 404, {"error": f"pipeline {pid} not found", "code": 5}
            return 200, self._add_version(pid, q.get("name") or q.get("display_name"), call.files.get("uploadfile", b""))
        if p.startswith("/pipelines/") and p.endswith("/versions") and m == "GET":
            pid = p.split("/")[2]
            return 200, _listing("pipeline_versions", [v for v in self.versions.values() if v["pipeline_id"] == pid], q)
        if p == "/runs" and m == "POST":
            body = call.json
            ref = body.get("pipeline_version_reference") or {}
            if ref.get("pipeline_version_id") and ref["pipeline_version_id"] not in self.versions:
                return 404, {"error": "pipeline version not found", "code": 5}
            run = {**body, "run_id": _id(), "state": "PENDING", "storage_state": "AVAILABLE"}
            self.runs[run["run_id"]] = run
            return 200, run
        if p.startswith("/runs/") and m == "GET":
            run = self.runs.get(p.split("/")[2])
            return (200, run) if run else (404, {"error": "run not found", "code": 5})
        if p == "/recurringruns" and m == "POST":
            rr = {**call.json, "recurring_run_id": _id(), "status": "ENABLED"}
            self.recurring[rr["recurring_run_id"]] = rr
            return 200, rr
        if p == "/recurringruns" and m == "GET":
            items = [r for r in self.recurring.values() if not q.get("experiment_id") or r.get("experiment_id") == q["experiment_id"]]
            return 200, {"recurringRuns": items, "total_size": len(items)} if items else {}
        return 404, {"error": f"{m} {p} is not part of the fake"}

    def _add_version(self, pid: str, name: str, package: bytes) -> dict:
        ver = {"pipeline_id": pid, "pipeline_version_id": _id(), "display_name": name,
               "created_at": f"2026-01-01T00:00:{len(self.versions):02d}Z"}
        self.versions[ver["pipeline_version_id"]] = ver
        self.packages[ver["pipeline_version_id"]] = package
        return ver


def _id() -> str:
    return str(uuid.uuid4())


def _listing(key: str, items: Any, query: dict[str, str]) -> dict:
    """A list response, honouring the display_name EQUALS filter kfp.Client sends."""
    items = list(items)
    if query.get("filter"):
        for pred in json.loads(query["filter"]).get("predicates", []):
            if pred.get("key") == "display_name":
                items = [i for i in items if i.get("display_name") == pred.get("stringValue", pred.get("string_value"))]
    return {key: items, "total_size": len(items)} if items else {}


class _Handler(BaseHTTPRequestHandler):
    api: FakeKFP

    def log_message(self, *args: object) -> None:  # keep test output quiet
        pass

    def _serve(self, method: str) -> None:
        url = urlparse(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        call = Call(method, url.path, query, headers={k.lower(): v for k, v in self.headers.items()})
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        ctype = self.headers.get("Content-Type", "")
        if body and ctype.startswith("multipart/form-data"):
            msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                f"Content-Type: {ctype}\r\n\r\n".encode() + body)
            call.files = {part.get_param("name", header="content-disposition"): part.get_payload(decode=True)
                          for part in msg.iter_parts()}
        elif body:
            call.json = json.loads(body)
        with self.api.lock:
            self.api.requests.append(call)
            status, payload = self.api.handle(call)
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_DELETE(self) -> None:
        self._serve("DELETE")
