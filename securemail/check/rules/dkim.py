"""DKIM: are there public keys, and are they strong enough to trust?

Selectors cannot be listed from DNS, so ``lookup_dkim`` probes the ones given (``--selector``,
``[check] selectors``) plus common ones, all at once. Keys are read with the verifier's own
parser (``securemail.mech.dkim``), so a key this check calls usable is one the gateway would
use. Finding no key is a warning, not a failure: it only means none of the selectors tried
has one. RSA below 1024 bits is refused by verifiers (RFC 8301 §3.2), so it fails; below
2048 bits it warns, as NCSC guidance asks for 2048.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from securemail.check.model import Finding, dns_error, failed, passed, warned
from securemail.dns import DnsNotFound, DnsTemporaryError, Resolver
from securemail.mech.dkim import RSA_MIN_BITS, KeyProblem, KeyRevoked, parse_key_record

RSA_GOOD_BITS = 2048
_VERSION = re.compile(r"v\s*=\s*DKIM1\s*(;|$)")
_P_TAG = re.compile(r"(^|;)\s*p\s*=")
COMMON_SELECTORS: tuple[str, ...] = (
    "default", "dkim", "mail", "smtp", "s1", "s2", "k1", "k2", "key1", "key2",
    "selector1", "selector2", "google", "sig1", "mandrill", "everlytickey1",
)  # fmt: skip

Facts = dict[str, object]


class KeyInfo(NamedTuple):
    algorithm: str  # "rsa" | "ed25519" (k=, lower case)
    bits: int  # 0 when revoked
    testing: bool  # t=y
    revoked: bool  # empty p=


def key_info(text: str) -> KeyInfo:
    """What the ``dkim.key`` rule needs to know of a key record, read by the verifier.

    A revoked key (empty ``p=``) is returned with ``revoked``; anything a verifier could
    not use raises ``KeyProblem`` saying why.
    """
    try:
        key = parse_key_record(text)
    except KeyRevoked as revoked:
        return KeyInfo(revoked.kind.decode("ascii", errors="replace"), 0, revoked.testing, True)
    return KeyInfo(key.kind.decode(), key.bits, key.testing, revoked=False)


@dataclass(slots=True)
class SelectorResult:
    selector: str
    records: list[str] = field(default_factory=list)  # key records found ([] = none)
    error: str = ""  # the lookup could not be completed


# --- lookup (I/O) ----------------------------------------------------------------------


async def lookup_dkim(
    domain: str, resolver: Resolver, selectors: Sequence[str]
) -> list[SelectorResult]:
    return list(await asyncio.gather(*(_probe(domain, s, resolver) for s in selectors)))


async def _probe(domain: str, selector: str, resolver: Resolver) -> SelectorResult:
    result = SelectorResult(selector)
    try:
        texts = await resolver.txt(f"{selector}._domainkey.{domain}")
    except DnsNotFound:
        return result
    except DnsTemporaryError as exc:
        result.error = str(exc)
        return result
    result.records = [text for text in texts if _looks_like_key(text)]
    return result


def _looks_like_key(text: str) -> bool:
    """A DKIM key record rather than some other TXT at the name (v= is optional)."""
    stripped = text.lstrip()
    if stripped[:2].lower() == "v=":
        return _VERSION.match(stripped) is not None
    return _P_TAG.search(stripped) is not None


def selectors_to_try(selectors: Sequence[str]) -> list[str]:
    given = [s.strip().strip(".").lower() for s in selectors]
    return list(dict.fromkeys(s for s in (*given, *COMMON_SELECTORS) if s))


# --- rules (pure) ----------------------------------------------------------------------


def evaluate_key(selector: str, text: str) -> list[Finding]:
    code, subject = "dkim.key", selector
    try:
        key = key_info(text)
    except KeyProblem as exc:
        fix = f"Publish a valid key record at {selector}._domainkey, or remove it."
        return [failed(code, f"selector {selector}: key is not usable: {exc}", fix, subject)]
    findings: list[Finding] = []
    if key.revoked:
        # A warning, not a failure: revoking an old selector is what key rotation
        # leaves behind, and the selectors probed include common old ones.
        fix = "If mail is still signed with this selector, publish its public key again."
        findings.append(warned(code, f"selector {selector}: key revoked (empty p=)", fix, subject))
    elif key.algorithm == "rsa" and key.bits < RSA_MIN_BITS:
        fix = f"Generate a {RSA_GOOD_BITS}-bit RSA key, publish it and sign with it."
        message = f"selector {selector}: RSA {key.bits} bits, which verifiers refuse"
        findings.append(failed(code, message, fix, subject))
    elif key.algorithm == "rsa" and key.bits < RSA_GOOD_BITS:
        fix = f"Rotate to a {RSA_GOOD_BITS}-bit RSA key."
        message = f"selector {selector}: RSA {key.bits} bits (less than {RSA_GOOD_BITS})"
        findings.append(warned(code, message, fix, subject))
    else:
        findings.append(
            passed(code, f"selector {selector}: {key.algorithm} {key.bits} bits", subject)
        )
    if key.testing:
        findings.append(
            warned(
                "dkim.testing",
                f"selector {selector}: key is in testing mode (t=y); receivers may ignore it",
                "Remove t=y from the key record once signing works.",
                subject,
            )
        )
    return findings


def evaluate_dkim(results: Sequence[SelectorResult]) -> list[Finding]:
    findings: list[Finding] = []
    failures = [r for r in results if r.error]
    if failures:
        names = ", ".join(r.selector for r in failures)
        findings.append(dns_error("dkim", f"DKIM selectors {names}", failures[0].error))
    found = [r for r in results if r.records]
    for result in found:
        for text in result.records:
            findings.extend(evaluate_key(result.selector, text))
    answered = [r.selector for r in results if not r.error]
    if found:
        names = ", ".join(r.selector for r in found)
        findings.append(passed("dkim.selectors", f"DKIM keys found at selectors: {names}"))
    elif answered:
        findings.append(
            warned(
                "dkim.selectors",
                f"no DKIM key found at the selectors tried ({', '.join(answered)}): "
                "DKIM cannot be confirmed from outside",
                "Give the selector in use with --selector (the s= tag of a DKIM-Signature).",
            )
        )
    return findings


def dkim_facts(results: Sequence[SelectorResult]) -> Facts:
    keys: dict[str, object] = {}
    for result in results:
        if result.records:
            try:
                key = key_info(result.records[0])
            except KeyProblem as exc:
                keys[result.selector] = {"error": str(exc)}
                continue
            keys[result.selector] = {
                "algorithm": key.algorithm,
                "bits": key.bits,
                "testing": key.testing,
                "revoked": key.revoked,
            }
    return {"dkim": keys, "dkim_selectors_tried": [r.selector for r in results]}


# --- entry point -----------------------------------------------------------------------


async def check_dkim_keys(
    domain: str, resolver: Resolver, selectors: Sequence[str] = ()
) -> tuple[list[Finding], Facts]:
    """Findings ``dkim.*`` for ``selectors`` plus ``COMMON_SELECTORS``; facts ``dkim``."""
    domain = domain.strip().rstrip(".").lower()
    results = await lookup_dkim(domain, resolver, selectors_to_try(selectors))
    return evaluate_dkim(results), dkim_facts(results)
