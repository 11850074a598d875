"""DKIM verification (RFC 6376 §6): a verdict for every signature of an inbound message.

Inbound verdicts feed DMARC and the ``Authentication-Results`` header, so they speak the
RFC 8601 vocabulary of ``securemail.mech.results``. Every signature (up to a limit) gets
its own verdict, in header order. Keys are fetched through the gateway's async
``Resolver`` (all at once, before any checking), so there is no blocking DNS on the
event loop and no thread per message; the rest is CPU only, and goes to the caller's
``run`` (``securemail.cpu``) in one piece, so the gateway can do it off the loop. The
errors split as they do for DNS elsewhere: a key lookup that could not complete is
``temperror`` (never pass, never fail), a missing, revoked, short (RSA < 1024 bits, RFC
8301) or unusable key is ``permerror``, and so is a signature that cannot be checked at
all (malformed, ``rsa-sha1`` (RFC 8301), From not signed, expired). ``fail`` means the
hashes were computed and did not match. A key published with ``t=y`` (testing) and a
signature with an ``l=`` body length limit are noted in the verdict's reason, because
DMARC and the people reading headers must know about both.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial

import dkim
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils
from dkim.canonicalization import CanonicalizationPolicy, InvalidCanonicalizationPolicyError
from dkim.util import InvalidTagValueList, parse_tag_value

from securemail.core.message import HeaderLimitError
from securemail.cpu import RunCpu, run_inline
from securemail.dns import DnsError, DnsNotFound, Resolver
from securemail.mech.dkim.common import _FROM, _WSP, _clean, _for_dkimpy, _lower
from securemail.mech.dkim.keys import RSA_MIN_BITS, DkimKey, KeyProblem, parse_key_record
from securemail.mech.results import MethodResult, Result

ALGORITHMS = ("rsa-sha256", "ed25519-sha256")
MAX_SIGNATURES = 5


@dataclass(frozen=True, slots=True)
class DkimVerdict:
    """The outcome of one DKIM-Signature."""

    result: Result  # pass / fail / neutral / temperror / permerror
    domain: str  # d=
    selector: str  # s=
    algorithm: str  # a=
    reason: str  # "body hash did not verify", "key not found: ...", "" for a plain pass
    key_bits: int = 0
    testing: bool = False
    """The key record says ``t=y``: the domain is testing DKIM, so (RFC 6376 §3.6.1)
    the result must not be treated differently from an unsigned message's."""
    b_prefix: str = ""
    """The first 8 characters of ``b=``, to tell signatures apart (``header.b``, RFC 6008)."""

    def to_method_result(self) -> MethodResult:
        props = (
            ("header.d", self.domain),
            ("header.s", self.selector),
            ("header.a", self.algorithm),
            ("header.b", self.b_prefix),
        )
        return MethodResult("dkim", self.result, self.reason, tuple((k, v) for k, v in props if v))


async def verify_dkim(
    message: bytes,
    resolver: Resolver,
    *,
    max_signatures: int = MAX_SIGNATURES,
    run: RunCpu = run_inline,
) -> list[DkimVerdict]:
    """A verdict for each DKIM-Signature of ``message`` (the first ``max_signatures``).

    An empty list means the message is not signed. Never raises for anything in the
    message or in DNS: every problem is a verdict. The hashing, linear in the message
    but seconds for a large one, is handed to ``run`` (see ``securemail.cpu``), which
    may raise if it cannot finish it.
    """
    try:
        headers, body = _for_dkimpy(message)
    except HeaderLimitError as exc:
        return [DkimVerdict(Result.PERMERROR, "", "", "", f"header section not read: {exc}")]
    found = [(name, value) for name, value in headers if _lower(name) == b"dkim-signature"]
    parsed = [_parse_signature(name, value) for name, value in found[: max(0, max_signatures)]]
    names = sorted({sig.key_name for sig in parsed if isinstance(sig, _Signature)})
    if not names:  # nothing to hash: every signature already has its verdict
        return [item for item in parsed if isinstance(item, DkimVerdict)]
    answers = await asyncio.gather(*(_key_records(resolver, name) for name in names))
    records = dict(zip(names, answers, strict=True))
    return await run("DKIM verification", partial(_check_all, parsed, records, headers, body))


def _check_all(
    parsed: Sequence[_Signature | DkimVerdict],
    records: Mapping[str, list[str] | DnsError],
    headers: Sequence[Sequence[bytes]],
    body: bytes,
) -> list[DkimVerdict]:
    """The verdict of each parsed signature, once its key lookup is done: pure CPU."""
    bodies: dict[bytes, bytes] = {}
    return [
        item
        if isinstance(item, DkimVerdict)
        else _check(item, records[item.key_name], headers, body, bodies)
        for item in parsed
    ]


@dataclass(frozen=True, slots=True)
class _Signature:
    tags: dict[bytes, bytes]
    header: tuple[bytes, bytes]  # the raw field name and value, for hashing
    domain: str
    selector: str
    algorithm: str
    b_prefix: str
    policy: CanonicalizationPolicy
    include: tuple[bytes, ...]
    length: int | None

    @property
    def key_name(self) -> str:
        return f"{self.selector}._domainkey.{self.domain}".lower()

    def verdict(
        self, result: Result, reason: str, key_bits: int = 0, testing: bool = False
    ) -> DkimVerdict:
        return DkimVerdict(
            result, self.domain, self.selector, self.algorithm, reason,
            key_bits, testing, self.b_prefix,
        )  # fmt: skip


def _parse_signature(name: bytes, value: bytes) -> _Signature | DkimVerdict:
    """The signature's tags checked for form, or a permerror verdict saying what is wrong."""
    try:
        tags = parse_tag_value(value)
    except InvalidTagValueList as exc:
        return DkimVerdict(Result.PERMERROR, "", "", "", f"malformed signature: {_clean(exc)}")
    domain, selector, algorithm = (_tag_text(tags, tag) for tag in (b"d", b"s", b"a"))
    b_prefix = _tag_text(tags, b"b")[:8]

    def bad(reason: str) -> DkimVerdict:
        return DkimVerdict(Result.PERMERROR, domain, selector, algorithm, reason, b_prefix=b_prefix)

    try:
        dkim.validate_signature_fields(tags)
    except dkim.ValidationError as exc:
        text = _clean(exc)
        if text.startswith("x= value is past"):
            return bad(f"signature expired ({text})")
        return bad(f"malformed signature: {text}")
    except (IndexError, KeyError, ValueError) as exc:
        return bad(f"malformed signature: {_clean(exc)}")
    if algorithm not in ALGORITHMS:
        return bad(f"{algorithm} is not accepted (RFC 8301)")
    try:
        policy = CanonicalizationPolicy.from_c_value(_WSP.sub(b"", tags.get(b"c", b"simple")))
    except InvalidCanonicalizationPolicyError:
        return bad(f"malformed signature: unknown canonicalization c={_tag_text(tags, b'c')}")
    include = tuple(name.lower() for name in re.split(rb"\s*:\s*", tags[b"h"].strip()))
    if _FROM not in include:
        return bad("From is not signed (h= has no from)")
    if not domain or not selector:
        return bad("malformed signature: empty d= or s=")
    try:
        length = int(tags[b"l"]) if b"l" in tags else None
    except ValueError:
        return bad("malformed signature: l= is not a number")
    return _Signature(
        tags, (name, value), domain, selector, algorithm, b_prefix, policy, include, length
    )


async def _key_records(resolver: Resolver, name: str) -> list[str] | DnsError:
    try:
        return await resolver.txt(name)
    except DnsError as exc:
        return exc


def _check(
    sig: _Signature,
    records: list[str] | DnsError,
    headers: Sequence[Sequence[bytes]],
    body: bytes,
    bodies: dict[bytes, bytes],
) -> DkimVerdict:
    """Everything after the key lookup: key checks, body hash, header signature."""
    if isinstance(records, DnsNotFound):
        return sig.verdict(Result.PERMERROR, f"key not found: {records}")
    if isinstance(records, DnsError):
        return sig.verdict(Result.TEMPERROR, f"key lookup failed: {records}")
    if not records:
        return sig.verdict(Result.PERMERROR, f"key not found: no TXT record at {sig.key_name}")
    try:
        key = _usable_key(sig, records)
    except KeyProblem as problem:
        return sig.verdict(Result.PERMERROR, problem.reason, key_bits=problem.bits)
    notes: list[str] = []
    if key.testing:
        notes.append("key is in testing mode (t=y)")

    def verdict(result: Result, reason: str) -> DkimVerdict:
        return sig.verdict(result, reason, key.bits, key.testing)

    canonical = bodies.get(sig.policy.body_algorithm.name)
    if canonical is None:
        canonical = bodies[sig.policy.body_algorithm.name] = sig.policy.canonicalize_body(body)
    if sig.length is not None:
        if sig.length > len(canonical):
            return verdict(Result.PERMERROR, "l= is longer than the body")
        notes.append(f"l= body length limit ({sig.length} of {len(canonical)} body bytes signed)")
        canonical = canonical[: sig.length]
    try:
        expected_bh = base64.b64decode(_WSP.sub(b"", sig.tags[b"bh"]), validate=True)
        signature = base64.b64decode(_WSP.sub(b"", sig.tags[b"b"]), validate=True)
    except binascii.Error:
        return verdict(Result.PERMERROR, "malformed signature: bad base64")
    if hashlib.sha256(canonical).digest() != expected_bh:
        return verdict(Result.FAIL, _join("body hash did not verify", notes))

    # As dkimpy does: if From is signed, a From the signer did not cover (one added
    # above it) is hashed too, so it breaks the signature instead of being ignored.
    include = [*sig.include, _FROM]
    hasher = hashlib.sha256()
    canonical_headers = sig.policy.canonicalize_headers(headers)
    dkim.hash_headers(hasher, sig.policy, canonical_headers, include, sig.header, sig.tags)
    try:
        if isinstance(key.key, rsa.RSAPublicKey):
            key.key.verify(
                signature, hasher.digest(), padding.PKCS1v15(), utils.Prehashed(hashes.SHA256())
            )
        else:
            key.key.verify(signature, hasher.digest())
    except InvalidSignature:
        return verdict(Result.FAIL, _join("signature did not verify", notes))
    return verdict(Result.PASS, _join("", notes))


def _usable_key(sig: _Signature, records: list[str]) -> DkimKey:
    """The first record that is a key for this signature, or the first record's problem."""
    problems: list[KeyProblem] = []
    for record in records:
        try:
            key = parse_key_record(record)
        except KeyProblem as problem:
            problems.append(problem)
            continue
        wanted = sig.algorithm.split("-")[0].encode()
        if key.kind != wanted:
            problems.append(
                KeyProblem(f"key is k={key.kind.decode()}, signature is a={sig.algorithm}")
            )
            continue
        if key.kind == b"rsa" and key.bits < RSA_MIN_BITS:
            problems.append(
                KeyProblem(
                    f"RSA key too short: {key.bits} bits (RFC 8301 requires {RSA_MIN_BITS})",
                    key.bits,
                )
            )
            continue
        if key.strict and b"i" in sig.tags:
            identity = _tag_text(sig.tags, b"i").rpartition("@")[2].lower()
            if identity != sig.domain.lower():
                problems.append(
                    KeyProblem(f"key has t=s but i= is in {identity}, not {sig.domain}")
                )
                continue
        return key
    raise problems[0]


# --- small helpers ---------------------------------------------------------------------


def _tag_text(tags: Mapping[bytes, bytes], tag: bytes) -> str:
    return _WSP.sub(b"", tags.get(tag, b"")).decode("utf-8", errors="replace")


def _join(first: str, notes: list[str]) -> str:
    return "; ".join(part for part in (first, *notes) if part)
