"""The KFP API contract fake (tests/integration/kfp_api/fake_kfp.py) as a container's main process.

It listens on all interfaces of its container, and answers ``GET /_fake/calls`` with every
request it recorded (uploaded files base64-encoded), so the test asserts what a client in
another container sent: ``python -m tests.containers.kfp_server --port 8888``.
"""

from __future__ import annotations

import argparse
import base64
import threading
from http.server import ThreadingHTTPServer
from typing import Any

from tests.integration.kfp_api.fake_kfp import Call, FakeKFP

CALLS = "/_fake/calls"


class ServedFakeKFP(FakeKFP):
    """FakeKFP on 0.0.0.0:<port>, with its record readable over HTTP."""

    def __init__(self, port: int) -> None:
        super().__init__()
        handler = self.server.RequestHandlerClass
        self.server.server_close()
        self.server = ThreadingHTTPServer(("0.0.0.0", port), handler)  # a container's own interface
        self.url = f"http://0.0.0.0:{port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def handle(self, call: Call) -> tuple[int, Any]:
        if call.path == CALLS:
            return 200, [_dump(c) for c in self.requests if c.path != CALLS]
        return super().handle(call)


def _dump(call: Call) -> dict[str, Any]:
    return {"method": call.method, "path": call.path, "query": call.query, "json": call.json, "headers": call.headers,
            "files": {k: base64.b64encode(v).decode() for k, v in call.files.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8888)
    port = parser.parse_args().port
    api = ServedFakeKFP(port)
    print(f"fake KFP API listening on 0.0.0.0:{port}", flush=True)
    api.server.serve_forever()


if __name__ == "__main__":
    main()
