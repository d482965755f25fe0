"""Remote hrefs: only allowed schemes and hosts, never this server's own network (SSRF).

Every hop of a redirect chain is resolved and checked, not just the first URL, and GDAL is then
given the final URL. The checks are by resolved address, so a public name that resolves to a
private address is refused too.
"""
from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urljoin, urlparse

import requests

from aquamask.processes.errors import Forbidden, InvalidInput

MAX_REDIRECTS = 5


def _addresses(host: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror as err:
        raise InvalidInput(f"image.href: the host '{host}' cannot be resolved ({err})") from err
    return [ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in infos]


def check_host(url: str, schemes: list[str], hosts: list[str],
               private_hosts: list[str]) -> None:
    parsed = urlparse(url)
    if parsed.scheme not in schemes:
        raise Forbidden(f"image.href: the scheme '{parsed.scheme}' is not allowed here")
    host = (parsed.hostname or "").lower()
    if not host:
        raise InvalidInput(f"image.href: '{url}' names no host")
    if hosts and host not in hosts:
        raise Forbidden(f"image.href: the host '{host}' is not among the allowed hosts")
    if host in private_hosts:
        return
    for address in _addresses(host):
        if not address.is_global or address.is_multicast:
            raise Forbidden(f"image.href: '{host}' is a loopback, link-local or private "
                            "address, which this server does not fetch from")


def safe_remote_url(url: str, schemes: list[str], hosts: list[str], private_hosts: list[str],
                    timeout: float = 10.0) -> str:
    """The URL GDAL may read: ``url`` after its redirects, every hop checked."""
    current = url
    for _ in range(MAX_REDIRECTS + 1):
        check_host(current, schemes, hosts, private_hosts)
        try:
            response = requests.head(current, allow_redirects=False, timeout=timeout)
        except requests.RequestException as err:
            raise InvalidInput(f"image.href: '{url}' cannot be reached ({err})") from err
        if response.is_redirect and response.headers.get("Location"):
            current = urljoin(current, response.headers["Location"])
            continue
        if response.status_code >= 400 and response.status_code != 405:
            raise InvalidInput(f"image.href: '{url}' answered HTTP {response.status_code}")
        return current
    raise InvalidInput(f"image.href: '{url}' redirects more than {MAX_REDIRECTS} times")
