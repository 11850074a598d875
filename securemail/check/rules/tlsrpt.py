"""TLS-RPT (RFC 8460) rules: does the domain ask senders to report TLS delivery failures?

Government email guidance recommends TLS-RPT alongside MTA-STS: without it, nobody hears
that senders could not negotiate TLS (or were downgraded) until mail goes missing. The
record is looked up and parsed by ``securemail.mech.tlsrpt`` (shared with delivery, which
will send the reports); the rules (``evaluate_tlsrpt``) are pure.
"""

from __future__ import annotations

from securemail.check.model import Finding, dns_error, failed, passed, warned
from securemail.dns import Resolver
from securemail.mech.tlsrpt import VERSION, TlsRptSyntaxError, lookup_tlsrpt, parse_tlsrpt

Facts = dict[str, object]


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
