"""Fetch a user-supplied URL without letting it reach inside the network (SSRF).

Every connection, including each redirect, resolves the host, refuses the whole answer if any address is not a
public unicast one, and then connects to an address it checked: the socket never goes back to DNS, so a
rebinding name cannot swap in a private address between the check and the connect. TLS still verifies the
certificate against the hostname. Proxies from the environment are ignored (they would be what gets checked).
"""

from __future__ import annotations

import functools
import ipaddress
import socket
import time
from urllib.parse import urljoin, urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

from chalicelib.errors import PayloadTooLarge, UrlFetchFailed, UrlNotAllowed
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
        if refusal:
            raise UrlNotAllowed(f"host {host!r} resolves to a forbidden address: {refusal}")
    return answers


class _CheckedConnectionMixin:
    """A urllib3 connection whose socket goes only to an address `checked_addresses` accepted."""

    allow_loopback = False

    def _new_conn(self) -> socket.socket:
        answers = checked_addresses(self._dns_host, self.port, allow_loopback=self.allow_loopback)
        last_error: OSError | None = None
        for family, type_, proto, _name, sockaddr in answers:
            sock = socket.socket(family, type_, proto)
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
    parts = urlsplit(url)
    if parts.scheme.lower() not in ALLOWED_SCHEMES:
        raise UrlNotAllowed(f"only http and https URLs can be fetched, not {parts.scheme or 'no scheme'!r}")
    if not parts.hostname:
        raise UrlNotAllowed(f"the URL has no host: {url!r}")
    if parts.username or parts.password:
        raise UrlNotAllowed("URLs with credentials are not fetched")
    return url


def fetch_image(url: str, *, max_bytes: int, allow_loopback: bool = False) -> bytes:
    """The body behind `url`, at most `max_bytes` long, following at most MAX_REDIRECTS checked redirects.

    Raises UrlNotAllowed (bad scheme, forbidden address, also after a redirect), UrlFetchFailed (unresolvable,
    unreachable, timed out, error status, too many redirects) and PayloadTooLarge (over `max_bytes`).
    Whether the body is an image is for the image module to decide.
    """
    deadline = time.monotonic() + FETCH_TOTAL_TIMEOUT_S
    with _session(allow_loopback) as session:
        for _hop in range(MAX_REDIRECTS + 1):
            response = _get(session, _checked_url(url))
            with response:
                if response.status_code in REDIRECT_STATUSES and "Location" in response.headers:
                    url = urljoin(url, response.headers["Location"])
                    continue
                if response.status_code != 200:
                    raise UrlFetchFailed(f"the URL answered HTTP {response.status_code}")
                return _read_capped(response, max_bytes, deadline)
    raise UrlFetchFailed(f"more than {MAX_REDIRECTS} redirects")


def _get(session: requests.Session, url: str) -> requests.Response:
    try:
        return session.get(
            url,
            stream=True,
            allow_redirects=False,
            timeout=(FETCH_CONNECT_TIMEOUT_S, FETCH_READ_TIMEOUT_S),
        )
    except requests.Timeout as error:
        raise UrlFetchFailed(f"timed out fetching the URL: {error}") from error
    except requests.RequestException as error:
        raise UrlFetchFailed(f"cannot fetch the URL: {error}") from error


def _read_capped(response: requests.Response, max_bytes: int, deadline: float) -> bytes:
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(f"the image is {int(declared)} bytes; the limit is {max_bytes} bytes")
    body = bytearray()
    try:
        # read1 returns what has arrived instead of waiting for a full chunk, so the deadline is checked after
        # every packet: the read timeout alone is per read, and a server dripping one byte at a time would
        # never trip it. Sizes count decoded bytes, so a gzip bomb stops at the cap too.
        while chunk := response.raw.read1(CHUNK_BYTES, decode_content=True):
            body += chunk
            if len(body) > max_bytes:
                raise PayloadTooLarge(f"the image is over the limit of {max_bytes} bytes")
            if time.monotonic() > deadline:
                raise UrlFetchFailed(f"the download took longer than {FETCH_TOTAL_TIMEOUT_S:g} s")
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as error:
        raise UrlFetchFailed(f"the download failed: {error}") from error
    return bytes(body)
