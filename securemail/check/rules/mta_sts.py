"""MTA-STS (RFC 8461): the ``_mta-sts`` TXT record, the HTTPS policy, and MX coverage.

A sending MTA that honours MTA-STS looks up ``_mta-sts.<domain>``, fetches
``https://mta-sts.<domain>/.well-known/mta-sts.txt`` with a verified certificate and no
redirects, and then (in ``enforce`` mode) delivers only to MX hosts that match one of the
policy's ``mx`` patterns over authenticated TLS. So an MX host the policy does not cover
is a host that careful senders will refuse, and a policy that cannot be fetched is no
policy at all. Parsing is pure; only ``fetch_policy`` and ``check_mta_sts`` do I/O.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from securemail.check.model import Finding, dns_error, failed, passed, warned
from securemail.dns import DnsError, DnsNotFound, Resolver

MAX_POLICY_BYTES = 64 * 1024  # RFC 8461 §3.3
MAX_MAX_AGE = 31_557_600  # RFC 8461 §3.2: about one year
MIN_GOOD_MAX_AGE = 86_400
WELL_KNOWN = "/.well-known/mta-sts.txt"

_TXT_FIELD = re.compile(r"([A-Za-z0-9][A-Za-z0-9_.-]{0,31})=([\x21-\x3a\x3c\x3e-\x7e]+)")
_ID = re.compile(r"[A-Za-z0-9]{1,32}")
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_MODES = ("enforce", "testing", "none")
_KNOWN = ("version", "mode", "mx", "max_age")


class MtaStsError(ValueError):
    """A record or policy is unusable, or the policy could not be fetched (one line)."""


@dataclass(frozen=True, slots=True)
class MtaStsPolicy:
    version: str
    mode: str
    mx: tuple[str, ...]
    max_age: int
    warnings: tuple[str, ...]


def parse_txt_record(txt: Sequence[str]) -> tuple[str | None, str]:
    """``(id, "")`` for one valid record; ``(None, problem)``; ``(None, "")`` for none at all.

    Records not starting with ``v=STSv1`` are not MTA-STS records and are ignored (§3.1).
    """
    records = [t for t in txt if re.match(r"v=STSv1(?:[ \t;]|$)", t)]
    if not records:
        return None, ""
    if len(records) > 1:
        return None, f"{len(records)} v=STSv1 records (there must be exactly one)"
    fields = re.split(r"[ \t]*;[ \t]*", records[0].strip(" \t"))
    if fields[-1] == "":
        fields.pop()  # one trailing ";" is allowed
    found: dict[str, str] = {}
    for field in fields[1:]:
        match = _TXT_FIELD.fullmatch(field)
        if match is None:
            return None, f"malformed field {field!r} (expected name=value; separated by ';')"
        name, value = match.groups()
        if name in found:
            return None, f"duplicate field {name!r}"
        found[name] = value
    if "id" not in found:
        return None, "no id= field (e.g. v=STSv1; id=20240101T000000)"
    if not _ID.fullmatch(found["id"]):
        return None, f"id {found['id']!r} must be 1 to 32 letters and digits"
    return found["id"], ""


def parse_policy(text: str) -> MtaStsPolicy:
    """Parse a policy file (§3.2); raise ``MtaStsError`` with every error, "line N: ..."."""
    errors: list[str] = []
    warnings: list[str] = []
    values: dict[str, tuple[int, str]] = {}
    mx: list[str] = []
    lines = text.split("\n")
    while lines and lines[-1].rstrip("\r") == "":
        lines.pop()
    for number, raw in enumerate(lines, 1):
        line = raw.removesuffix("\r")
        where = f"line {number}"
        if not line.strip():
            warnings.append(f"{where}: blank line")
            continue
        key, colon, value = line.partition(":")
        value = value.strip(" \t")
        if not colon or not key or key != key.strip():
            errors.append(f"{where}: expected 'key: value', got {line[:60]!r}")
            continue
        if key not in _KNOWN and key.lower() in _KNOWN:
            errors.append(
                f"{where}: field names are case-sensitive: {key!r} must be {key.lower()!r}"
            )
            continue
        if key not in _KNOWN:
            warnings.append(f"{where}: unknown field {key!r} (ignored)")
            continue
        if key == "version" and number != 1:
            errors.append(f"{where}: 'version: STSv1' must be the first line")
        if key == "mx":
            problem = _mx_problem(value)
            if problem:
                errors.append(f"{where}: mx {value!r}: {problem}")
            elif value.endswith("."):
                warnings.append(f"{where}: mx {value!r} has a trailing dot")
            mx.append(value)
            continue
        if key in values:
            errors.append(f"{where}: duplicate {key!r} (first on line {values[key][0]})")
            continue
        values[key] = (number, value)
        if key == "version" and value != "STSv1":
            errors.append(f"{where}: version must be 'STSv1', got {value!r}")
        elif key == "mode" and value not in _MODES:
            errors.append(f"{where}: mode must be enforce, testing or none, got {value!r}")
        elif key == "max_age" and not (
            re.fullmatch(r"[0-9]{1,10}", value) and int(value) <= MAX_MAX_AGE
        ):
            errors.append(f"{where}: max_age must be whole seconds 0 to {MAX_MAX_AGE}")
    for key in ("version", "mode", "max_age"):
        if key not in values:
            errors.append(f"missing required field '{key}'")
    mode = values.get("mode", (0, ""))[1]
    if not mx and mode in ("enforce", "testing"):
        errors.append(f"no 'mx' field: mode {mode} needs at least one")
    if errors:
        raise MtaStsError("; ".join(errors))
    return MtaStsPolicy("STSv1", mode, tuple(mx), int(values["max_age"][1]), tuple(warnings))


def _mx_problem(pattern: str) -> str:
    name = pattern.removeprefix("*.").removesuffix(".")
    if pattern.startswith("*.") and "." not in name:
        return "a wildcard must be followed by a domain (e.g. *.example.com)"
    if len(name) > 253 or not all(_LABEL.fullmatch(label) for label in name.split(".")):
        return "not a host name or *.domain pattern"
    if name.split(".")[-1].isdigit():
        return "an IP address is not allowed"
    return ""


def mx_matches(pattern: str, host: str) -> bool:
    """Does ``host`` match the policy ``mx`` pattern? ``*.`` stands for exactly one label."""
    pattern = pattern.strip().rstrip(".").lower()
    host = host.strip().rstrip(".").lower()
    if not pattern or not host:
        return False
    if pattern.startswith("*."):
        suffix = pattern[2:]
        label, dot, rest = host.partition(".")
        return bool(suffix) and "*" not in suffix and bool(label and dot) and rest == suffix
    return "*" not in pattern and pattern == host


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
        raise MtaStsError(f"{url}: {_describe(exc)}") from None


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


def _describe(exc: BaseException) -> str:
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLError):
            detail = getattr(cause, "verify_message", "") or getattr(cause, "reason", "")
            return f"TLS error: {detail or cause}"
        cause = cause.__cause__ or cause.__context__
    return " ".join(str(exc).split()) or type(exc).__name__


async def check_mta_sts(
    domain: str,
    resolver: Resolver,
    mx_hosts: Sequence[str],
    *,
    https_port: int = 443,
    ca_file: Path | None = None,
    timeout: float = 10.0,
) -> tuple[list[Finding], dict[str, object]]:
    """Findings for the MTA-STS record and policy, and the facts behind them."""
    domain = domain.rstrip(".").lower()
    facts: dict[str, object] = {"id": None}
    out = {"mta_sts": facts}
    fix_publish = (
        "Publish a _mta-sts TXT record (v=STSv1; id=...) and a policy at "
        f"https://mta-sts.{domain}/.well-known/mta-sts.txt; UK government guidance "
        "recommends MTA-STS so senders insist on authenticated TLS"
    )
    try:
        records = await resolver.txt(f"_mta-sts.{domain}")
    except DnsNotFound:
        records = []
    except DnsError as exc:
        return [dns_error("mta_sts", f"_mta-sts.{domain}", str(exc))], out
    record_id, problem = parse_txt_record(records)
    facts["txt"] = [r for r in records if r.startswith("v=STS")]
    if record_id is None:
        if not problem:
            return [warned("mta_sts.record", "no _mta-sts TXT record", fix_publish)], out
        fix = "Publish exactly one record: v=STSv1; id=<1-32 letters and digits>"
        return [failed("mta_sts.record", f"_mta-sts.{domain}: {problem}", fix)], out
    facts["id"] = record_id
    findings = [passed("mta_sts.record", f"_mta-sts.{domain}: v=STSv1, id={record_id}")]

    async def resolve(host: str) -> str:
        return (await resolver.addresses(host))[0]

    text, reason = "", ""
    try:
        text = await fetch_policy(
            domain, https_port=https_port, ca_file=ca_file, timeout=timeout, resolve=resolve
        )
    except (DnsNotFound, MtaStsError) as exc:
        reason = str(exc)
    except DnsError as exc:
        return [*findings, dns_error("mta_sts", f"mta-sts.{domain}", str(exc))], out
    if reason:
        fix = (
            f"Serve the policy at https://mta-sts.{domain}{WELL_KNOWN} with HTTP 200, "
            "Content-Type text/plain, no redirect and a valid public certificate for "
            f"mta-sts.{domain}; until then senders ignore the policy"
        )
        return [*findings, failed("mta_sts.policy_fetch", reason, fix)], out
    facts["policy"] = text
    findings.append(passed("mta_sts.policy_fetch", f"policy fetched from mta-sts.{domain}"))
    try:
        policy = parse_policy(text)
    except MtaStsError as exc:
        fix = "Correct the policy file (RFC 8461 §3.2); senders ignore an invalid policy"
        return [*findings, failed("mta_sts.policy_syntax", str(exc), fix)], out
    facts.update(mode=policy.mode, mx=list(policy.mx), max_age=policy.max_age)
    findings += [
        warned("mta_sts.policy_syntax", w, "Tidy the policy file") for w in policy.warnings
    ] or [passed("mta_sts.policy_syntax", "policy is valid")]
    findings += _evaluate(policy, mx_hosts)
    return findings, out


def _evaluate(policy: MtaStsPolicy, mx_hosts: Sequence[str]) -> list[Finding]:
    fix_mode = "Once TLS-RPT reports are clean, set 'mode: enforce'"
    if policy.mode == "enforce":
        findings = [passed("mta_sts.mode", "mode is enforce")]
    elif policy.mode == "testing":
        findings = [warned("mta_sts.mode", "mode is testing: not enforced", fix_mode)]
    else:
        findings = [warned("mta_sts.mode", "mode is none: the policy is withdrawn", fix_mode)]
    if policy.mode != "none":
        missing = [h for h in mx_hosts if not any(mx_matches(p, h) for p in policy.mx)]
        for host in missing:
            message = f"MX host {host} not covered by the policy's mx patterns"
            fix = f"Add 'mx: {host}' (or a matching *.domain pattern) to the policy"
            if policy.mode == "enforce":
                message += ": senders enforcing the policy will refuse to deliver to it"
                findings.append(failed("mta_sts.mx_coverage", message, fix, host))
            else:
                message += ": senders will refuse it once the mode is enforce"
                findings.append(warned("mta_sts.mx_coverage", message, fix, host))
        if mx_hosts and not missing:
            findings.append(passed("mta_sts.mx_coverage", "every MX host matches the policy"))
    if policy.max_age < MIN_GOOD_MAX_AGE:
        message = f"max_age {policy.max_age} s is too short to protect"
        fix = "Set max_age to at least 604800 (a week); 31557600 is common"
        findings.append(warned("mta_sts.max_age", message, fix))
    else:
        findings.append(passed("mta_sts.max_age", f"max_age {policy.max_age} s"))
    return findings
