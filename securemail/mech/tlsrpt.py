"""TLS-RPT (RFC 8460): where a domain wants reports of failed TLS deliveries sent.

The record lives at ``_smtp._tls.<domain>``. The checker asks whether a domain has a
usable one; delivery will read it to send reports of the TLS failures it meets (MTA-STS
or DANE refusals, untrusted certificates). Both read the record here, by the §3
grammar: a record that breaks it is one senders will not use, so it is an error, not
something to repair. ``lookup_tlsrpt`` is the only I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from securemail.dns import DnsNotFound, DnsTemporaryError, Resolver

VERSION = "v=TLSRPTv1"
_EXT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,31}")
_EXT_VALUE = re.compile(r"[\x21-\x3a\x3c\x3e-\x7e]+")
_MAILBOX = re.compile(r"[^@\s]+@[A-Za-z0-9](?:[A-Za-z0-9.\-]*[A-Za-z0-9])?")


class TlsRptSyntaxError(ValueError):
    """The record breaks RFC 8460 §3; senders will not use it."""


@dataclass(frozen=True, slots=True)
class TlsRptRecord:
    rua: tuple[str, ...]  # mailto: and https: report URIs, as written
    extensions: tuple[tuple[str, str], ...] = ()  # other name=value fields, in order


# --- parse (pure) ----------------------------------------------------------------------


def parse_tlsrpt(text: str) -> TlsRptRecord:
    """Parse one record (its TXT strings joined); raise ``TlsRptSyntaxError`` saying why not."""
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
