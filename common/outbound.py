"""The one policy for URLs taken from a request (webhooks, stream URLs, later http dataset sources).

A URL a caller hands us is checked when the request arrives (422 naming the field) and again
when we send to it, because DNS can change in between:

* its scheme is one the field allows;
* it carries no ``user:password@``;
* its host is resolved once (numeric spellings such as ``2852039166``, ``0xA9FEA9FE`` or
  ``0251.0376.0251.0376`` read as the IPv4 address they spell) and every address it resolves to
  must be public: loopback, private, link-local, unique-local, multicast, unspecified and
  reserved addresses are refused, also inside IPv4-mapped, IPv4-compatible, 6to4, Teredo and
  NAT64 IPv6 forms, unless ``TRAINYARD_OUTBOUND_ALLOW`` lists a CIDR range holding them;
* the connection goes to the address that was checked (the Host header and TLS SNI keep the
  name), redirects are not followed, and nothing of ours (no caller's or service's
  ``Authorization``) is added: only the headers the request itself asked for.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from common.errors import Unprocessable
from common.settings import Settings

log = logging.getLogger("trainyard.outbound")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

HTTP_SCHEMES = frozenset({"http", "https"})
MAX_URL_CHARS = 2048
SEND_TIMEOUT_SECONDS = 5.0
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_IPV4_COMPAT = ipaddress.IPv6Network("::/96")


class URLRefused(Unprocessable):
    """A request URL the outbound policy does not allow (detail names the field)."""

    error = "url_refused"


@dataclass(frozen=True)
class Target:
    """A checked URL: where to connect (``address``) and the name to present (``host``)."""

    url: str
    scheme: str
    host: str
    port: int
    address: IPAddress

    def pinned_url(self) -> str:
        """The URL with its host replaced by the checked address."""
        split = urlsplit(self.url)
        literal = f"[{self.address}]" if self.address.version == 6 else str(self.address)
        return urlunsplit((split.scheme, f"{literal}:{self.port}", split.path or "/", split.query, ""))

    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        name = f"[{self.host}]" if ":" in self.host else self.host
        return name if self.port == default else f"{name}:{self.port}"


def embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, compatible, 6to4, Teredo client, NAT64)."""
    if ip.version == 4:
        return None
    assert isinstance(ip, ipaddress.IPv6Address)
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in _NAT64 or (ip in _IPV4_COMPAT and int(ip) > 1):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def _public(ip: IPAddress) -> bool:
    return ip.is_global and not (ip.is_multicast or ip.is_reserved or ip.is_unspecified)


class OutboundPolicy:
    """Checks and sends to request URLs. Build one per process from settings."""

    def __init__(self, allow: Iterable[IPNetwork] = ()) -> None:
        self.allow = tuple(allow)

    @classmethod
    def from_settings(cls, settings: Settings) -> OutboundPolicy:
        return cls(settings.outbound_allow)

    def allowed(self, ip: IPAddress) -> bool:
        """Public (in every form it carries), or inside an allow-listed range."""
        inner = embedded_ipv4(ip)
        forms: list[IPAddress] = [ip] if inner is None else [ip, inner]
        if any(f in net for f in forms for net in self.allow if f.version == net.version):
            return True
        return all(_public(f) for f in forms)

    def check(self, url: str, *, field: str, schemes: frozenset[str] = HTTP_SCHEMES) -> Target:
        """Resolve ``url`` once and return where to connect.

        Raises:
            URLRefused: bad scheme or URL, credentials in it, a host that does not resolve, or an
                address the policy refuses; the detail names ``field``, never what was found.
        """
        if len(url) > MAX_URL_CHARS:
            raise URLRefused(f"{field}: URL longer than {MAX_URL_CHARS} characters")
        try:
            split = urlsplit(url)
            port = split.port
        except ValueError as e:
            raise URLRefused(f"{field}: not a valid URL") from e
        scheme = split.scheme.lower()
        if scheme not in schemes:
            raise URLRefused(f"{field}: scheme must be one of {', '.join(sorted(schemes))}")
        if split.username is not None or split.password is not None:
            raise URLRefused(f"{field}: credentials in the URL are not allowed (use the auth header field)")
        host = (split.hostname or "").rstrip(".")
        if not host:
            raise URLRefused(f"{field}: the URL names no host")
        port = port or (443 if scheme == "https" else 80)
        addresses = _resolve(host, port)
        if not addresses:
            raise URLRefused(f"{field}: the host does not resolve")
        if not all(self.allowed(ip) for ip in addresses):
            raise URLRefused(
                f"{field}: the URL must reach a public address (loopback, private, link-local and similar "
                "addresses are refused unless TRAINYARD_OUTBOUND_ALLOW lists them)"
            )
        return Target(url=url, scheme=scheme, host=host, port=port, address=addresses[0])

    def post_json(
        self, url: str, *, field: str, body: Any, headers: Mapping[str, str] | None = None,
        timeout: float = SEND_TIMEOUT_SECONDS,
    ) -> httpx.Response:
        """POST ``body`` to ``url`` after checking it again; connects to the checked address only.

        Raises:
            URLRefused: the URL no longer passes the policy (nothing is sent).
            httpx.HTTPError: the send failed.
        """
        target = self.check(url, field=field)
        extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
        with httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False) as client:
            request = client.build_request(
                "POST", target.pinned_url(), json=body,
                headers={**(headers or {}), "Host": target.host_header()}, extensions=extensions,
            )
            response = client.send(request)
        if response.is_redirect:
            log.warning("%s answered a redirect; redirects are not followed", field)
        return response


def _resolve(host: str, port: int) -> list[IPAddress]:
    """Every address ``host`` names; IPv4 in any inet_aton spelling is read without DNS."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        return [ipaddress.IPv4Address(socket.inet_aton(host))]
    except OSError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return []
    seen: list[IPAddress] = []
    for info in infos:
        ip = ipaddress.ip_address(str(info[4][0]).partition("%")[0])
        if ip not in seen:
            seen.append(ip)
    return seen
