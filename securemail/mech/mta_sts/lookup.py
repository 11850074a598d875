"""MTA-STS lookups (I/O): the ``_mta-sts`` TXT record and the policy over HTTPS (§3.3).

Both are bounded: the DNS query by the resolver's timeout, the fetch by ``timeout`` for
the whole exchange and by ``MAX_POLICY_BYTES`` for the body, because a policy host is
chosen by whoever controls the recipient's domain and may be hostile or just slow.

In bulk (the checker grades thousands of domains a run) a fetch cost what it built, not
what it sent: ``ssl.create_default_context()`` reads the system trust store, 18-50 ms of
CPU each time. So the verifying context is built once per trust configuration (the
``ca_file`` path and its modification time, so a replaced CA file is read again) and
shared, as an ``SSLContext`` may be; and a run keeps one ``PolicyClient`` rather than an
HTTP client per fetch. A shared client must never let a connection verified for one
policy host carry another host's request: connections go to the address our resolver
gave, and httpx pools them by that address, so two policy hosts on one address (a
hosting provider's) could otherwise share a connection verified for the first name
only. Keep-alive is therefore off (and every request says ``Connection: close``): each
fetch verifies its own host on its own connection. Within a run each policy host is
fetched once anyway (every domain is checked once), so keep-alive would save nothing.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType

import httpx

from securemail.dns import DnsNotFound, Resolver
from securemail.mech.mta_sts.parse import MtaStsError

MAX_POLICY_BYTES = 64 * 1024  # RFC 8461 §3.3
WELL_KNOWN = "/.well-known/mta-sts.txt"

Resolve = Callable[[str], Awaitable[str]]


class PolicyTimeoutError(MtaStsError):
    """The policy host did not answer in time: nothing is known about the policy (the
    checker says "could not check"; delivery treats it like any failed fetch)."""


class PolicyHostCertificateError(MtaStsError):
    """The policy host's certificate failed PKIX validation: RFC 8460's
    ``sts-webpki-invalid``, which a sender reports apart from other fetch failures."""


async def lookup_record(domain: str, resolver: Resolver) -> list[str]:
    """The TXT strings at ``_mta-sts.<domain>`` (``[]`` when the name does not exist).

    A DNS failure raises ``DnsTemporaryError``: it must never read as "no policy", which
    would let a forged answer switch MTA-STS off. ``parse_txt_record`` reads the result.
    """
    try:
        return await resolver.txt(f"_mta-sts.{domain.rstrip('.').lower()}")
    except DnsNotFound:
        return []


def policy_context(ca_file: Path | None = None) -> ssl.SSLContext:
    """The context that verifies policy hosts (system roots plus ``ca_file``, host name
    checked), built once per ``ca_file`` version. Raises what loading ``ca_file`` raises."""
    return _policy_context(ca_file, trust_version(ca_file))


@functools.lru_cache(maxsize=8)
def _policy_context(ca_file: Path | None, _version: tuple[int, int]) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if ca_file is not None:
        context.load_verify_locations(cafile=str(ca_file))
    return context


def trust_version(ca_file: Path | None) -> tuple[int, int]:
    """What tells one version of a CA file from the next, for caches of contexts that
    load it (here, and the checker's TLS probe): modification time and size. (-1, -1)
    when it cannot be read, so that loading it is tried again and says why."""
    try:
        stat = ca_file.stat() if ca_file is not None else None
    except OSError:
        return -1, -1
    return (stat.st_mtime_ns, stat.st_size) if stat is not None else (0, 0)


class PolicyClient:
    """Fetches policies over one HTTP client: for a run of many fetches, ``async with``.

    ``resolve`` maps a policy host's name to the IP to connect to (so tests and our own
    ``Resolver`` decide where it goes) while TLS SNI, certificate verification and the
    Host header still use the name. ``max_connections`` bounds the fetches in progress;
    a fetch waiting for a free connection waits within its own ``timeout``, so size it
    to the fetches that may run at once (the checker: one per domain in flight).
    ``direct`` connects without the environment's proxy settings, as does ``resolve``.
    """

    def __init__(
        self,
        *,
        ca_file: Path | None = None,
        timeout: float = 10.0,
        resolve: Resolve | None = None,
        max_connections: int = 100,
        direct: bool = False,
    ) -> None:
        self.timeout = timeout
        self._resolve = resolve
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=0)
        self._client = httpx.AsyncClient(
            verify=policy_context(ca_file), follow_redirects=False, timeout=timeout,
            limits=limits, trust_env=not (direct or resolve is not None),
        )  # fmt: skip

    async def __aenter__(self) -> PolicyClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    async def fetch(
        self, domain: str, *, https_port: int = 443, base_url: str | None = None
    ) -> str:
        """GET the policy as RFC 8461 §3.3 requires, or raise ``MtaStsError`` saying why not.

        The certificate is verified for ``mta-sts.<domain>``; redirects, non-200 answers,
        other content types and bodies over 64 KiB are refused, and the whole fetch is
        bounded by ``timeout``. A DNS error from ``resolve`` is raised as it is.
        """
        host = f"mta-sts.{domain.rstrip('.').lower()}"
        url = (base_url or f"https://{host}:{https_port}").rstrip("/") + WELL_KNOWN
        headers = {"Accept": "text/plain", "User-Agent": "securemail-check", "Connection": "close"}
        extensions: dict[str, object] = {}
        if self._resolve is not None:
            ip = ipaddress.ip_address(await self._resolve(host))
            url = str(httpx.URL(url).copy_with(host=str(ip)))
            headers["Host"] = host if https_port == 443 else f"{host}:{https_port}"
            extensions["sni_hostname"] = host
        client = self._client
        try:
            async with asyncio.timeout(self.timeout):
                request = client.build_request("GET", url, headers=headers, extensions=extensions)
                response = await client.send(request, stream=True)
                try:
                    return await _read(response)
                finally:
                    await response.aclose()
        except (TimeoutError, httpx.TimeoutException):
            raise PolicyTimeoutError(f"{url}: no answer within {self.timeout:g} s") from None
        except httpx.HTTPError as exc:
            kind = PolicyHostCertificateError if _certificate_failed(exc) else MtaStsError
            raise kind(f"{url}: {_describe(exc)}") from None


async def fetch_policy(
    domain: str,
    *,
    base_url: str | None = None,
    https_port: int = 443,
    ca_file: Path | None = None,
    timeout: float = 10.0,
    resolve: Resolve | None = None,
) -> str:
    """One fetch (``PolicyClient.fetch``) over a client of its own, for callers that
    fetch now and then (delivery's policy cache); a run of many keeps a ``PolicyClient``."""
    async with PolicyClient(
        ca_file=ca_file, timeout=timeout, resolve=resolve, max_connections=1,
        direct=base_url is not None,
    ) as client:  # fmt: skip
        return await client.fetch(domain, https_port=https_port, base_url=base_url)


async def _read(response: httpx.Response) -> str:
    status = response.status_code
    if 300 <= status < 400:
        where = response.headers.get("location", "?")[:200]
        raise MtaStsError(f"HTTP {status} redirect to {where!r} (RFC 8461 forbids redirects)")
    if status != 200:
        raise MtaStsError(f"HTTP {status} {response.reason_phrase} (must be 200)")
    media = response.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "text/plain":
        raise MtaStsError(f"Content-Type is {media or 'missing'!r} (must be text/plain)")
    length = response.headers.get("content-length", "")
    if length.isdigit() and int(length) > MAX_POLICY_BYTES:
        raise MtaStsError(f"policy is {length} bytes (limit {MAX_POLICY_BYTES})")
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > MAX_POLICY_BYTES:
            raise MtaStsError(f"policy is over {MAX_POLICY_BYTES} bytes")
    return body.decode("utf-8", errors="replace")


def _certificate_failed(exc: BaseException) -> bool:
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


def _describe(exc: BaseException) -> str:
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLError):
            detail = getattr(cause, "verify_message", "") or getattr(cause, "reason", "")
            return f"TLS error: {detail or cause}"
        cause = cause.__cause__ or cause.__context__
    return " ".join(str(exc).split()) or type(exc).__name__
