"""ARC (RFC 8617): verify a message's chain of custody, and seal it when we forward it.

The cryptography and canonicalization are dkimpy's (``dkim.arc_verify`` /
``dkim.arc_sign``); this module adapts it to the gateway:

* **No blocking DNS.** dkimpy looks keys up through a synchronous ``dnsfunc``. We read
  every ``s=``/``d=`` pair from the ARC-Seal and ARC-Message-Signature headers first,
  fetch those ``<s>._domainkey.<d>`` TXT records through our async ``Resolver`` (all at
  once), and hand dkimpy a function that only reads that dict: no threads, no second
  resolver, and the same nameservers and timeouts as everything else.
* **"Could not find out" is not "fail".** dkimpy reports a missing key and a DNS timeout
  alike, as an invalid signature. Because the lookups are ours, we know when one failed
  temporarily, and a chain that did not pass while a key lookup failed that way is
  ``temperror`` (deferrable), not ``fail``.
* **dkimpy raises more than ``DKIMException``** on malformed input (an ARC-Message-
  Signature written ``i=1`` without a following ``;`` makes it index an empty list), so
  every failure inside it is caught and becomes ``fail`` with the error as the reason.

Sealing (``arc_seal``) follows dkimpy's model: it reads the chain validation status
(``cv=``) from the ``arc=`` result in *our* Authentication-Results header, so callers pass
the header they are about to add, including ``verify_arc``'s verdict when the message
already carries a chain. dkimpy needs the ``authres`` package to parse that header, and
re-serializes the results it parsed into the ARC-Authentication-Results (comments are
dropped, quoting may change). dkimpy seals with rsa-sha256 only.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import dkim
from dkim.util import InvalidTagValueList, parse_tag_value

from securemail.core.message import (
    HeaderBlock,
    HeaderLimitError,
    read_headers,
    reparse_input,
    without_fields,
)
from securemail.cpu import RunCpu, run_inline
from securemail.dns import DnsError, DnsTemporaryError, Resolver
from securemail.mech.results import MethodResult, Result, is_own_auth_results

MAX_KEY_LOOKUPS = 32
MAX_ARC_SETS = 50
"""RFC 8617 §4.2.1: instances run 1-50; a chain already at 50 cannot take another set."""
"""Distinct key names fetched for one message; RFC 8617 allows 50 sets, real chains use few."""

_ARC_HEADERS = (b"arc-seal", b"arc-message-signature", b"arc-authentication-results")
_SIGNED_ARC_HEADERS = (b"arc-seal", b"arc-message-signature")
_INSTANCE = re.compile(rb"(?:^|;)\s*i\s*=\s*(\d{1,6})\s*(?:;|$)", re.IGNORECASE)
_KEY_NAME = re.compile(r"(?=.{1,253}$)[a-z0-9_](?:[a-z0-9_-]{0,62})(?:\.[a-z0-9_-]{1,63})+")
_ARC_CLAUSE = re.compile(r"(^|;)(\s*arc\s*=\s*)([A-Za-z]+)", re.IGNORECASE)
_SEAL_CV = ("pass", "fail", "none")

_log = logging.getLogger(__name__)
_dkimpy_log = logging.getLogger(f"{__name__}.dkimpy")  # its per-signature errors: debug detail
_dkimpy_log.addHandler(logging.NullHandler())


class ArcError(ValueError):
    """The message cannot be sealed as asked; ``str(err)`` says why."""


@dataclass(frozen=True, slots=True)
class ArcVerdict:
    result: Result  # pass / fail / none, or temperror when a key lookup failed temporarily
    instance: int  # highest i= in the message (0 when it has no ARC sets)
    reason: str

    def to_method_result(self) -> MethodResult:
        return MethodResult("arc", self.result, self.reason)


# --- verification -------------------------------------------------------------------------


async def verify_arc(message: bytes, resolver: Resolver, *, run: RunCpu = run_inline) -> ArcVerdict:
    """Validate the ARC chain of ``message``; ``none`` when it has no ARC headers.

    dkimpy checks the chain as ``read_headers`` reads the message (``reparse_input``), so
    an ARC header that the one reader calls body is body here too. dkimpy's check is
    handed to ``run`` (``securemail.cpu``), which may raise if it cannot finish it: it
    hashes the whole body once per ARC set, so a chain of hundreds of sets over a
    large body is minutes of CPU.
    """
    try:
        block = read_headers(message)
    except HeaderLimitError as exc:
        return ArcVerdict(Result.FAIL, 0, f"header section not read: {exc}")
    arc_fields = _arc_fields(block)
    if not arc_fields:
        return ArcVerdict(Result.NONE, 0, "no ARC headers")
    instance = max((_instance(value) for _, value in arc_fields), default=0)
    names = _key_names(arc_fields)
    if len(names) > MAX_KEY_LOOKUPS:
        return ArcVerdict(
            Result.FAIL, instance, f"ARC chain names {len(names)} keys (limit {MAX_KEY_LOOKUPS})"
        )
    keys, temporary = await _fetch_keys(names, resolver)
    prepared = reparse_input(message, block)
    return await run(
        "ARC verification", partial(_chain_verdict, prepared, instance, keys, temporary)
    )


def _chain_verdict(
    message: bytes, instance: int, keys: dict[str, bytes], temporary: dict[str, str]
) -> ArcVerdict:
    """dkimpy's verdict on the chain once the keys are fetched: pure CPU."""
    try:
        cv, results, why = dkim.arc_verify(
            message, logger=_dkimpy_log, dnsfunc=_dnsfunc(keys, temporary)
        )
    except Exception as exc:  # dkimpy raises IndexError etc. on malformed headers
        _log.debug("ARC verification raised", exc_info=True)
        return _failed(instance, f"ARC headers could not be verified: {exc}", temporary)
    if results:
        instance = max(instance, *(int(r.get("instance", 0)) for r in results))
    if cv == dkim.CV_Pass:
        sealers = ", ".join(_text(r.get("as-domain", b"?")) for r in reversed(results))
        sets = "set" if instance == 1 else "sets"
        return ArcVerdict(
            Result.PASS, instance, f"{instance} ARC {sets} valid (sealed by {sealers})"
        )
    if cv == dkim.CV_None and instance == 0:
        return _failed(instance, "ARC headers without an instance (i=) tag", temporary)
    return _failed(instance, _text(why) or "ARC chain did not validate", temporary)


def _failed(instance: int, reason: str, temporary: dict[str, str]) -> ArcVerdict:
    if temporary:
        name, error = next(iter(temporary.items()))
        return ArcVerdict(
            Result.TEMPERROR, instance, f"key {name} could not be fetched ({error}): {reason}"
        )
    return ArcVerdict(Result.FAIL, instance, reason)


def _arc_fields(block: HeaderBlock) -> list[tuple[bytes, bytes]]:
    """(lower-case name, unfolded value) of each ARC header field, in order."""
    return [(f.lname, f.unfolded) for f in block.fields if f.lname in _ARC_HEADERS]


def _instance(value: bytes) -> int:
    match = _INSTANCE.search(value)
    return int(match.group(1)) if match else 0


def _key_names(arc_fields: list[tuple[bytes, bytes]]) -> list[str]:
    """The ``<s>._domainkey.<d>`` names the ARC-Seal and ARC-Message-Signature headers need."""
    names: list[str] = []
    for name, value in arc_fields:
        if name not in _SIGNED_ARC_HEADERS:
            continue
        try:
            tags = parse_tag_value(value)
        except (InvalidTagValueList, ValueError):
            continue  # dkimpy will report it
        selector, domain = tags.get(b"s"), tags.get(b"d")
        if not selector or not domain:
            continue
        key = f"{_text(selector)}._domainkey.{_text(domain)}".lower().rstrip(".")
        if _KEY_NAME.fullmatch(key) and key not in names:
            names.append(key)
    return names


async def _fetch_keys(
    names: list[str], resolver: Resolver
) -> tuple[dict[str, bytes], dict[str, str]]:
    """TXT answers by name, and the names whose lookup failed temporarily (with why)."""

    async def one(name: str) -> list[str] | DnsError:
        try:
            return await resolver.txt(name)
        except DnsError as exc:
            return exc

    answers = await asyncio.gather(*(one(name) for name in names))
    keys: dict[str, bytes] = {}
    temporary: dict[str, str] = {}
    for name, answer in zip(names, answers, strict=True):
        if isinstance(answer, DnsTemporaryError):
            temporary[name] = str(answer)
        elif isinstance(answer, list) and answer:
            # Several TXT records at a key name: prefer the one that carries a key.
            chosen = next((text for text in answer if "p=" in text), answer[0])
            keys[name] = chosen.encode("utf-8", errors="replace")
    return keys, temporary


def _dnsfunc(keys: dict[str, bytes], temporary: dict[str, str]) -> Callable[..., bytes | None]:
    """A dkimpy ``dnsfunc`` answering from what ``_fetch_keys`` found, never from DNS."""

    def lookup(name: bytes | str, timeout: float = 5) -> bytes | None:
        key = _text(name).lower().rstrip(".")
        if key in temporary:
            raise dkim.DnsTimeoutError(temporary[key])
        return keys.get(key)

    return lookup


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value


# --- sealing ------------------------------------------------------------------------------


def arc_seal(
    message: bytes,
    *,
    domain: str,
    selector: str,
    private_pem: bytes,
    authserv_id: str,
    auth_results: str,
    now: int | None = None,
) -> bytes:
    """The ARC set (ARC-Seal, ARC-Message-Signature, ARC-Authentication-Results) to prepend.

    ``auth_results`` is the Authentication-Results header the gateway is adding (as made
    by ``authentication_results``, with or without the ``Authentication-Results:`` name)
    and must be for ``authserv_id``. When ``message`` already has ARC sets it must carry
    the ``arc=`` result of ``verify_arc``: ``pass`` seals ``cv=pass``, and any other
    verdict (fail, temperror, ...) seals ``cv=fail``, since ``cv`` is only ever none, fail
    or pass. Raises ``ArcError`` when it cannot seal (bad key, wrong authserv-id, missing
    arc= result, a header section ``read_headers`` finds malformed or over its limits:
    we do not vouch for a message whose headers readers may disagree on).
    The result uses the message's own line endings; prepend it above everything else.
    """
    linesep = b"\r\n" if b"\r\n" in message else b"\n"
    value = _auth_results_value(auth_results, authserv_id)
    try:
        block = read_headers(message)
    except HeaderLimitError as exc:
        raise ArcError(f"ARC sealing failed: header section not read: {exc}") from exc
    if block.malformed:
        raise ArcError(f"ARC sealing failed: malformed header section: {block.malformed}")
    arc_fields = _arc_fields(block)
    _check_chain_can_grow(arc_fields)
    value = _with_chain_status(value, bool(arc_fields))
    header = b"Authentication-Results: " + value.encode("utf-8") + linesep
    # dkimpy merges every Authentication-Results with our authserv-id into the seal; any
    # already on an inbound message were put there by someone else (RFC 8601 §5), so
    # they must not be vouched for.
    cleaned = without_fields(message, block, lambda f: is_own_auth_results(f, authserv_id))
    prepared = header + reparse_input(cleaned, read_headers(cleaned))
    try:
        arc_set = dkim.arc_sign(
            prepared,
            selector.encode("ascii"),
            domain.encode("ascii"),
            private_pem,
            authserv_id.encode("utf-8"),
            timestamp=now,
            logger=_dkimpy_log,
            linesep=linesep,
        )
    except dkim.DKIMException as exc:
        raise ArcError(f"ARC sealing failed: {exc}") from exc
    except UnicodeEncodeError as exc:
        raise ArcError("ARC sealing failed: domain and selector must be ASCII") from exc
    if not arc_set:
        raise ArcError("ARC sealing failed: dkimpy found no usable Authentication-Results")
    return b"".join(arc_set)


def _check_chain_can_grow(arc_fields: list[tuple[bytes, bytes]]) -> None:
    """Refuse to add a set where RFC 8617 says the chain has ended.

    §5.1: once the last ARC-Seal says ``cv=fail`` the chain is over, and a set added after
    it would vouch for nothing; §4.2.1: a chain holds at most 50 sets. Refused here, with a
    reason, rather than left to dkimpy (which stays silent on the first and reports the
    second as a bare parameter error).
    """
    seals = [(_instance(value), value) for name, value in arc_fields if name == b"arc-seal"]
    highest = max((_instance(value) for _, value in arc_fields), default=0)
    if highest >= MAX_ARC_SETS:
        raise ArcError(
            f"ARC sealing refused: the chain already has {highest} sets (RFC 8617 limit)"
        )
    if not seals:
        return
    _, last = max(seals, key=lambda seal: seal[0])
    try:
        cv = parse_tag_value(last).get(b"cv", b"")
    except (InvalidTagValueList, ValueError):
        return  # unreadable: verify_arc reported the chain as failed, sealed as cv=fail
    if cv.strip().lower() == b"fail":
        raise ArcError("ARC sealing refused: the last ARC-Seal has cv=fail (RFC 8617 §5.1)")


def _auth_results_value(auth_results: str, authserv_id: str) -> str:
    """The header's value on one line, checked to be for ``authserv_id``."""
    text = re.sub(r"\r?\n[ \t]+", " ", auth_results).strip()
    name, colon, rest = text.partition(":")
    if colon and name.strip().lower() == "authentication-results":
        text = rest.strip()
    found = text.split(";", 1)[0].strip()
    if found != authserv_id:
        raise ArcError(
            f"auth_results is for authserv-id {found!r}, not {authserv_id!r}: "
            "seal the Authentication-Results this gateway adds"
        )
    return text


def _with_chain_status(value: str, has_chain: bool) -> str:
    """``value`` with an ``arc=`` result dkimpy can turn into a valid ``cv=``."""
    matches = list(_ARC_CLAUSE.finditer(value))
    if not has_chain:
        if any(m.group(3).lower() != "none" for m in matches):
            raise ArcError("auth_results reports an arc= result but the message has no ARC sets")
        return value
    if not matches:
        raise ArcError(
            "the message already has ARC sets: auth_results must include verify_arc's arc= result"
        )

    def as_cv(match: re.Match[str]) -> str:
        result = match.group(3).lower()
        return match.group(1) + match.group(2) + ("pass" if result == "pass" else "fail")

    return _ARC_CLAUSE.sub(as_cv, value)
