"""Fetching listing photos named by URL (only with ``--fetch``).

The URLs are written by sellers and fetched from inside the institution's network, so one fetcher
holds every rule:

- http and https only, for the URL and every redirect;
- the host is resolved here (``getaddrinfo``), and the fetch is refused unless every address the name
  resolves to is public: not loopback, private, shared, link-local, multicast, reserved or unspecified,
  nor an IPv6 form of one of those (IPv4-mapped, 6to4, NAT64). Numeric oddities (``127.1``,
  ``2130706433``, ``0x7f.1``) resolve to what they mean and are refused alike. Redirect targets are
  checked the same way before they are connected to. ``HM_FETCH_ALLOW_PRIVATE`` turns the check off
  (a registry's own image server on the local network, tests);
- the connection goes to the address that was checked (pinned): a DNS answer that changes between the
  check and the connection cannot move it; the Host header and the TLS name stay the URL's host;
- a refused address is refused before any connection, with one message whatever is listening there,
  so ``errors.jsonl`` cannot be used to map internal hosts and ports;
- one deadline (``HM_FETCH_DEADLINE_S``) for the whole download, retries and redirects included:
  every connect and every read waits at most for the time left, so a server that trickles bytes
  cannot hold a decode worker; besides, no single wait is longer than ``timeout_s``;
- a size cap, and a few retries with back-off on transient failures.

Concurrency is bounded by the decode workers that call it (one fetch at a time per worker process
or Ray task). Proxy variables (``HTTP_PROXY``...) are not used: a proxy would resolve the name itself.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

from app.core.netguard import address_problem
from app.jobs.scan.sources import ImageUnavailable, is_url

RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}
REDIRECT_STATUS = {301, 302, 303, 307, 308}
USER_AGENT = "heritage-match-scan/0.1"
READ_CHUNK = 1 << 16
# Characters sent as they are in a request path; anything else (spaces, controls, non-ASCII) is %-encoded.
_PATH_SAFE = "".join(chr(c) for c in range(0x21, 0x7F))

Address = tuple[int, int, int, Any]  # family, type, proto, sockaddr: as getaddrinfo gives them


@dataclass(frozen=True)
class FetchPolicy:
    enabled: bool = False
    timeout_s: float = 20.0  # the longest single wait (connect, one read)
    max_bytes: int = 25 * 1024 * 1024
    retries: int = 2
    backoff_s: float = 0.5
    deadline_s: float = 30.0  # the whole download: resolution aside, connects, redirects, reads, retries
    allow_private: bool = False  # fetch loopback, private, link-local... addresses too
    max_redirects: int = 5


class _Retry(Exception):
    """A failure worth another attempt (HTTP 503, connection reset...)."""


class _Final(Exception):
    """A failure another attempt would not change (HTTP 404, a name that does not exist...)."""


class _DeadlinePassed(TimeoutError):
    """The download's time is up (raised before a wait that could not finish in time)."""


def address_allowed(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether ``ip`` is a public address, the only kind fetched unless ``allow_private`` (the same rule
    as webhook endpoints: ``app.core.netguard``)."""
    return address_problem(ip) is None


def fetch(url: str, policy: FetchPolicy) -> bytes:
    if not policy.enabled:
        raise ImageUnavailable(f"{url} is a URL: run the scan with --fetch to download listing photos")
    if not is_url(url):
        raise ImageUnavailable(f"{url!r}: only http and https URLs are fetched")
    deadline = time.monotonic() + policy.deadline_s
    last = ""
    attempt = 0
    for attempt in range(policy.retries + 1):
        if attempt:
            pause = policy.backoff_s * 2 ** (attempt - 1)
            if time.monotonic() + pause >= deadline:
                attempt -= 1
                break
            time.sleep(pause)
        try:
            return _download(url, policy, deadline)
        except _Retry as exc:
            last = str(exc)
        except _Final as exc:
            last = str(exc)
            break
        except (http.client.HTTPException, OSError) as exc:
            if isinstance(exc, _DeadlinePassed) or (isinstance(exc, TimeoutError) and _left(deadline) < 0.05):
                raise ImageUnavailable(f"{url} could not be fetched: the download took longer than "
                                       f"{policy.deadline_s:g} s (HM_FETCH_DEADLINE_S)") from None
            last = str(exc) or type(exc).__name__
    raise ImageUnavailable(f"{url} could not be fetched ({last}) after {attempt + 1} attempt(s)")


def _download(url: str, policy: FetchPolicy, deadline: float) -> bytes:
    current = url
    for _ in range(policy.max_redirects + 1):
        parts = urllib.parse.urlsplit(current)
        scheme = parts.scheme.lower()
        try:
            host, port = parts.hostname, parts.port or (443 if scheme == "https" else 80)
        except ValueError:
            raise ImageUnavailable(f"{current!r} is not a valid URL") from None
        if not host:
            raise ImageUnavailable(f"{current!r} is not a valid URL (no host)")
        addresses = _vetted(current, host, port, policy)  # before any connection
        conn: http.client.HTTPConnection
        if scheme == "https":
            conn = _PinnedHTTPS(host, port, addresses, policy.timeout_s, deadline)
        else:
            conn = _PinnedHTTP(host, port, addresses, policy.timeout_s, deadline)
        try:
            target = urllib.parse.quote(parts.path or "/", safe=_PATH_SAFE)
            if parts.query:
                target += "?" + urllib.parse.quote(parts.query, safe=_PATH_SAFE)
            conn.request("GET", target, headers={"User-Agent": USER_AGENT, "Accept": "image/*, */*;q=0.5",
                                                 "Connection": "close"})
            resp = conn.getresponse()
            if resp.status in REDIRECT_STATUS:
                location = (resp.getheader("Location") or "").strip()
                if not location:
                    raise _Final(f"HTTP {resp.status} without a Location")
                current = urllib.parse.urljoin(current, location)
                if not is_url(current):
                    raise ImageUnavailable(f"redirect to {current!r} refused: only http and https are fetched")
                continue
            if not 200 <= resp.status < 300:
                raise (_Retry if resp.status in RETRY_STATUS else _Final)(f"HTTP {resp.status}")
            return _read_body(resp, policy.max_bytes, url)
        finally:
            conn.close()
    raise _Final(f"more than {policy.max_redirects} redirects")


def _vetted(url: str, host: str, port: int, policy: FetchPolicy) -> list[Address]:
    """The addresses ``host`` resolves to; refused unless every one is allowed."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        if exc.errno == socket.EAI_AGAIN:
            raise _Retry("the host name could not be resolved now") from None
        raise _Final("the host name does not resolve") from None
    except UnicodeError:
        raise ImageUnavailable(f"{url!r} is not a valid URL (host name)") from None
    addresses: list[Address] = [(family, type_, proto, sockaddr) for family, type_, proto, _, sockaddr in infos
                 if family in (socket.AF_INET, socket.AF_INET6)]
    if not addresses:
        raise _Final("the host name has no IP address")
    if not policy.allow_private and not all(address_allowed(_ip(a)) for a in addresses):
        # One message, decided before connecting: nothing tells whether anything listens there.
        raise ImageUnavailable(f"{url} was not fetched: its host {host!r} is not a public address "
                               "(HM_FETCH_ALLOW_PRIVATE is off)")
    return addresses


def _ip(address: Address) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(str(address[3][0]).split("%", 1)[0])  # an IPv6 scope (%eth0) aside


def _left(deadline: float) -> float:
    return deadline - time.monotonic()


def _arm(sock: socket.socket, deadline: float, idle: float) -> None:
    """Before a wait on ``sock``: let it last no longer than the time left (nor ``idle``)."""
    left = _left(deadline)
    if left <= 0:
        raise _DeadlinePassed("the download's deadline passed")
    sock.settimeout(min(idle, left))


class _DeadlineReads:
    """Every read waits at most for the download's time left (mixed into a plain and a TLS socket;
    ``http.client`` reads through ``recv_into``)."""

    deadline = 0.0
    idle = 0.0

    def recv_into(self, *args: Any, **kwargs: Any) -> int:
        _arm(self, self.deadline, self.idle)  # type: ignore[arg-type]  # always mixed into a socket
        return super().recv_into(*args, **kwargs)  # type: ignore[misc]

    def recv(self, *args: Any, **kwargs: Any) -> bytes:
        _arm(self, self.deadline, self.idle)  # type: ignore[arg-type]
        return super().recv(*args, **kwargs)  # type: ignore[misc]


class _DeadlineSocket(_DeadlineReads, socket.socket):
    pass


class _DeadlineSSLSocket(_DeadlineReads, ssl.SSLSocket):
    pass


def _connect(addresses: list[Address], deadline: float, idle: float) -> _DeadlineSocket:
    """A connection to the first of the vetted ``addresses`` that answers."""
    error: OSError = OSError("no address to connect to")
    for family, type_, proto, sockaddr in addresses:
        sock = _DeadlineSocket(family, type_, proto)
        sock.deadline, sock.idle = deadline, idle
        try:
            _arm(sock, deadline, idle)
            sock.connect(sockaddr)
            return sock
        except _DeadlinePassed:
            sock.close()
            raise
        except OSError as exc:
            sock.close()
            error = exc
    raise error


class _PinnedHTTP(http.client.HTTPConnection):
    """An HTTP connection to an address vetted beforehand, not to whatever the host name resolves to now."""

    def __init__(self, host: str, port: int, addresses: list[Address], idle: float, deadline: float):
        super().__init__(host, port, timeout=idle)
        self._addresses, self._idle, self._deadline = addresses, idle, deadline

    def connect(self) -> None:
        self.sock = _connect(self._addresses, self._deadline, self._idle)


_tls_context: ssl.SSLContext | None = None


def _tls() -> ssl.SSLContext:
    global _tls_context
    if _tls_context is None:  # once per process: loading the CA store takes a while
        context = ssl.create_default_context()
        context.sslsocket_class = _DeadlineSSLSocket
        _tls_context = context
    return _tls_context


class _PinnedHTTPS(http.client.HTTPSConnection):
    """HTTPS to a vetted address; the certificate is checked against the URL's host name (SNI too)."""

    def __init__(self, host: str, port: int, addresses: list[Address], idle: float, deadline: float):
        super().__init__(host, port, timeout=idle, context=_tls())
        self._addresses, self._idle, self._deadline = addresses, idle, deadline

    def connect(self) -> None:
        sock = _connect(self._addresses, self._deadline, self._idle)
        try:
            tls = _tls().wrap_socket(sock, server_hostname=self.host, do_handshake_on_connect=False)
        except BaseException:
            sock.close()
            raise
        assert isinstance(tls, _DeadlineSSLSocket)
        tls.deadline, tls.idle = self._deadline, self._idle
        self.sock = tls
        _arm(tls, self._deadline, self._idle)
        tls.do_handshake()  # one wait, bounded by the time left


def _read_body(resp: http.client.HTTPResponse, max_bytes: int, url: str) -> bytes:
    too_large = f"{url} is larger than the limit of {max_bytes // (1024 * 1024)} MB"
    declared = (resp.getheader("Content-Length") or "").strip()
    if declared.isdigit() and int(declared) > max_bytes:
        raise ImageUnavailable(too_large)
    chunks, total = [], 0
    while True:
        chunk = resp.read1(READ_CHUNK)  # at most one read from the socket, armed with the time left
        if not chunk:
            break
        total += len(chunk)
        if total > max_bytes:
            raise ImageUnavailable(too_large)
        chunks.append(chunk)
    if resp.length:  # the server closed before the length it announced
        raise _Retry("the connection closed before the end of the photo")
    return b"".join(chunks)
