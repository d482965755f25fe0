"""The policy for hrefs users send: what the string may hold, which URLs may be fetched, and
which addresses this server may connect to for them (never its own network: SSRF).

``check_url`` is the part that needs no network (scheme, host allow-list, credentials, an
unambiguous syntax); ``connectable`` is applied by the code that connects
(:mod:`aquamask.processes.pipeline.sources.remote`) to the very addresses it connects to, on every
connection and every redirect hop, so neither DNS rebinding nor redirects route around it.
"""
from __future__ import annotations

import ipaddress
import socket
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import urlsplit

from urllib3.exceptions import LocationParseError
from urllib3.util import parse_url

from aquamask.processes.errors import Forbidden, InvalidInput

MAX_HREF_CHARS = 2048
MAX_REDIRECTS = 5
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
AddrInfo = tuple[Any, ...]  # one socket.getaddrinfo result
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def check_href_text(href: Any, field: str = "image.href") -> str:
    """``href`` stripped, or InvalidInput when it is no string, too long, or holds control
    characters (NUL and the like, which file systems and URL parsers read differently)."""
    if not isinstance(href, str) or not href.strip():
        raise InvalidInput(f"{field} must be a non-empty string")
    if len(href) > MAX_HREF_CHARS:
        raise InvalidInput(f"{field} is {len(href):,} characters long; at most "
                           f"{MAX_HREF_CHARS:,} are accepted")
    bad = next((c for c in href if unicodedata.category(c) in ("Cc", "Cs")), None)
    if bad is not None:
        raise InvalidInput(f"{field} contains the control character U+{ord(bad):04X}; "
                           "send the path or URL without it")
    return href.strip()


def file_under(root: Path, name: str, href: str, field: str = "image.href") -> Path:
    """The file ``name`` (relative to ``root``, or absolute) resolves to, symlinks followed:
    Forbidden outside ``root``, InvalidInput when it is no file. Messages name ``href`` only."""
    try:
        root = root.resolve()
        path = (root / name).resolve()
        inside = path.is_relative_to(root)
        exists = inside and path.is_file()
    except (OSError, RuntimeError):  # a name too long, a symlink loop
        inside, exists = True, False
    if not inside:
        raise Forbidden(f"{field}: '{href}' is outside the data root; only files under the "
                        "server's data folder can be read")
    if not exists:
        raise InvalidInput(f"{field}: no such file '{href}' under the data root")
    return path


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one reaches (mapped, 6to4, NAT64), if any."""
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    for embedded in (address.ipv4_mapped, address.sixtofour):
        if embedded is not None:
            return embedded
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def is_public(address: IPAddress) -> bool:
    """Globally routable unicast: not loopback, link-local, private, reserved, multicast."""
    embedded = _embedded_ipv4(address)
    if embedded is not None and not is_public(embedded):
        return False
    return address.is_global and not address.is_multicast


@dataclass(frozen=True)
class HrefPolicy:
    """``limits.href_schemes``, ``href_hosts`` (empty: any public host) and
    ``href_private_hosts`` (hosts allowed to be on a private network)."""

    schemes: frozenset[str] = frozenset({"http", "https"})
    hosts: frozenset[str] = frozenset()
    private_hosts: frozenset[str] = frozenset()
    field: str = "image.href"  # how messages name the href: the input, or a CLI argument
    local: str = "a path under the data root"  # what a local href is, as messages say it

    @classmethod
    def of(cls, schemes: Iterable[str], hosts: Iterable[str] = (),
           private_hosts: Iterable[str] = (), field: str = "image.href",
           local: str = "a path under the data root") -> "HrefPolicy":
        def names(values: Iterable[str]) -> frozenset[str]:
            return frozenset(_host(str(v)) for v in values)
        return cls(frozenset(str(s).lower() for s in schemes), names(hosts),
                   names(private_hosts), field, local)

    def check_url(self, url: str) -> None:
        """Refuse, without any network, a URL this server does not fetch."""
        try:
            parsed = parse_url(url)  # urllib3's parser: the one the connecting code uses
            split = urlsplit(url)
        except (LocationParseError, ValueError):
            raise InvalidInput(f"{self.field}: '{url}' is not a valid URL") from None
        scheme = (parsed.scheme or "").lower()
        if scheme not in self.schemes:
            raise Forbidden(f"{self.field}: the scheme '{scheme}' is not allowed here")
        host = _host(parsed.host or "")
        # a URL two parsers read as two hosts is an attack on whichever checks it
        if _host(split.hostname or "") != host:
            raise InvalidInput(f"{self.field}: '{url}' is ambiguous (its host reads "
                               "differently to different URL parsers)")
        if not host:
            raise InvalidInput(f"{self.field}: '{url}' names no host")
        if parsed.auth or "@" in split.netloc:
            raise InvalidInput(f"{self.field}: credentials in a URL are not accepted; "
                               "use a URL that needs none (e.g. a pre-signed one)")
        self.check_host(host)

    def check_host(self, host: str) -> None:
        if self.hosts and _host(host) not in self.hosts:
            raise Forbidden(f"{self.field}: the host '{host}' is not among the allowed hosts")

    def connectable(self, host: str, port: int) -> list[AddrInfo]:
        """The addresses of ``host`` this server may connect to, resolved once: the caller
        connects to exactly these. A name with any non-public address is refused whole
        (unless in ``private_hosts``), so a DNS answer cannot mix one in."""
        self.check_host(host)
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as err:
            raise InvalidInput(f"{self.field}: the host '{host}' cannot be resolved "
                               f"({err})") from err
        if _host(host) not in self.private_hosts:
            for info in infos:
                if not is_public(ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])):
                    raise Forbidden(f"{self.field}: '{host}' is a loopback, link-local or "
                                    "private address, which this server does not fetch from")
        return infos


def _host(name: str) -> str:
    """A host as the allow-lists compare it: lower case, no brackets, no trailing dot."""
    return name.strip("[]").rstrip(".").lower()
