"""MTA-STS lookups (I/O): the ``_mta-sts`` TXT record and the policy over HTTPS (§3.3).

Both are bounded: the DNS query by the resolver's timeout, the fetch by ``timeout`` for
the whole exchange and by ``MAX_POLICY_BYTES`` for the body, because a policy host is
chosen by whoever controls the recipient's domain and may be hostile or just slow.
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

from securemail.dns import DnsNotFound, Resolver
from securemail.mech.mta_sts.parse import MtaStsError

MAX_POLICY_BYTES = 64 * 1024  # RFC 8461 §3.3
WELL_KNOWN = "/.well-known/mta-sts.txt"


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


async def fetch_policy(
    domain: str,
    *,
    base_url: str | None = None,
    https_port: int = 443,
    ca_file: Path | None = None,
    timeout: float = 10.0,
    resolve: Callable[[str], Awaitable[str]] | None = None,
) -> str:
    """GET the policy as RFC 8461 §3.3 requires, or raise ``MtaStsError`` saying why not.

    The certificate is verified (system roots plus ``ca_file``) for ``mta-sts.<domain>``;
    redirects, non-200 answers, other content types and bodies over 64 KiB are refused,
    and the whole fetch is bounded by ``timeout``. ``resolve`` maps the host name to the
    IP to connect to (so tests and our own Resolver decide where it goes) while TLS SNI,
    certificate verification and the Host header still use the name.
    """
    host = f"mta-sts.{domain.rstrip('.').lower()}"
    url = (base_url or f"https://{host}:{https_port}").rstrip("/") + WELL_KNOWN
    headers = {"Accept": "text/plain", "User-Agent": "securemail-check"}
    extensions: dict[str, object] = {}
    if resolve is not None:
        ip = ipaddress.ip_address(await resolve(host))
        url = str(httpx.URL(url).copy_with(host=str(ip)))
        headers["Host"] = host if https_port == 443 else f"{host}:{https_port}"
        extensions["sni_hostname"] = host
    context = ssl.create_default_context()
    if ca_file is not None:
        context.load_verify_locations(cafile=str(ca_file))
    direct = base_url is not None or resolve is not None
    try:
        async with (
            asyncio.timeout(timeout),
            httpx.AsyncClient(
                verify=context, follow_redirects=False, timeout=timeout, trust_env=not direct
            ) as client,
        ):
            request = client.build_request("GET", url, headers=headers, extensions=extensions)
            response = await client.send(request, stream=True)
            try:
                return await _read(response)
            finally:
                await response.aclose()
    except (TimeoutError, httpx.TimeoutException):
        raise MtaStsError(f"{url}: no answer within {timeout:g} s") from None
    except httpx.HTTPError as exc:
        kind = PolicyHostCertificateError if _certificate_failed(exc) else MtaStsError
        raise kind(f"{url}: {_describe(exc)}") from None


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
