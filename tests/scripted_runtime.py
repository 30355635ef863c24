"""A loopback server speaking the SageMaker runtime's protocol, answering as a test scripts it: what a faulty
or overloaded endpoint would answer (AWS itself is the only thing imitated)."""

from __future__ import annotations

import http.server
import json
from contextlib import AbstractContextManager

from local_servers import serving_in_thread

# An answer of the endpoint that the API's schema accepts.
VALID_ANSWER = {
    "predictions": [{"label": "Labrador_retriever", "breed": "Labrador retriever", "probability": 0.9}],
    "is_dog": True,
    "dog_probability": 0.99,
    "model": {"name": "dogbreeds", "version": "2"},
}


class Runtime(http.server.BaseHTTPRequestHandler):
    """InvokeEndpoint answered as scripted by the class attributes; counts the requests it gets."""

    answer_status = 200
    answer_headers: dict[str, str] = {}
    answer_body = b""
    # Declare a longer body than is sent, then close: an answer cut off on the wire.
    cut_off = False
    requests = 0

    def do_POST(self):
        type(self).requests += 1
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(self.answer_status)
        for name, value in self.answer_headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(self.answer_body) + (100 if self.cut_off else 0)))
        self.end_headers()
        self.wfile.write(self.answer_body)
        self.close_connection = self.cut_off

    def log_message(self, *args):
        pass


def scripted(
    status: int = 200, body=b"", headers: dict[str, str] | None = None, cut_off: bool = False
) -> tuple[type[Runtime], AbstractContextManager[str]]:
    """A Runtime subclass answering every request with `status`, `body` (bytes, or JSON) and `headers`, and
    its server, to run with `with`; the class counts the requests."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    attributes = {
        "answer_status": status,
        "answer_body": raw,
        "answer_headers": headers or {},
        "cut_off": cut_off,
    }
    handler = type("Scripted", (Runtime,), attributes)
    return handler, serving_in_thread(http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler))
