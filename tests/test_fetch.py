"""chalicelib.fetch against real HTTP servers on loopback: what it fetches, refuses, and where it stops."""

from __future__ import annotations

import gzip
import http.server
import socket
import sys
import time
from collections.abc import Iterator
from urllib.parse import unquote

import pytest
from local_servers import serving_in_thread

from chalicelib.errors import BadRequest, PayloadTooLarge, UrlFetchFailed, UrlNotAllowed
from chalicelib.fetch import address_refusal, fetch_image
from chalicelib.settings import MAX_REDIRECTS


class Routes(http.server.BaseHTTPRequestHandler):
    """GET /image (a small body), /big (chunked, no length), /declared-big, /redirect/N?to=URL, /missing."""

    image = b"\xff\xd8\xff\xe0 not really a jpeg but bytes"

    def do_GET(self):
        path, _, query = self.path.partition("?")
        if path == "/image":
            self._send(200, self.image)
        elif path == "/big":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for _ in range(40):
                chunk = b"x" * 4096
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.write(b"0\r\n\r\n")
        elif path == "/drip":
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self._drip(b"x" * 1000)
        elif path == "/drip-headers":
            # The status line at once, then a header a byte at a time, never ending.
            self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
            self._drip(b"a" * 1000)
        elif path == "/drip-chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self._drip(b"1\r\nx\r\n" * 1000)
        elif path == "/gzip-bomb":
            body = gzip.compress(b"\0" * 50_000_000)
            self.send_response(200)
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif path == "/declared-big":
            self.send_response(200)
            self.send_header("Content-Length", str(10**9))
            self.end_headers()
        elif path.startswith("/redirect/"):
            hops = int(path.rsplit("/", 1)[1])
            target = unquote(query.removeprefix("to=")) if hops == 0 else f"/redirect/{hops - 1}?{query}"
            self.send_response(302)
            self.send_header("Location", target or "/image")
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self._send(404, b"no such thing")

    def _drip(self, data: bytes) -> None:
        for index in range(len(data)):
            self.wfile.write(data[index : index + 1])
            self.wfile.flush()
            time.sleep(0.05)

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        # A client that stops reading at its byte cap hangs up mid-body: expected here, not worth a traceback.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def serving(handler=Routes, host: str = "127.0.0.1"):
    return serving_in_thread(QuietServer((host, 0), handler))


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    with serving() as url:
        yield url


def test_fetches_the_body_when_loopback_is_allowed(server):
    assert fetch_image(f"{server}/image", max_bytes=1000, allow_loopback=True) == Routes.image


def test_follows_up_to_the_redirect_limit(server):
    url = f"{server}/redirect/{MAX_REDIRECTS - 1}"
    assert fetch_image(url, max_bytes=1000, allow_loopback=True) == Routes.image


def test_refuses_one_redirect_too_many(server):
    with pytest.raises(UrlFetchFailed, match="redirects"):
        fetch_image(f"{server}/redirect/{MAX_REDIRECTS}", max_bytes=1000, allow_loopback=True)


@pytest.mark.parametrize(
    "target",
    [
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "http://10.0.0.1/",
        "http://[fd00::1]/",
        "file:///etc/passwd",
    ],
)
def test_rechecks_every_redirect(server, target):
    with pytest.raises(UrlNotAllowed):
        fetch_image(f"{server}/redirect/1?to={target}", max_bytes=1000, allow_loopback=True)


def test_refuses_loopback_unless_allowed(server):
    with pytest.raises(UrlNotAllowed, match="loopback"):
        fetch_image(f"{server}/image", max_bytes=1000)


def test_refuses_a_hostname_that_resolves_to_loopback(server):
    port = server.rsplit(":", 1)[1]
    with pytest.raises(UrlNotAllowed, match="'localhost' resolves to an address that may not be") as refused:
        fetch_image(f"http://localhost:{port}/image", max_bytes=1000)
    # Which address a name resolves to, or even its kind, is not for outsiders to learn.
    assert "127.0.0.1" not in refused.value.message and "loopback" not in refused.value.message


def test_a_public_redirect_into_loopback_is_refused_when_loopback_is_not_allowed():
    # The first hop is allowed only so that a loopback server can play the public site; the second is not.
    with serving() as public, pytest.raises(UrlNotAllowed):
        fetch_image(f"{public}/redirect/0?to=http://127.0.0.2:1/", max_bytes=1000, allow_loopback=False)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/",
        "https://127.0.0.1/",
        "https://localhost/",
        "http://127.1/",
        "http://2130706433/",  # 127.0.0.1 as one decimal number
        "http://0x7f000001/",
        "http://0.0.0.0/",
        "http://[::1]/",
        "http://[::]/",
        "http://[::ffff:127.0.0.1]/",
        "http://[::ffff:169.254.169.254]/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[fe80::1]/",
        "http://[fc00::1]/",
        "http://10.1.2.3/",
        "http://172.16.0.1/",
        "http://192.168.1.1/",
        "http://100.64.0.1/",  # carrier-grade NAT
        "http://224.0.0.1/",
        "http://[ff02::1]/",
        "http://240.0.0.1/",
        "http://255.255.255.255/",
        "http://[64:ff9b::a9fe:a9fe]/",  # 169.254.169.254 through NAT64
        "http://[2002:a9fe:a9fe::1]/",  # 169.254.169.254 through 6to4
        "ftp://example.com/dog.jpg",
        "file:///etc/passwd",
        "gopher://127.0.0.1:6379/_INFO",
        "http:///nohost",
        "http://user:secret@example.com/dog.jpg",
    ],
)
def test_refuses_unsafe_urls(url):
    with pytest.raises(UrlNotAllowed):
        fetch_image(url, max_bytes=1000)


def test_loopback_allowance_does_not_extend_to_private_addresses():
    with pytest.raises(UrlNotAllowed, match="private"):
        fetch_image("http://10.0.0.1/", max_bytes=1000, allow_loopback=True)
    with pytest.raises(UrlNotAllowed, match="link-local"):
        fetch_image("http://169.254.169.254/", max_bytes=1000, allow_loopback=True)


@pytest.mark.parametrize(
    ("address", "refused"),
    [
        ("8.8.8.8", False),
        ("93.184.215.14", False),
        ("2606:4700:4700::1111", False),
        ("127.0.0.1", True),
        ("169.254.169.254", True),
        ("100.100.100.200", True),  # carrier-grade NAT; also Alibaba Cloud's metadata address
        ("fd00:ec2::254", True),  # the EC2 metadata service over IPv6
        ("::ffff:10.0.0.1", True),
        ("fe80::1%eth0", True),
    ],
)
def test_address_refusal(address, refused):
    assert (address_refusal(address) is not None) is refused


def test_stops_reading_past_the_cap(server):
    with pytest.raises(PayloadTooLarge, match="10000 bytes"):
        fetch_image(f"{server}/big", max_bytes=10_000, allow_loopback=True)


def test_a_gzip_bomb_stops_at_the_cap_of_decoded_bytes(server):
    with pytest.raises(PayloadTooLarge):
        fetch_image(f"{server}/gzip-bomb", max_bytes=100_000, allow_loopback=True)


@pytest.mark.parametrize("path", ["/drip", "/drip-headers", "/drip-chunked"])
def test_a_dripping_server_is_cut_off_at_the_total_deadline(server, path):
    # Each byte arrives well within the read timeout; only the total deadline (shortened here) stops it,
    # whether the origin drips the body or its headers.
    with pytest.raises(UrlFetchFailed, match="took longer than 1 s"):
        fetch_image(f"{server}{path}", max_bytes=10_000, allow_loopback=True, total_timeout_s=1.0)


def test_the_deadline_covers_every_redirect_hop(server):
    with pytest.raises(UrlFetchFailed, match="took longer than 1 s"):
        fetch_image(
            f"{server}/redirect/1?to=/drip-headers",
            max_bytes=10_000,
            allow_loopback=True,
            total_timeout_s=1.0,
        )


@pytest.mark.parametrize(
    "url", ["http://[::1", "http://[::1/dog.jpg", "http://example.com:99999/", "http://x:port/"]
)
def test_a_url_that_cannot_be_parsed_is_a_bad_request(url):
    with pytest.raises(BadRequest, match="cannot be parsed"):
        fetch_image(url, max_bytes=1000)


def test_connects_to_the_address_it_checked(server, monkeypatch):
    # A rebinding name answers loopback (allowed here) first and a private address afterwards: the fetch must
    # use the first answer for the connection instead of resolving again.
    real_getaddrinfo = socket.getaddrinfo
    answers = iter(["127.0.0.1", "10.255.255.1", "10.255.255.1"])
    lookups = []

    def rebinding_getaddrinfo(host, port, *args, **kwargs):
        if host != "rebind.test":
            return real_getaddrinfo(host, port, *args, **kwargs)
        lookups.append(host)
        return real_getaddrinfo(next(answers), port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding_getaddrinfo)
    port = server.rsplit(":", 1)[1]
    assert (
        fetch_image(f"http://rebind.test:{port}/image", max_bytes=1000, allow_loopback=True) == Routes.image
    )
    assert lookups == ["rebind.test"]


def test_refuses_a_declared_length_over_the_cap_without_reading(server):
    with pytest.raises(PayloadTooLarge, match="1000000000 bytes"):
        fetch_image(f"{server}/declared-big", max_bytes=10_000, allow_loopback=True)


def test_error_status_is_a_fetch_failure(server):
    with pytest.raises(UrlFetchFailed, match="HTTP 404"):
        fetch_image(f"{server}/missing", max_bytes=1000, allow_loopback=True)


def test_nothing_listening_is_a_fetch_failure():
    with serving() as gone:
        pass
    with pytest.raises(UrlFetchFailed, match="cannot fetch"):
        fetch_image(f"{gone}/image", max_bytes=1000, allow_loopback=True)


def test_unresolvable_host_is_a_fetch_failure():
    with pytest.raises(UrlFetchFailed, match="cannot resolve"):
        fetch_image("http://no-such-host.invalid/dog.jpg", max_bytes=1000)
