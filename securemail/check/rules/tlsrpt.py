"""TLS-RPT (RFC 8460): does the domain ask senders to report TLS delivery failures?

Government email guidance recommends TLS-RPT alongside MTA-STS: without it, nobody hears
that senders could not negotiate TLS (or were downgraded) until mail goes missing. The
record lives at ``_smtp._tls.<domain>``; ``parse_tlsrpt`` reads it by the RFC 8460 §3
grammar and the rules (``evaluate_tlsrpt``) are pure.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from securemail.check.model import Finding, dns_error, failed, passed, warned
from securemail.dns import DnsNotFound, DnsTemporaryError, Resolver

VERSION = "v=TLSRPTv1"
_EXT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,31}")
_EXT_VALUE = re.compile(r"[\x21-\x3a\x3c\x3e-\x7e]+")
_MAILBOX = re.compile(r"[^@\s]+@[A-Za-z0-9](?:[A-Za-z0-9.\-]*[A-Za-z0-9])?")

Facts = dict[str, object]


class TlsRptSyntaxError(ValueError):
    """The record breaks RFC 8460 §3; senders will not use it."""


@dataclass(frozen=True, slots=True)
class TlsRptRecord:
    rua: tuple[str, ...]
    extensions: tuple[tuple[str, str], ...] = ()


# --- parse (pure) ----------------------------------------------------------------------


def parse_tlsrpt(text: str) -> TlsRptRecord:
    parts = text.split(";")
    if parts[0].rstrip(" \t") != VERSION:
        raise TlsRptSyntaxError(f"the record must start with {VERSION} (case-sensitive)")
    fields = [part.strip(" \t") for part in parts[1:]]
    if fields and not fields[-1]:
        fields.pop()  # a trailing ";" is allowed
    rua: tuple[str, ...] | None = None
    extensions: list[tuple[str, str]] = []
    for index, item in enumerate(fields, start=1):
        name, eq, value = item.partition("=")
        if not eq or _EXT_NAME.fullmatch(name) is None:
            raise TlsRptSyntaxError(f"field {index} {item!r} is not name=value")
        if name == "rua":
            if rua is not None:
                raise TlsRptSyntaxError("rua is given more than once")
            rua = tuple(_report_uri(uri.strip(" \t")) for uri in value.split(","))
        elif _EXT_VALUE.fullmatch(value) is None:
            raise TlsRptSyntaxError(f"field {name!r} has an empty or invalid value")
        else:
            extensions.append((name, value))
    if rua is None:
        raise TlsRptSyntaxError("rua= is required (where reports are sent)")
    return TlsRptRecord(rua, tuple(extensions))


def _report_uri(uri: str) -> str:
    scheme, _, rest = uri.partition(":")
    if scheme.lower() == "mailto" and _MAILBOX.fullmatch(rest.split("?", 1)[0]):
        return uri
    if scheme.lower() == "https" and urlsplit(uri).hostname:
        return uri
    raise TlsRptSyntaxError(f"rua URI {uri!r} is not a mailto: address or https: URL")


def tlsrpt_records(texts: list[str]) -> list[str]:
    """TXT records meant as TLS-RPT (any ``v=TLSRPT...``, so a mistyped version is seen)."""
    return [text for text in texts if text.lower().startswith("v=tlsrpt")]


# --- lookup (I/O) ----------------------------------------------------------------------


async def lookup_tlsrpt(domain: str, resolver: Resolver) -> tuple[list[str], str]:
    """(the TLS-RPT records at ``_smtp._tls.<domain>``, DNS error text)."""
    try:
        return tlsrpt_records(await resolver.txt(f"_smtp._tls.{domain}")), ""
    except DnsNotFound:
        return [], ""
    except DnsTemporaryError as exc:
        return [], str(exc)


# --- rules (pure) ----------------------------------------------------------------------


def evaluate_tlsrpt(domain: str, records: list[str]) -> list[Finding]:
    name = f"_smtp._tls.{domain}"
    if not records:
        return [
            warned(
                "tlsrpt.present",
                f"no TLS-RPT record at {name}: TLS delivery failures go unreported",
                f'Publish TXT "{VERSION}; rua=mailto:tls-reports@{domain}" at {name}.',
            )
        ]
    findings = [passed("tlsrpt.present", f"TLS-RPT record found at {name}")]
    if len(records) > 1:
        message = f"{name} has {len(records)} TLS-RPT records: senders will use none"
        fix = "Keep one v=TLSRPTv1 record and delete the others."
        return [*findings, failed("tlsrpt.single", message, fix)]
    findings.append(passed("tlsrpt.single", "exactly one TLS-RPT record"))
    try:
        record = parse_tlsrpt(records[0])
    except TlsRptSyntaxError as exc:
        fix = f'Correct the record, e.g. "{VERSION}; rua=mailto:tls-reports@{domain}".'
        return [*findings, failed("tlsrpt.syntax", f"TLS-RPT record is not valid: {exc}", fix)]
    return [*findings, passed("tlsrpt.syntax", f"TLS reports go to {', '.join(record.rua)}")]


def _dns_error(domain: str, error: str) -> Finding:
    return dns_error("tlsrpt", f"_smtp._tls.{domain}", error)


# --- entry point -----------------------------------------------------------------------


async def check_tlsrpt(domain: str, resolver: Resolver) -> tuple[list[Finding], Facts]:
    """Findings ``tlsrpt.*`` and facts (``tlsrpt`` record text or None)."""
    domain = domain.strip().rstrip(".").lower()
    records, error = await lookup_tlsrpt(domain, resolver)
    if error:
        return [_dns_error(domain, error)], {"tlsrpt": None}
    record = records[0] if len(records) == 1 else records or None
    return evaluate_tlsrpt(domain, records), {"tlsrpt": record}
