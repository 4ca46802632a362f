"""Documents given by URL: fetched only when enabled, within limits, never from
private networks unless allow-listed (SSRF guard).

Every hop (the URL and each redirect) is checked: scheme http or https, and
every address its host resolves to must be public (not private, loopback,
link-local, multicast, reserved or unspecified) unless the host, or a
network holding the address, is in the allow-list. Text-like bodies become
the document's text.

Bounds, so that one request cannot hold much memory, many sockets or a
connection for long: at most ``max_documents`` URL documents a request,
``max_bytes`` each and ``max_total_bytes`` together (counted as the bytes
arrive, after content decoding), ``concurrency`` fetched at a time, and each
fetch ends within ``timeout`` seconds in all (resolution, connection,
redirects, headers and body: a server sending its headers a byte at a time
is cut off too). The first failure cancels the request's other fetches, and
so does cancelling the caller (the HTTP layer does when the client leaves):
cancelled fetches close their connections.

Known limit: the address is checked at resolution and the connection resolves
again (a DNS answer that changes in between is not caught).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import anyio
import httpx

from parley.boundary import Boundary
from parley.errors import InvalidRequestError, ParleyError, UnsupportedFeatureError

MAX_REDIRECTS = 5
TEXT_TYPES = ("text/", "application/json", "application/xml", "application/x-yaml")


@dataclass(frozen=True)
class FetchPolicy:
    enabled: bool = False
    allow: tuple[str, ...] = ()  # host names or networks (CIDR) exempt from the guard
    max_bytes: int = 10 * 1024 * 1024  # one document
    timeout: float = 10.0  # one document's whole fetch
    max_documents: int = 20  # URL documents in one request
    max_total_bytes: int = 32 * 1024 * 1024  # all of one request's documents together
    # Fetches of one request at a time: enough to overlap slow origins, few
    # enough that one request opens only a handful of sockets.
    concurrency: int = 4

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


class _Budget:
    """The bytes one request's documents may still take, shared by its fetches."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.left = total

    def take(self, n: int, url: str, path: str) -> None:
        if n > self.left:
            raise InvalidRequestError(
                f"{path}: with the document at {url}, this request's URL documents come to "
                f"more than {self.total} bytes together, the limit of one request"
            )
        self.left -= n


async def fetch_all(targets: Sequence[tuple[str, str]], policy: FetchPolicy) -> list[str]:
    """The texts of the documents at ``(url, path)`` targets, in order, within the
    policy's bounds; otherwise a 400 naming the path of the first document that
    broke one (the others' fetches are then cancelled)."""
    if not targets:
        return []
    if not policy.enabled:
        raise UnsupportedFeatureError(
            f"{targets[0][1]}: URL sources are disabled on this server (start parley with "
            "--allow-url-sources to fetch them)"
        )
    if len(targets) > policy.max_documents:
        path = targets[policy.max_documents][1]
        raise InvalidRequestError(
            f"{path}: a request may give at most {policy.max_documents} documents by URL; "
            f"this one gives {len(targets)}"
        )
    budget = _Budget(policy.max_total_bytes)
    turns = asyncio.Semaphore(policy.concurrency)
    texts: list[str] = [""] * len(targets)
    failed: list[ParleyError] = []

    async def one(i: int, url: str, path: str) -> None:
        try:
            async with turns:
                texts[i] = await _fetch_text(url, policy, path=path, budget=budget)
        except ParleyError as exc:  # raised below, outside the task group's exception group
            failed.append(exc)
            tg.cancel_scope.cancel()

    async with anyio.create_task_group() as tg:
        for i, (url, path) in enumerate(targets):
            tg.start_soon(one, i, url, path)
    if failed:
        raise failed[0]
    return texts


# What a failed fetch tells the client: the document's path, its URL, and why.
HTTPX = Boundary(
    "httpx",
    [
        (
            httpx.TimeoutException,
            lambda exc, what, ctx: InvalidRequestError(
                f"{what} took longer than {ctx['timeout']:g} s"
            ),
        ),
        (httpx.HTTPError, lambda exc, what, ctx: InvalidRequestError(f"{what} failed: {exc}")),
    ],
)


async def _fetch_text(url: str, policy: FetchPolicy, *, path: str, budget: _Budget) -> str:
    try:
        # One deadline over every step: httpx's own timeouts apply to each read
        # alone, so a server dribbling bytes would never trip them.
        with anyio.fail_after(policy.timeout):
            return await _follow(url, policy, path=path, budget=budget)
    except TimeoutError:
        raise InvalidRequestError(
            f"{path}: fetching {url} took longer than {policy.timeout:g} s"
        ) from None


async def _follow(url: str, policy: FetchPolicy, *, path: str, budget: _Budget) -> str:
    async with httpx.AsyncClient(follow_redirects=False, timeout=policy.timeout) as client:
        for _ in range(MAX_REDIRECTS + 1):
            await _check(url, policy, path)
            with HTTPX.crossing(f"{path}: fetching {url}", timeout=policy.timeout):
                async with client.stream("GET", url) as response:
                    if response.is_redirect and "location" in response.headers:
                        url = urljoin(url, response.headers["location"])
                        continue
                    return await _read(response, url, policy, path=path, budget=budget)
    raise InvalidRequestError(f"{path}: more than {MAX_REDIRECTS} redirects from {url}")


async def _read(
    response: httpx.Response, url: str, policy: FetchPolicy, *, path: str, budget: _Budget
) -> str:
    if response.status_code != 200:
        raise InvalidRequestError(f"{path}: fetching {url} gave HTTP {response.status_code}")
    kind = response.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "application/pdf":
        raise UnsupportedFeatureError(
            f"{path}: {url} is a PDF; PDF documents are not supported by parley yet"
        )
    if kind and not kind.startswith(TEXT_TYPES):
        raise InvalidRequestError(f"{path}: {url} is '{kind}', not a text document")
    too_big = f"{path}: the document at {url} is larger than {policy.max_bytes} bytes"
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > policy.max_bytes:
        raise InvalidRequestError(too_big)  # refused before reading any of it
    body = bytearray()
    async for chunk in response.aiter_bytes():
        if len(body) + len(chunk) > policy.max_bytes:
            raise InvalidRequestError(too_big)
        budget.take(len(chunk), url, path)
        body.extend(chunk)
    return body.decode(response.encoding or "utf-8", errors="replace")
