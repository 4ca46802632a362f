"""Documents given by URL: fetched only when enabled, within limits, never from
private networks unless allow-listed (SSRF guard).

Every hop (the URL and each redirect) is checked: scheme http or https, and
every address its host resolves to must be public (not private, loopback,
link-local, multicast, reserved or unspecified) unless the host, or a
network holding the address, is in the allow-list. Bodies are read up to a
byte limit and a time limit. Text-like bodies become the document's text.

Known limit: the address is checked at resolution and the connection resolves
again (a DNS answer that changes in between is not caught).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import httpx

from parley.errors import InvalidRequestError, UnsupportedFeatureError

MAX_REDIRECTS = 5
TEXT_TYPES = ("text/", "application/json", "application/xml", "application/x-yaml")


@dataclass(frozen=True)
class FetchPolicy:
    enabled: bool = False
    allow: tuple[str, ...] = ()  # host names or networks (CIDR) exempt from the guard
    max_bytes: int = 10 * 1024 * 1024
    timeout: float = 10.0

    def allows_host(self, host: str) -> bool:
        return host.lower() in {a.lower() for a in self.allow}

    def allows_address(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        for item in self.allow:
            try:
                if address in ipaddress.ip_network(item, strict=False):
                    return True
            except ValueError:
                continue
        return False


def _private(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    return (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
    )


async def _check(url: str, policy: FetchPolicy, path: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequestError(f"{path}: only http and https URLs can be fetched, not {url!r}")
    host = parts.hostname
    if policy.allows_host(host):
        return
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, parts.port or (443 if parts.scheme == "https" else 80), type=socket.SOCK_STREAM
        )
    except OSError as exc:
        raise InvalidRequestError(f"{path}: cannot resolve {host}: {exc.strerror}") from None
    addresses: Sequence[str] = sorted({str(info[4][0]) for info in infos})
    for raw in addresses:
        address = ipaddress.ip_address(raw.split("%")[0])
        if _private(address) and not policy.allows_address(address):
            raise InvalidRequestError(
                f"{path}: refused to fetch {url}: {host} resolves to {address}, a private, "
                "loopback or link-local address (allow-list it with --url-allow to fetch it)"
            )


async def fetch_text(url: str, policy: FetchPolicy, *, path: str) -> str:
    """The text of the document at ``url``, or a 400 naming ``path`` and the reason."""
    if not policy.enabled:
        raise UnsupportedFeatureError(
            f"{path}: URL sources are disabled on this server (start parley with "
            "--allow-url-sources to fetch them)"
        )
    deadline = time.monotonic() + policy.timeout
    async with httpx.AsyncClient(follow_redirects=False, timeout=policy.timeout) as client:
        for _ in range(MAX_REDIRECTS + 1):
            await _check(url, policy, path)
            try:
                async with client.stream("GET", url) as response:
                    if response.is_redirect and "location" in response.headers:
                        url = urljoin(url, response.headers["location"])
                        continue
                    if response.status_code != 200:
                        raise InvalidRequestError(
                            f"{path}: fetching {url} gave HTTP {response.status_code}"
                        )
                    kind = response.headers.get("content-type", "").split(";")[0].strip().lower()
                    if kind == "application/pdf":
                        raise UnsupportedFeatureError(
                            f"{path}: {url} is a PDF; PDF documents are not supported by parley yet"
                        )
                    if kind and not kind.startswith(TEXT_TYPES):
                        raise InvalidRequestError(f"{path}: {url} is '{kind}', not a text document")
                    body = bytearray()
                    async for chunk in response.aiter_bytes():
                        body.extend(chunk)
                        if len(body) > policy.max_bytes:
                            raise InvalidRequestError(
                                f"{path}: the document at {url} is larger than "
                                f"{policy.max_bytes} bytes"
                            )
                        if time.monotonic() > deadline:
                            raise InvalidRequestError(
                                f"{path}: fetching {url} took longer than {policy.timeout:g} s"
                            )
                    return body.decode(response.encoding or "utf-8", errors="replace")
            except httpx.TimeoutException:
                raise InvalidRequestError(
                    f"{path}: fetching {url} took longer than {policy.timeout:g} s"
                ) from None
            except httpx.HTTPError as exc:
                raise InvalidRequestError(f"{path}: cannot fetch {url}: {exc}") from None
    raise InvalidRequestError(f"{path}: more than {MAX_REDIRECTS} redirects from {url}")
