"""Fetch a user-supplied URL without letting it reach inside the network (SSRF).

Every connection, including each redirect, resolves the host, refuses the whole answer if any address is not a
public unicast one, and then connects to an address it checked: the socket never goes back to DNS, so a
rebinding name cannot swap in a private address between the check and the connect. TLS still verifies the
certificate against the hostname. Proxies from the environment are ignored (they would be what gets checked).
"""

from __future__ import annotations

import contextvars
import functools
import ipaddress
import socket
import threading
import time
from urllib.parse import urljoin, urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

from chalicelib.errors import BadRequest, PayloadTooLarge, UrlFetchFailed, UrlNotAllowed
from chalicelib.settings import (
    FETCH_CONNECT_TIMEOUT_S,
    FETCH_READ_TIMEOUT_S,
    FETCH_TOTAL_TIMEOUT_S,
    MAX_REDIRECTS,
)

ALLOWED_SCHEMES = ("http", "https")
REDIRECT_STATUSES = (301, 302, 303, 307, 308)
USER_AGENT = "dogbreeds-fetch/1.0"
CHUNK_BYTES = 64 * 1024

# Prefixes that carry an IPv4 address inside an IPv6 one and may be routed to it (NAT64).
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def address_refusal(address: str, *, allow_loopback: bool = False) -> str | None:
    """Why `address` may not be fetched from, or None when it is a public unicast address.

    Loopback is allowed only when `allow_loopback` (the `local` stage); private, link-local (169.254.169.254),
    carrier-grade NAT, multicast, reserved and unspecified addresses never are, IPv6 and IPv4-mapped included.
    """
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if ip.version == 6:
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            refusal = address_refusal(str(embedded), allow_loopback=allow_loopback)
            return f"{refusal} (inside {ip})" if refusal else None
    if ip.is_loopback:
        return None if allow_loopback else f"{ip} is a loopback address"
    for kind in ("unspecified", "link_local", "multicast", "private", "reserved"):
        if getattr(ip, f"is_{kind}"):
            return f"{ip} is a {kind.replace('_', '-')} address"
    if not ip.is_global:
        # What is left: shared address space, 100.64.0.0/10 (carrier-grade NAT), and the like.
        return f"{ip} is not a public address"
    return None


def checked_addresses(host: str, port: int, *, allow_loopback: bool) -> list[tuple]:
    """getaddrinfo's TCP answers for host, all of them allowed; raises UrlNotAllowed or UrlFetchFailed."""
    try:
        answers = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as error:
        raise UrlFetchFailed(f"cannot resolve host {host!r}: {error}") from error
    for _family, _type, _proto, _name, sockaddr in answers:
        refusal = address_refusal(sockaddr[0], allow_loopback=allow_loopback)
        if refusal and _is_address(host):
            raise UrlNotAllowed(f"the URL's host may not be fetched from: {refusal}")
        if refusal:
            # Neither the address nor its kind: that would tell outsiders what internal names resolve to.
            raise UrlNotAllowed(f"host {host!r} resolves to an address that may not be fetched from")
    return answers


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True


class Deadline:
    """One total time limit for a fetch: connect, headers and body of every hop together.

    Timeouts on a socket bound each wait, not their sum, so an origin that sends a byte every few seconds
    would never trip them. At the deadline a timer shuts down every socket the fetch opened, which ends
    whatever read is waiting; `expired` then tells that failure from the origin's own.
    """

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.at = time.monotonic() + seconds
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._cut)
        self._timer.daemon = True

    def __enter__(self) -> Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._timer.cancel()

    def remaining(self) -> float:
        return max(0.0, self.at - time.monotonic())

    @property
    def expired(self) -> bool:
        return time.monotonic() >= self.at

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)
        if self.expired:
            self._cut()

    def _cut(self) -> None:
        with self._lock:
            for sock in self._sockets:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # already closed

    def error(self) -> UrlFetchFailed:
        return UrlFetchFailed(f"the download took longer than {self.seconds:g} s")


# The deadline of the fetch running on this thread, for the connections it opens.
_current_deadline: contextvars.ContextVar[Deadline | None] = contextvars.ContextVar(
    "fetch_deadline", default=None
)


class _CheckedConnectionMixin:
    """A urllib3 connection whose socket goes only to an address `checked_addresses` accepted."""

    allow_loopback = False

    def _new_conn(self) -> socket.socket:
        answers = checked_addresses(self._dns_host, self.port, allow_loopback=self.allow_loopback)
        deadline = _current_deadline.get()
        last_error: OSError | None = None
        for family, type_, proto, _name, sockaddr in answers:
            sock = socket.socket(family, type_, proto)
            if deadline is not None:
                deadline.watch(sock)
            try:
                sock.settimeout(self.timeout)
                sock.connect(sockaddr)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                return sock
            except TimeoutError as error:
                sock.close()
                raise ConnectTimeoutError(self, f"connection to {self.host} timed out") from error
            except OSError as error:
                sock.close()
                last_error = error
        raise NewConnectionError(self, f"cannot connect to {self.host}: {last_error}")


@functools.cache
def _adapter_class(allow_loopback: bool) -> type[HTTPAdapter]:
    attributes = {"allow_loopback": allow_loopback}
    http_connection = type("CheckedHTTPConnection", (_CheckedConnectionMixin, HTTPConnection), attributes)
    https_connection = type("CheckedHTTPSConnection", (_CheckedConnectionMixin, HTTPSConnection), attributes)
    pools = {
        "http": type("CheckedHTTPPool", (HTTPConnectionPool,), {"ConnectionCls": http_connection}),
        "https": type("CheckedHTTPSPool", (HTTPSConnectionPool,), {"ConnectionCls": https_connection}),
    }

    class CheckedAdapter(HTTPAdapter):
        def init_poolmanager(self, *args, **kwargs):
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = pools

        def proxy_manager_for(self, *args, **kwargs):
            raise UrlNotAllowed("fetching through a proxy is not allowed")

    return CheckedAdapter


def _session(allow_loopback: bool) -> requests.Session:
    session = requests.Session()
    session.trust_env = False
    session.headers.update({"User-Agent": USER_AGENT, "Accept": "image/*"})
    adapter = _adapter_class(allow_loopback)(max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def _checked_url(url: str) -> str:
    """`url` if it may be fetched; raises UrlNotAllowed, or BadRequest for one that cannot be parsed."""
    try:
        parts = urlsplit(url)
        hostname, _port = parts.hostname, parts.port
    except ValueError as error:
        # An unclosed "[" of an IPv6 address, a port out of range or not a number.
        raise BadRequest(f"the URL cannot be parsed: {error}") from error
    if parts.scheme.lower() not in ALLOWED_SCHEMES:
        raise UrlNotAllowed(f"only http and https URLs can be fetched, not {parts.scheme or 'no scheme'!r}")
    if not hostname:
        raise UrlNotAllowed(f"the URL has no host: {url!r}")
    if parts.username or parts.password:
        raise UrlNotAllowed("URLs with credentials are not fetched")
    return url


def fetch_image(
    url: str, *, max_bytes: int, allow_loopback: bool = False, total_timeout_s: float = FETCH_TOTAL_TIMEOUT_S
) -> bytes:
    """The body behind `url`, at most `max_bytes` long, following at most MAX_REDIRECTS checked redirects,
    all within `total_timeout_s` (name resolution aside: the resolver keeps its own timeouts).

    Raises UrlNotAllowed (bad scheme, forbidden address, also after a redirect), UrlFetchFailed (unresolvable,
    unreachable, timed out, error status, too many redirects) and PayloadTooLarge (over `max_bytes`).
    Whether the body is an image is for the image module to decide.
    """
    with Deadline(total_timeout_s) as deadline, _session(allow_loopback) as session:
        token = _current_deadline.set(deadline)
        try:
            for _hop in range(MAX_REDIRECTS + 1):
                response = _get(session, _checked_url(url), deadline)
                with response:
                    if response.status_code in REDIRECT_STATUSES and "Location" in response.headers:
                        url = _redirect_target(url, response.headers["Location"])
                        continue
                    if response.status_code != 200:
                        raise UrlFetchFailed(f"the URL answered HTTP {response.status_code}")
                    return _read_capped(response, max_bytes, deadline)
        finally:
            _current_deadline.reset(token)
    raise UrlFetchFailed(f"more than {MAX_REDIRECTS} redirects")


def _redirect_target(url: str, location: str) -> str:
    try:
        return urljoin(url, location)
    except ValueError as error:
        raise UrlFetchFailed(f"the URL redirects to an address that cannot be parsed: {error}") from error


def _get(session: requests.Session, url: str, deadline: Deadline) -> requests.Response:
    if deadline.expired:
        raise deadline.error()
    # Each wait is also bounded by what is left of the total, so a late hop cannot start a full-length wait.
    timeout = (
        min(FETCH_CONNECT_TIMEOUT_S, deadline.remaining()),
        min(FETCH_READ_TIMEOUT_S, deadline.remaining()),
    )
    try:
        return session.get(url, stream=True, allow_redirects=False, timeout=timeout)
    except requests.RequestException as error:
        if deadline.expired:
            raise deadline.error() from error
        if isinstance(error, requests.Timeout):
            raise UrlFetchFailed(f"timed out fetching the URL: {error}") from error
        raise UrlFetchFailed(f"cannot fetch the URL: {error}") from error


def _read_capped(response: requests.Response, max_bytes: int, deadline: Deadline) -> bytes:
    declared = response.headers.get("Content-Length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(f"the image is {int(declared)} bytes; the limit is {max_bytes} bytes")
    body = bytearray()
    try:
        # read1 returns what has arrived instead of waiting for a full chunk. Sizes count decoded bytes, so a
        # gzip bomb stops at the cap too.
        while chunk := response.raw.read1(CHUNK_BYTES, decode_content=True):
            body += chunk
            if len(body) > max_bytes:
                raise PayloadTooLarge(f"the image is over the limit of {max_bytes} bytes")
            if deadline.expired:
                raise deadline.error()
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as error:
        if deadline.expired:
            raise deadline.error() from error
        raise UrlFetchFailed(f"the download failed: {error}") from error
    if deadline.expired:
        # The cut-off socket reads as a clean end of the body when no length was declared.
        raise deadline.error()
    return bytes(body)
