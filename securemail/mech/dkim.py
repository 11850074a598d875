"""DKIM (RFC 6376): sign every outbound message for our domains, verify every inbound one.

The NHS secure email standard requires outgoing mail to be DKIM-signed, and inbound
verdicts feed DMARC and the ``Authentication-Results`` header, so both directions live
here and speak the RFC 8601 vocabulary of ``securemail.mech.results``.

**Signing.** dkimpy does the parts that are easy to get subtly wrong: relaxed
canonicalization, choosing header instances bottom-up, hashing the signature header with
``b=`` emptied, and folding. Its RSA, though, is pure-Python ``pow()``: about 7 ms per
RSA-2048 signature, so two cores could not sign the 300+ messages a second the gateway
needs. The private-key operation is therefore done with ``cryptography`` (OpenSSL,
about 0.25 ms) on exactly the bytes dkimpy's ``DKIM.sign`` would sign, and the header is
built the way it builds it, so the result is byte for byte what dkimpy produces with
the same key and timestamp (PKCS#1 v1.5 is deterministic, and so is Ed25519); the tests
prove it against dkimpy, against RFC 8463's published vectors and against OpenDKIM. We
always sign relaxed/relaxed, never with ``l=``, with ``t=``, and From is listed once more
than it occurs ("oversigned") so that no From can be added after signing.

**Verifying.** Every signature (up to a limit) gets its own verdict, in header order.
Keys are fetched through the gateway's async ``Resolver`` (all at once, before any
checking), so there is no blocking DNS on the event loop and no thread per message;
the rest is CPU only. The errors split as they do for DNS elsewhere: a key lookup that
could not complete is ``temperror`` (never pass, never fail), a missing, revoked, short
(RSA < 1024 bits, RFC 8301) or unusable key is ``permerror``, and so is a signature
that cannot be checked at all (malformed, ``rsa-sha1`` (RFC 8301), From not signed,
expired). ``fail`` means the hashes were computed and did not match. A key published
with ``t=y`` (testing) and a signature with an ``l=`` body length limit are noted in the
verdict's reason, because DMARC and the people reading headers must know about both.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import dkim
import idna
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa, utils
from dkim.canonicalization import CanonicalizationPolicy, InvalidCanonicalizationPolicyError
from dkim.util import InvalidTagValueList, parse_tag_value

from securemail.core.message import HeaderLimitError, read_headers
from securemail.dns import DnsError, DnsNotFound, Resolver
from securemail.errors import SecuremailError
from securemail.files import PRIVATE, write_atomic
from securemail.mech.results import MethodResult, Result

RSA_MIN_BITS = 1024  # RFC 8301 §3.2: smaller keys must not be used or accepted
ALGORITHMS = ("rsa-sha256", "ed25519-sha256")
MAX_SIGNATURES = 5

SIGNED_HEADERS: tuple[str, ...] = (
    "From",
    "Sender",
    "Reply-To",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "Content-ID",
    "Content-Description",
    "Resent-Date",
    "Resent-From",
    "Resent-Sender",
    "Resent-To",
    "Resent-Cc",
    "Resent-Message-ID",
    "List-Id",
    "List-Help",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "List-Subscribe",
    "List-Post",
    "List-Owner",
    "List-Archive",
    "Auto-Submitted",
)
"""What we sign when present (RFC 6376 §5.4.1's list, plus RFC 8058 and RFC 3834 fields).

From is always listed once more than it occurs, so a From added later breaks the
signature; a header that is absent is not listed (only From is oversigned).
"""

_SIGNED = frozenset(name.lower().encode() for name in SIGNED_HEADERS)
_RELAXED = CanonicalizationPolicy.from_c_value(b"relaxed/relaxed")
_SIG_NAME = b"DKIM-Signature"
_FROM = b"from"

_LINE_END = re.compile(rb"\r?\n")
_WSP = re.compile(rb"\s+")
_BYTES_REPR = re.compile(r"b'([^']*)'")
_SELECTOR = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)(?:\.(?!-)[A-Za-z0-9_-]{1,63}(?<!-))*")
_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


class DkimError(SecuremailError):
    """A DKIM key cannot be used (unreadable, invalid, too weak); one line naming it."""


@dataclass(frozen=True, slots=True)
class SigningKey:
    """One of our domains' private keys, published at ``SELECTOR._domainkey.DOMAIN``."""

    domain: str
    selector: str
    algorithm: str  # "rsa-sha256" | "ed25519-sha256"
    private_pem: bytes = field(repr=False)


# --- keys ------------------------------------------------------------------------------


def generate_key(algorithm: str = "rsa", bits: int = 2048) -> tuple[bytes, str]:
    """A new private key (PKCS#8 PEM) and the TXT record value that publishes it.

    ``algorithm`` is ``rsa`` (``bits`` from 1024 to 4096; 2048 is the norm) or ``ed25519``.
    """
    kind = algorithm.lower().removesuffix("-sha256")
    private: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    if kind == "rsa":
        if not RSA_MIN_BITS <= bits <= 4096:
            raise DkimError(f"dkim: RSA keys must have {RSA_MIN_BITS} to 4096 bits, not {bits}")
        private = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    elif kind == "ed25519":
        private = ed25519.Ed25519PrivateKey.generate()
    else:
        raise DkimError(f"dkim: unknown key algorithm {algorithm!r} (use rsa or ed25519)")
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return pem, _record(private)


def dns_record_for(private_pem: bytes) -> str:
    """The TXT record value (``v=DKIM1; k=...; p=...``) for a private key."""
    _algorithm, private, _bits = _load_private(private_pem, "private key")
    return _record(private)


def write_key(
    key_dir: Path, domain: str, selector: str, private_pem: bytes, *, overwrite: bool = False
) -> Path:
    """Store ``key_dir/DOMAIN/SELECTOR.pem`` (mode 0600, directories 0700), atomically.

    The key is written to a temporary file, fsynced and then renamed into place, so a
    crash leaves the old key or the new one, never half of one. An existing key is kept
    unless ``overwrite`` is true.
    """
    name = _domain(domain)
    if name is None:
        raise DkimError(f"dkim: {domain!r} is not a domain name")
    if not _SELECTOR.fullmatch(selector):
        raise DkimError(f"dkim: {selector!r} is not a valid selector")
    _load_private(private_pem, "key to write")
    directory = key_dir / name
    target = directory / f"{selector}.pem"
    try:
        for path in (key_dir, directory):
            if not path.is_dir():
                path.mkdir(mode=0o700, parents=True, exist_ok=True)
                path.chmod(0o700)
        if target.exists() and not overwrite:
            raise DkimError(f"dkim: {target} already exists (not overwritten)")
        write_atomic(target, private_pem, mode=PRIVATE, replace=overwrite, dir_mode=0o700)
    except FileExistsError:
        raise DkimError(f"dkim: {target} already exists (not overwritten)") from None
    except OSError as exc:
        raise DkimError(f"dkim: cannot write {target}: {exc.strerror or exc}") from None
    return target


def load_keys(key_dir: Path, selector: str, domains: Sequence[str]) -> dict[str, SigningKey]:
    """Our domains' keys: ``key_dir/DOMAIN/SELECTOR.pem`` for each one that has a file.

    A domain without a key file is left out (its mail goes unsigned); a file that cannot
    be read or is not a usable key raises ``DkimError`` naming it.
    """
    if not _SELECTOR.fullmatch(selector):
        raise DkimError(f"dkim: {selector!r} is not a valid selector")
    keys: dict[str, SigningKey] = {}
    for domain in domains:
        name = _domain(domain)
        if name is None:
            raise DkimError(f"dkim: {domain!r} is not a domain name")
        path = key_dir / name / f"{selector}.pem"
        try:
            pem = path.read_bytes()
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise DkimError(f"dkim: cannot read {path}: {exc.strerror or exc}") from None
        algorithm, _private, _bits = _load_private(pem, str(path))
        keys[name] = SigningKey(name, selector, algorithm, pem)
    return keys


_PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


def _load_private(pem: bytes, where: str) -> tuple[str, _PrivateKey, int]:
    """(algorithm, key, bits), or ``DkimError`` in one line naming ``where``."""
    try:
        private = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        detail = _one_line(exc).split(". ")[0][:120]
        raise DkimError(f"dkim: {where}: not a usable PEM private key ({detail})") from None
    if isinstance(private, rsa.RSAPrivateKey):
        if private.key_size < RSA_MIN_BITS:
            raise DkimError(
                f"dkim: {where}: RSA key has {private.key_size} bits; "
                f"DKIM needs at least {RSA_MIN_BITS} (RFC 8301)"
            )
        return "rsa-sha256", private, private.key_size
    if isinstance(private, ed25519.Ed25519PrivateKey):
        return "ed25519-sha256", private, 256
    raise DkimError(
        f"dkim: {where}: {type(private).__name__} cannot sign DKIM (use RSA or Ed25519)"
    )


def _record(private: _PrivateKey) -> str:
    if isinstance(private, rsa.RSAPrivateKey):
        der = private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"
    raw = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode()}"


# --- signing ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Signing:
    domain: bytes
    selector: bytes
    algorithm: bytes
    private: _PrivateKey

    def sign(self, digest: bytes) -> bytes:
        """RFC 6376 §3.3.1 (PKCS#1 v1.5 over the SHA-256 digest), RFC 8463 (Ed25519 of it)."""
        if isinstance(self.private, rsa.RSAPrivateKey):
            return self.private.sign(digest, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))
        return self.private.sign(digest)


class DkimSigner:
    """Signs for the domains it has keys for; built once, shared, pure CPU."""

    def __init__(self, keys: Mapping[str, SigningKey]) -> None:
        self._keys: dict[str, _Signing] = {}
        for domain, key in keys.items():
            where = f"key for {key.domain} (selector {key.selector})"
            name = _domain(domain)
            if name is None or name != _domain(key.domain):
                raise DkimError(f"dkim: {where} is filed under {domain!r}")
            if not _SELECTOR.fullmatch(key.selector):
                raise DkimError(f"dkim: {where}: {key.selector!r} is not a valid selector")
            algorithm, private, _bits = _load_private(key.private_pem, where)
            if key.algorithm != algorithm:
                raise DkimError(f"dkim: {where} is an {algorithm} key, not {key.algorithm}")
            self._keys[name] = _Signing(
                name.encode(), key.selector.encode(), algorithm.encode(), private
            )

    @property
    def domains(self) -> frozenset[str]:
        return frozenset(self._keys)

    def sign(self, message: bytes, domain: str, *, now: int | None = None) -> bytes | None:
        """The ``DKIM-Signature`` header (folded, CRLF-terminated) to prepend to ``message``.

        None if we have no key for ``domain``, or if the header section is over the
        reader's limits. ``message`` is the final message (after every header change),
        CRLF or LF line endings. Nothing else in the message makes this raise: a header
        section that ``read_headers`` finds malformed ends where it says, so the mail
        still goes out signed over the fields and body every reader agrees on.
        """
        name = _domain(domain)
        signing = self._keys.get(name) if name is not None else None
        if signing is None:
            return None
        try:
            headers, body = _for_dkimpy(message)
        except HeaderLimitError:
            return None
        include = [_lower(field_name) for field_name, _value in headers]
        include = [field_name for field_name in include if field_name in _SIGNED]
        include.append(_FROM)
        timestamp = int(time.time()) if now is None else int(now)
        return _signature(signing, headers, body, include, timestamp)


def _signature(
    signing: _Signing,
    headers: Sequence[Sequence[bytes]],
    body: bytes,
    include: Sequence[bytes],
    timestamp: int,
) -> bytes:
    """The header dkimpy's ``DKIM.sign`` builds (same tags, order and folding), signed here."""
    bodyhash = base64.b64encode(hashlib.sha256(_RELAXED.canonicalize_body(body)).digest())
    fields = [
        (b"v", b"1"),
        (b"a", signing.algorithm),
        (b"c", b"relaxed/relaxed"),
        (b"d", signing.domain),
        (b"i", b"@" + signing.domain),
        (b"q", b"dns/txt"),
        (b"s", signing.selector),
        (b"t", str(timestamp).encode()),
        (b"h", b" : ".join(include)),
        (b"bh", bodyhash),
        (b"b", b"0" * 60),  # as dkimpy: puts b= on a line of its own before signing
    ]
    value = dkim.fold(b"; ".join(b"=".join(tag) for tag in fields), namelen=len(_SIG_NAME))
    value = dkim.RE_BTAG.sub(b"\\1", value)
    hasher = hashlib.sha256()
    canonical = _RELAXED.canonicalize_headers(headers)
    dkim.hash_headers(hasher, _RELAXED, canonical, list(include), (_SIG_NAME, b" " + value), None)
    fields[-1] = (b"b", base64.b64encode(signing.sign(hasher.digest())))
    value = b"; ".join(b"=".join(tag) for tag in fields) + b"\r\n"
    return _SIG_NAME + b": " + dkim.fold(value, namelen=len(_SIG_NAME), linesep=b"\r\n")


# --- verifying -------------------------------------------------------------------------


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
    message: bytes, resolver: Resolver, *, max_signatures: int = MAX_SIGNATURES
) -> list[DkimVerdict]:
    """A verdict for each DKIM-Signature of ``message`` (the first ``max_signatures``).

    An empty list means the message is not signed. Never raises for anything in the
    message or in DNS: every problem is a verdict.
    """
    try:
        headers, body = _for_dkimpy(message)
    except HeaderLimitError as exc:
        return [DkimVerdict(Result.PERMERROR, "", "", "", f"header section not read: {exc}")]
    found = [(name, value) for name, value in headers if _lower(name) == b"dkim-signature"]
    parsed = [_parse_signature(name, value) for name, value in found[: max(0, max_signatures)]]
    names = sorted({sig.key_name for sig in parsed if isinstance(sig, _Signature)})
    answers = await asyncio.gather(*(_key_records(resolver, name) for name in names))
    records = dict(zip(names, answers, strict=True))
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


@dataclass(frozen=True, slots=True)
class DkimKey:
    """A usable public key from a ``<selector>._domainkey`` record."""

    kind: bytes  # b"rsa" | b"ed25519"
    key: rsa.RSAPublicKey | ed25519.Ed25519PublicKey
    bits: int
    testing: bool  # t=y
    strict: bool  # t=s


class KeyProblem(Exception):
    """Why a key record cannot be used (``reason``: one line, for a verdict or a finding)."""

    def __init__(self, reason: str, bits: int = 0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.bits = bits


class KeyRevoked(KeyProblem):
    """The record's ``p=`` is empty: the key was withdrawn (RFC 6376 §3.6.1).

    Kept apart because the checker reports a revoked key (what rotation leaves behind)
    differently from a broken one, and still shows its ``k=`` and ``t=y``.
    """

    def __init__(self, kind: bytes, testing: bool) -> None:
        super().__init__("key revoked (empty p=)")
        self.kind = kind
        self.testing = testing


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


def parse_key_record(record: str) -> DkimKey:
    """A key record (RFC 6376 §3.6.1) as a usable public key, or ``KeyProblem``.

    The one reader of key records: the verifier and the checker's ``dkim.key`` rule both
    use it, so a key the checker calls usable is one the gateway would use.
    """
    try:
        tags = parse_tag_value(record.encode("utf-8", errors="replace"))
    except InvalidTagValueList as exc:
        raise KeyProblem(f"key record is malformed: {_clean(exc)}") from None
    if tags.get(b"v", b"DKIM1") != b"DKIM1":
        raise KeyProblem("key record is not v=DKIM1")
    kind = tags.get(b"k", b"rsa").lower()
    if b"h" in tags and b"sha256" not in _list(tags[b"h"]):
        raise KeyProblem("key record's h= does not allow sha256")
    if not {b"*", b"email"} & set(_list(tags.get(b"s", b"*"))):
        raise KeyProblem("key record's s= excludes email")
    flags = set(_list(tags.get(b"t", b"")))
    if b"p" not in tags:
        raise KeyProblem("key record has no p=")
    data = _WSP.sub(b"", tags[b"p"])
    if not data:
        raise KeyRevoked(kind, testing=b"y" in flags)
    try:
        der = base64.b64decode(data, validate=True)
    except binascii.Error:
        raise KeyProblem("key record's p= is not base64") from None
    public: rsa.RSAPublicKey | ed25519.Ed25519PublicKey
    if kind == b"rsa":
        try:
            loaded = serialization.load_der_public_key(der)
        except (ValueError, UnsupportedAlgorithm):
            raise KeyProblem("key record's p= is not an RSA public key") from None
        if not isinstance(loaded, rsa.RSAPublicKey):
            raise KeyProblem("key record's p= is not an RSA public key")
        public, bits = loaded, loaded.key_size
    elif kind == b"ed25519":
        try:
            public = ed25519.Ed25519PublicKey.from_public_bytes(der)
        except ValueError:
            raise KeyProblem("key record's p= is not an Ed25519 public key") from None
        bits = 256
    else:
        raise KeyProblem(f"key record has unknown k={kind.decode(errors='replace')}")
    return DkimKey(kind, public, bits, testing=b"y" in flags, strict=b"s" in flags)


# --- message parsing -------------------------------------------------------------------


def _for_dkimpy(message: bytes) -> tuple[list[list[bytes]], bytes]:
    """``(headers, body)`` as ``read_headers`` reads them, in the form dkimpy hashes.

    Each header is ``[name as written, value]``, the value being everything after the
    colon with its continuation lines, and every line end CRLF (as dkimpy's
    ``rfc822_parse`` gives them for a well-formed message, so canonicalization is
    byte-identical to dkimpy's). The body starts where the reader says it does.
    """
    block = read_headers(message)
    headers = [[f.name, _crlf(f.value) + b"\r\n"] for f in block.fields]
    return headers, _crlf(message[block.body_offset :])


def _crlf(text: bytes) -> bytes:
    """Every line end as CRLF (a bare LF becomes CRLF); all-CRLF text is returned as it is."""
    if text.count(b"\n") == text.count(b"\r\n"):
        return text
    return _LINE_END.sub(b"\r\n", text)


def _lower(name: bytes) -> bytes:
    return name.rstrip(b" \t").lower()


# --- small helpers ---------------------------------------------------------------------


def _domain(domain: str) -> str | None:
    """``domain`` as a lower-case A-label name without the final dot, or None if invalid."""
    name = domain.strip().rstrip(".").lower()
    if not name.isascii():
        try:
            name = idna.encode(name, uts46=True).decode("ascii")
        except idna.IDNAError:
            return None
    labels = name.split(".")
    if len(name) > 253 or len(labels) < 2 or not all(_LABEL.fullmatch(x) for x in labels):
        return None
    return name


def _tag_text(tags: Mapping[bytes, bytes], tag: bytes) -> str:
    return _WSP.sub(b"", tags.get(tag, b"")).decode("utf-8", errors="replace")


def _list(value: bytes) -> list[bytes]:
    return [item.strip().lower() for item in value.split(b":")]


def _join(first: str, notes: list[str]) -> str:
    return "; ".join(part for part in (first, *notes) if part)


def _clean(error: object) -> str:
    """dkimpy's message without Python's ``b'...'`` around byte strings, on one line."""
    return _BYTES_REPR.sub(r"\1", _one_line(error))[:160]


def _one_line(error: object) -> str:
    text = " ".join(str(error).split())
    return text or type(error).__name__
