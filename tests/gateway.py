"""A loopback stand-in for API Gateway in front of `chalice local`: it records what a client sends, passes
the request on, and can require an API key as the prod stage does."""

from __future__ import annotations

import http.server
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from local_servers import serving_in_thread

# Statuses the gateway stand-in passes on, and the headers of an answer a browser sees.
FORWARDED_REQUEST_HEADERS = ("Content-Type", "x-api-key")
DROPPED_RESPONSE_HEADERS = {"transfer-encoding", "connection", "server", "date", "content-length"}


@dataclass
class Gateway:
    """What reached the gateway, and the API key it requires (None: open, as the dev and local stages are)."""

    api_url: str
    url: str = ""
    required_key: str | None = None
    forbidden_body: bytes = b""
    received: list[tuple[str, str, str, int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def uploads(self) -> list[tuple[str, str, str, int]]:
        """(method, path, content type, body bytes) of every POST so far."""
        with self.lock:
            return [request for request in self.received if request[0] == "POST"]


class GatewayHandler(http.server.BaseHTTPRequestHandler):
    gateway: Gateway

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.forward(None)

    def do_POST(self):
        self.forward(self.rfile.read(int(self.headers.get("Content-Length", 0))))

    def forward(self, body: bytes | None):
        gateway = self.gateway
        with gateway.lock:
            gateway.received.append(
                (self.command, self.path, self.headers.get("Content-Type", ""), len(body or b""))
            )
        # The page and its description stay open in every stage; the routes that classify may need a key.
        keyed = self.command == "POST" and gateway.required_key is not None
        if keyed and self.headers.get("x-api-key") != gateway.required_key:
            # API Gateway's answer when a method requires a key and the request has none or a wrong one.
            return self.answer(403, {"Content-Type": "application/json"}, gateway.forbidden_body)
        headers = {name: self.headers[name] for name in FORWARDED_REQUEST_HEADERS if name in self.headers}
        request = urllib.request.Request(gateway.api_url + self.path, data=body, headers=headers)
        request.method = self.command
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                self.answer(response.status, response.headers, response.read())
        except urllib.error.HTTPError as error:
            self.answer(error.code, error.headers, error.read())

    def answer(self, status: int, headers, body: bytes):
        self.send_response(status)
        for name, value in headers.items():
            if name.lower() not in DROPPED_RESPONSE_HEADERS:
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@contextmanager
def serving_gateway(gateway: Gateway) -> Iterator[str]:
    """`gateway` on a loopback port; yields its URL, also kept in `gateway.url`."""
    handler = type("Handler", (GatewayHandler,), {"gateway": gateway})
    with serving_in_thread(http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)) as url:
        gateway.url = url
        yield url
