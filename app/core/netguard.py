"""Which network addresses the service may connect to on someone else's say-so: public ones only.

A webhook endpoint (or a photo URL in a dump) names a host; a host name can resolve to the machine
itself, to the office network behind it, or to a cloud metadata service (169.254.169.254). Without a
check, whoever may register a URL reads or pokes those through the service (server-side request forgery).
``check_public_host`` resolves the name and refuses it when ANY address it resolves to is not public;
the caller then connects to one of the addresses it returned (pinned), never resolving the name again,
so a name that changes its answer between the check and the connection (DNS rebinding) gains nothing.
IPv6 addresses that carry an IPv4 one (IPv4-mapped ``::ffff:127.0.0.1``, 6to4, NAT64) are judged by it.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from app.core.errors import AppError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# NAT64 prefixes (well-known and local-use): the last 32 bits are the IPv4 address reached
NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
MAX_URL_LENGTH = 2000


class UnsafeAddress(AppError):
    """A URL or host the service refuses to connect to (not public, not resolvable, not https)."""

    status_code = 422
    code = "unsafe_address"


def embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one stands for (IPv4-mapped, 6to4, NAT64), if any."""
    if isinstance(ip, ipaddress.IPv4Address):
        return None
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if any(ip in net for net in NAT64):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def address_problem(ip: IPAddress) -> str | None:
    """Why ``ip`` is not a public address ("loopback", "private"...); None when it is one."""
    inner = embedded_ipv4(ip)
    if inner is not None:  # an IPv4 address in IPv6 form: the connection reaches the IPv4 one
        return address_problem(inner)
    if isinstance(ip, ipaddress.IPv6Address) and ip.teredo is not None:
        return "tunnel"  # a tunnel to an address named inside it: never needed for a photo or a receiver
    checks = (
        ("unspecified", ip.is_unspecified), ("loopback", ip.is_loopback), ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast), ("private", ip.is_private), ("reserved", ip.is_reserved),
        ("site-local", isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local),
    )
    for name, hit in checks:
        if hit:
            return name
    if not ip.is_global:  # shared address space (100.64.0.0/10) and other non-global blocks
        return "not public"
    return None


def _parse(address: str) -> IPAddress:
    return ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 zone ("fe80::1%eth0") is no part of it


def check_public_host(host: str, port: int, allow_private: bool = False) -> list[str]:
    """Resolve ``host`` and return its addresses (each once, in the resolver's order).

    Raises ``UnsafeAddress`` when the name does not resolve, or, unless ``allow_private``, when any address
    it resolves to is loopback, private, link-local, multicast, reserved, unspecified or otherwise not
    public. Connect to one of the returned addresses: resolving the name again could give another one.
    """
    if not host:
        raise UnsafeAddress("The URL names no host.")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError, OSError) as exc:
        raise UnsafeAddress(f"The host {host!r} cannot be resolved ({exc}).") from None
    addresses: list[str] = []
    for _family, _type, _proto, _canon, sockaddr in infos:
        address = str(sockaddr[0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise UnsafeAddress(f"The host {host!r} resolves to no address.")
    if not allow_private:
        for address in addresses:
            problem = address_problem(_parse(address))
            if problem is not None:
                raise UnsafeAddress(
                    f"The host {host!r} resolves to {address}, a {problem} address: only public addresses are "
                    "allowed (a setting allows others, for tests and receivers on the same network).")
    return addresses


@dataclass(frozen=True)
class CheckedURL:
    """A URL whose host was checked, with the addresses to connect to."""

    url: str
    scheme: str  # "https" or "http"
    host: str  # as the URL names it, for the Host header and the TLS certificate check
    port: int
    target: str  # path and query, for the request line
    addresses: tuple[str, ...]


def parse_http_url(url: str, allow_http: bool) -> tuple[str, str, int, str]:
    """(scheme, host, port, target) of an https URL (http too with ``allow_http``); ``UnsafeAddress`` otherwise."""
    url = (url or "").strip()
    if not url or len(url) > MAX_URL_LENGTH:
        raise UnsafeAddress(f"A URL of 1 to {MAX_URL_LENGTH} characters is needed.")
    if any(ord(c) < 0x21 or 0x7F <= ord(c) <= 0x9F for c in url):
        raise UnsafeAddress("The URL contains spaces or control characters.")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UnsafeAddress(f"The URL cannot be read ({exc}).") from None
    scheme = parts.scheme.lower()
    if scheme == "http" and not allow_http:
        raise UnsafeAddress("Plain http URLs are refused: use https (a setting allows http, for tests and "
                            "receivers on the same machine).")
    if scheme not in ("https", "http"):
        raise UnsafeAddress("Only https URLs are allowed.")
    if parts.username is not None or parts.password is not None:
        raise UnsafeAddress("The URL may not carry a user name or password.")
    host = parts.hostname or ""
    if not host:
        raise UnsafeAddress("The URL names no host.")
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return scheme, host, port or (443 if scheme == "https" else 80), target


def check_public_url(url: str, allow_private: bool = False) -> CheckedURL:
    """Parse ``url`` and check its host (``check_public_host``). Without ``allow_private`` only https is allowed."""
    scheme, host, port, target = parse_http_url(url, allow_http=allow_private)
    addresses = check_public_host(host, port, allow_private)
    return CheckedURL(url=url.strip(), scheme=scheme, host=host, port=port, target=target,
                      addresses=tuple(addresses))
