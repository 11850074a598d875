"""DMARC (RFC 7489): find the sender's policy, check alignment, decide what to do.

The NHS secure email standard requires DMARC with SPF and DKIM, and DMARC is what ties
those two to the address a person actually reads: the ``From:`` header. A message passes
when SPF passed for a domain *aligned* with the From domain, or a DKIM signature that
passed was made by an aligned domain (§3.1, §4.2).

The pieces are separate so the domain checker can reuse them without a message:

* ``parse_dmarc`` reads a record into a ``DmarcRecord``, refusing what makes the policy
  unknowable (no ``v=DMARC1`` first, a bad or missing ``p`` with no valid ``rua`` to fall
  back on, a repeated tag) and *tolerating* the rest with a warning, as §6.3 asks ("syntax
  errors in the remainder of the record SHOULD be discarded in favor of default values").
  Being lenient there is also the safe choice: a typo in ``ri`` must not switch off a
  ``p=reject`` policy and let spoofed mail through.
* ``lookup_dmarc`` asks DNS (``_dmarc.<from domain>``, then ``_dmarc.<organizational
  domain>``, §6.6.3) and never turns a DNS failure into "no policy".
* ``evaluate_dmarc`` is pure: alignment, the policy that applies, and ``pct`` sampling.

Organizational domains come from the Public Suffix List (``securemail.mech.psl``, with
its private section, so ``alice.github.io`` cannot pass DMARC for ``bob.github.io``).
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

from securemail.core.message import HeaderLimitError, read_headers
from securemail.core.senders import header_from
from securemail.dns import DnsNotFound, DnsTemporaryError, Resolver
from securemail.mech.psl import organizational_domain
from securemail.mech.results import MethodResult, Result

POLICIES = ("none", "quarantine", "reject")
ALIGNMENT_MODES = ("r", "s")
FAILURE_OPTIONS = ("0", "1", "d", "s")
REPORT_FORMATS = ("afrf",)
DEFAULT_INTERVAL = 86400
MAX_INTERVAL = 2**32 - 1
MAX_WARNING_VALUE = 60

_VERSION = re.compile(r"[vV]\s*=\s*DMARC1\s*(?:;|$)")
_TAG_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")
_INTEGER = re.compile(r"[+-]?\d{1,12}")
# RFC 7489 §6.4: a URI (commas and "!" inside it must be %-encoded), then an optional
# maximum report size such as "!10m".
_REPORT_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:[^\s,!]+(?:!\d+[kmgtKMGT]?)?")
_STEP_DOWN = {"reject": "quarantine", "quarantine": "none", "none": "none"}


class DmarcSyntaxError(ValueError):
    """The record cannot be used; ``str(err)`` starts with the tag at fault (``p: ...``)."""


@dataclass(frozen=True, slots=True)
class DmarcRecord:
    """A parsed DMARC record. Values are lower case; defaults are RFC 7489 §6.3's."""

    p: str
    sp: str | None = None
    pct: int = 100
    adkim: str = "r"
    aspf: str = "r"
    rua: tuple[str, ...] = ()  # URIs as written, including any "!size" suffix
    ruf: tuple[str, ...] = ()
    fo: str = "0"
    rf: str = "afrf"
    ri: int = DEFAULT_INTERVAL
    warnings: tuple[str, ...] = ()
    """Tolerated oddities (unknown tags, out-of-range values replaced, ...), one sentence each."""


@dataclass(frozen=True, slots=True)
class DkimPass:
    """The ``d=`` domain of a DKIM signature that *passed* verification."""

    domain: str


@dataclass(frozen=True, slots=True)
class SpfOutcome:
    """An SPF result ("pass", "fail", ...) and the MAIL FROM (or HELO) domain it was for."""

    result: str
    domain: str


@dataclass(frozen=True, slots=True)
class DmarcResult:
    result: Result  # pass / fail / none / temperror / permerror
    from_domain: str
    policy_domain: str  # where the record was found: the From domain or its org domain
    record: DmarcRecord | None
    policy: str  # the policy that applies: sp for a subdomain when set, else p
    disposition: str  # what to do after pct sampling: "none" | "quarantine" | "reject"
    spf_aligned: bool
    dkim_aligned: bool
    reason: str  # one sentence for a person

    def to_method_result(self) -> MethodResult:
        """``dmarc=fail reason="p=reject dis=reject" header.from=example.com``."""
        if self.record is not None and self.result in (Result.PASS, Result.FAIL):
            reason = f"p={self.record.p}"
            if self.record.sp is not None:
                reason += f" sp={self.record.sp}"
            reason += f" dis={self.disposition}"
        else:
            reason = self.reason
        props = (("header.from", self.from_domain),) if self.from_domain else ()
        return MethodResult("dmarc", self.result, reason, props)


# --- records ------------------------------------------------------------------------------


def parse_dmarc(record: str) -> DmarcRecord:
    """Parse one DMARC TXT record (its strings already joined); see the module docstring.

    Raises ``DmarcSyntaxError`` when the record must be treated as no usable policy.
    """
    parts = [part.strip() for part in record.split(";")]
    if not parts or _VERSION.fullmatch(parts[0] + ";") is None:
        raise DmarcSyntaxError(f"v: the record must start with v=DMARC1, not {_show(parts[0])}")
    warnings: list[str] = []
    tags: dict[str, str] = {}
    for part in parts[1:]:
        if not part:
            continue
        name, eq, value = part.partition("=")
        name, value = name.strip(), value.strip()
        if not eq or _TAG_NAME.fullmatch(name) is None:
            warnings.append(f"{_show(part)} is not a tag=value pair; ignored")
            continue
        key = name.lower()
        if key in tags or key == "v":
            raise DmarcSyntaxError(f"{key}: given more than once")
        tags[key] = value

    rua = _report_uris("rua", tags.pop("rua", None), warnings)
    ruf = _report_uris("ruf", tags.pop("ruf", None), warnings)
    p_text, sp_text = tags.pop("p", None), tags.pop("sp", None)
    try:
        if p_text is None:
            raise DmarcSyntaxError("p: missing (the policy tag is required)")
        p = _policy("p", p_text)
        sp = None if sp_text is None else _policy("sp", sp_text)
    except DmarcSyntaxError as exc:
        if not rua:
            raise
        # §6.6.3 step 6: with a usable rua, act as if the record said p=none.
        warnings.append(f"{exc}; treated as p=none because rua is valid (RFC 7489 §6.6.3)")
        p, sp = "none", None

    pct = _pct(tags.pop("pct", None), warnings)
    adkim = _choice("adkim", tags.pop("adkim", None), ALIGNMENT_MODES, "r", warnings)
    aspf = _choice("aspf", tags.pop("aspf", None), ALIGNMENT_MODES, "r", warnings)
    fo = _options("fo", tags.pop("fo", None), FAILURE_OPTIONS, "0", warnings)
    rf = _options("rf", tags.pop("rf", None), REPORT_FORMATS, "afrf", warnings)
    ri = _interval(tags.pop("ri", None), warnings)
    for name in tags:
        warnings.append(f'unknown tag "{name}" ignored')
    return DmarcRecord(
        p=p,
        sp=sp,
        pct=pct,
        adkim=adkim,
        aspf=aspf,
        rua=rua,
        ruf=ruf,
        fo=fo,
        rf=rf,
        ri=ri,
        warnings=tuple(warnings),
    )


def select_dmarc_record(txt: Sequence[str]) -> str | None:
    """The one TXT record that starts with ``v=DMARC1``, or None.

    None also when there are several: RFC 7489 §6.6.3 says that is no policy at all, and
    callers that must tell the two apart (``lookup_dmarc`` reports permerror) count
    ``dmarc_records(txt)`` themselves.
    """
    found = dmarc_records(txt)
    return found[0] if len(found) == 1 else None


def dmarc_records(txt: Sequence[str]) -> list[str]:
    """Every TXT record that starts with ``v=DMARC1`` (others are discarded, §6.6.3)."""
    return [text for text in txt if _VERSION.match(text.lstrip()) is not None]


def _policy(tag: str, value: str) -> str:
    policy = value.lower()
    if policy not in POLICIES:
        raise DmarcSyntaxError(f"{tag}: {_show(value)} is not none, quarantine or reject")
    return policy


def _report_uris(tag: str, value: str | None, warnings: list[str]) -> tuple[str, ...]:
    if value is None:
        return ()
    uris: list[str] = []
    for item in (piece.strip() for piece in value.split(",")):
        if _REPORT_URI.fullmatch(item) is None:
            warnings.append(f"{tag}: {_show(item)} is not a report URI; ignored")
        elif not item.lower().startswith("mailto:"):
            warnings.append(f"{tag}: {_show(item)} is not mailto:, which receivers may not use")
            uris.append(item)
        else:
            uris.append(item)
    return tuple(uris)


def _pct(value: str | None, warnings: list[str]) -> int:
    if value is None:
        return 100
    if _INTEGER.fullmatch(value) is None:
        warnings.append(f"pct: {_show(value)} is not a whole number; 100 used")
        return 100
    pct = int(value)
    if not 0 <= pct <= 100:
        clamped = min(max(pct, 0), 100)
        warnings.append(f"pct: {pct} is outside 0-100; {clamped} used")
        return clamped
    return pct


def _choice(
    tag: str, value: str | None, allowed: tuple[str, ...], default: str, warnings: list[str]
) -> str:
    if value is None:
        return default
    if value.lower() not in allowed:
        warnings.append(f"{tag}: {_show(value)} is not {' or '.join(allowed)}; {default} used")
        return default
    return value.lower()


def _options(
    tag: str, value: str | None, allowed: tuple[str, ...], default: str, warnings: list[str]
) -> str:
    """A colon-separated list of keywords; unknown ones are dropped with a warning."""
    if value is None:
        return default
    kept: list[str] = []
    for item in (piece.strip().lower() for piece in value.split(":")):
        if item in allowed:
            if item not in kept:
                kept.append(item)
        else:
            warnings.append(f"{tag}: {_show(item)} is not one of {', '.join(allowed)}; ignored")
    if not kept:
        warnings.append(f"{tag}: no usable value; {default} used")
        return default
    return ":".join(kept)


def _interval(value: str | None, warnings: list[str]) -> int:
    if value is None:
        return DEFAULT_INTERVAL
    if not value.isascii() or not value.isdigit() or int(value) > MAX_INTERVAL:
        warnings.append(f"ri: {_show(value)} is not a number of seconds; {DEFAULT_INTERVAL} used")
        return DEFAULT_INTERVAL
    return int(value)


def _show(text: str) -> str:
    text = text if len(text) <= MAX_WARNING_VALUE else text[: MAX_WARNING_VALUE - 3] + "..."
    return '"' + text.replace('"', "'") + '"'


# --- alignment ----------------------------------------------------------------------------


def aligned(a: str, b: str, mode: str) -> bool:
    """Identifier alignment (§3.1): ``"s"`` the same domain, ``"r"`` the same organization."""
    a, b = a.strip().rstrip(".").lower(), b.strip().rstrip(".").lower()
    if mode not in ALIGNMENT_MODES:
        raise ValueError(f"alignment mode must be 'r' or 's', not {mode!r}")
    if not a or not b:
        return False
    if mode == "s":
        return a == b
    return a == b or organizational_domain(a) == organizational_domain(b)


# --- DNS ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Found:
    record: DmarcRecord | None
    policy_domain: str
    status: Result
    reason: str


async def lookup_dmarc(
    from_domain: str, resolver: Resolver
) -> tuple[DmarcRecord | None, str, Result]:
    """(record, policy domain, status) for the From domain (§6.6.3).

    Asks ``_dmarc.<from domain>``, and when that has no DMARC record, ``_dmarc.<its
    organizational domain>``. Status is ``NONE`` when neither has one (the policy domain
    is then the From domain), ``TEMPERROR`` when DNS did not answer (never a silent
    "none"), ``PERMERROR`` when the record found is unusable or there are several.
    Otherwise it is ``PASS`` meaning only "a record was found"; evaluate it next.
    """
    found = await _lookup(from_domain, resolver)
    return found.record, found.policy_domain, found.status


async def _lookup(from_domain: str, resolver: Resolver) -> _Found:
    found = await lookup_dmarc_records(from_domain, resolver)
    domain, name = found.policy_domain, f"_dmarc.{found.policy_domain}"
    if found.error:
        return _Found(None, domain, Result.TEMPERROR, f"DMARC lookup failed: {found.error}")
    if not found.records:
        return _Found(None, domain, Result.NONE, f"no DMARC record for {found.domain}")
    if len(found.records) > 1:
        return _Found(
            None, domain, Result.PERMERROR, f"{name} has {len(found.records)} DMARC records"
        )
    try:
        record = parse_dmarc(found.records[0])
    except DmarcSyntaxError as exc:
        return _Found(None, domain, Result.PERMERROR, f"{name}: {exc}")
    return _Found(record, domain, Result.PASS, f"record found at {name}")


@dataclass(frozen=True, slots=True)
class DmarcLookup:
    """Every DMARC record where §6.6.3 finds them, before any is chosen or parsed."""

    domain: str  # the domain asked about, normalised
    policy_domain: str  # where the records were found (``domain`` when none were)
    records: tuple[str, ...]  # TXT records starting v=DMARC1 (several is a permerror)
    error: str = ""  # a DNS failure at ``policy_domain``: nothing is known


async def lookup_dmarc_records(domain: str, resolver: Resolver) -> DmarcLookup:
    """Ask ``_dmarc.<domain>``, then ``_dmarc.<its organizational domain>`` (§6.6.3).

    The walk stops at the first name with DMARC records, or at a DNS failure (never
    read as "no policy"). Choosing and parsing are left to the caller: the gateway folds
    "several" and "broken" into permerror, the checker reports each with its own fix.
    """
    domain = domain.strip().rstrip(".").lower()
    for where in dict.fromkeys((domain, organizational_domain(domain))):
        try:
            records = dmarc_records(await resolver.txt(f"_dmarc.{where}"))
        except DnsNotFound:
            records = []
        except DnsTemporaryError as exc:
            return DmarcLookup(domain, where, (), str(exc))
        if records:
            return DmarcLookup(domain, where, tuple(records))
    return DmarcLookup(domain, domain, ())


# --- evaluation ---------------------------------------------------------------------------


def applicable_policy(domain: str, policy_domain: str, record: DmarcRecord) -> str:
    """The policy for mail from ``domain``: ``sp`` when the record was found at the
    organizational domain and has one, else ``p`` (§6.3, §6.6.3). Both normalised."""
    return record.sp if domain != policy_domain and record.sp is not None else record.p


def evaluate_dmarc(
    from_domain: str,
    record: DmarcRecord | None,
    policy_domain: str,
    spf: SpfOutcome | None,
    dkim_passes: Sequence[DkimPass],
    *,
    rng_value: float | None = None,
) -> DmarcResult:
    """The DMARC verdict for a message whose From domain is ``from_domain`` (pure).

    ``rng_value`` in [0, 1) decides ``pct`` sampling (None draws one): the policy applies
    when ``rng_value * 100 < pct``; otherwise the disposition is one step milder
    (reject → quarantine, quarantine → none, §6.6.4 and §6.3 ``pct``).
    """
    from_domain = from_domain.strip().rstrip(".").lower()
    policy_domain = policy_domain.strip().rstrip(".").lower()
    aspf = record.aspf if record is not None else "r"
    adkim = record.adkim if record is not None else "r"
    spf_aligned = (
        spf is not None and spf.result.lower() == "pass" and aligned(spf.domain, from_domain, aspf)
    )
    dkim_aligned = any(aligned(sig.domain, from_domain, adkim) for sig in dkim_passes)
    if record is None:
        return DmarcResult(
            Result.NONE,
            from_domain,
            policy_domain,
            None,
            "none",
            "none",
            spf_aligned,
            dkim_aligned,
            f"no DMARC record for {from_domain}",
        )
    policy = applicable_policy(from_domain, policy_domain, record)
    where = f"_dmarc.{policy_domain}"
    if spf_aligned or dkim_aligned:
        return DmarcResult(
            Result.PASS,
            from_domain,
            policy_domain,
            record,
            policy,
            "none",
            spf_aligned,
            dkim_aligned,
            f"{_passed(spf_aligned, dkim_aligned, spf, dkim_passes, adkim, from_domain)} "
            f"(policy {policy} from {where})",
        )
    if rng_value is None:
        rng_value = random.random()  # noqa: S311 - sampling, not security
    if not 0.0 <= rng_value < 1.0:
        raise ValueError(f"rng_value must be in [0, 1), not {rng_value!r}")
    sampled = rng_value * 100 < record.pct
    disposition = policy if sampled else _STEP_DOWN[policy]
    reason = (
        f"neither SPF nor DKIM aligned with {from_domain}: "
        f"{_spf_detail(spf, aspf, from_domain)}; {_dkim_detail(dkim_passes, adkim)}; "
        f"policy {policy} from {where}"
    )
    if not sampled and policy != "none":
        reason += f", but pct={record.pct} did not select this message, so {disposition}"
    return DmarcResult(
        Result.FAIL,
        from_domain,
        policy_domain,
        record,
        policy,
        disposition,
        False,
        False,
        reason,
    )


def _passed(
    spf_aligned: bool,
    dkim_aligned: bool,
    spf: SpfOutcome | None,
    dkim_passes: Sequence[DkimPass],
    adkim: str,
    from_domain: str,
) -> str:
    which: list[str] = []
    if spf_aligned and spf is not None:
        which.append(f"SPF (pass for {spf.domain.lower()})")
    if dkim_aligned:
        domains = sorted(
            {s.domain.lower() for s in dkim_passes if aligned(s.domain, from_domain, adkim)}
        )
        which.append(f"DKIM (d={', d='.join(domains)})")
    return f"{' and '.join(which)} aligned with {from_domain}"


def _spf_detail(spf: SpfOutcome | None, aspf: str, from_domain: str) -> str:
    if spf is None:
        return "no SPF result"
    if spf.result.lower() != "pass":
        return f"SPF {spf.result.lower()} for {spf.domain.lower() or '(no domain)'}"
    mode = "strict" if aspf == "s" else "relaxed"
    return f"SPF passed for {spf.domain.lower()}, not aligned with {from_domain} ({mode})"


def _dkim_detail(dkim_passes: Sequence[DkimPass], adkim: str) -> str:
    if not dkim_passes:
        return "no DKIM signature passed"
    mode = "strict" if adkim == "s" else "relaxed"
    domains = sorted({sig.domain.lower() for sig in dkim_passes})
    return f"DKIM passed only for d={', d='.join(domains)} (not aligned, {mode})"


async def check_dmarc(
    from_domain: str,
    spf: SpfOutcome | None,
    dkim_passes: Sequence[DkimPass],
    resolver: Resolver,
    *,
    rng_value: float | None = None,
) -> DmarcResult:
    """Look the policy up and evaluate it; DNS trouble gives temperror, a bad record permerror."""
    found = await _lookup(from_domain, resolver)
    if found.status in (Result.TEMPERROR, Result.PERMERROR):
        domain = from_domain.strip().rstrip(".").lower()
        spf_aligned = (
            spf is not None and spf.result.lower() == "pass" and aligned(spf.domain, domain, "r")
        )
        dkim_aligned = any(aligned(sig.domain, domain, "r") for sig in dkim_passes)
        return DmarcResult(
            found.status,
            domain,
            found.policy_domain,
            None,
            "none",
            "none",
            spf_aligned,
            dkim_aligned,
            found.reason,
        )
    return evaluate_dmarc(
        from_domain, found.record, found.policy_domain, spf, dkim_passes, rng_value=rng_value
    )


# --- the From header ----------------------------------------------------------------------


def header_from_domain(message: bytes) -> tuple[str | None, str]:
    """The RFC5322.From domain DMARC is about, or (None, the problem) — RFC 7489 §6.6.1.

    The message must have exactly one From header holding exactly one address
    (``core.senders.header_from``, which submission's sender check reads too); anything
    else ("no From header", "more than one From header", "From header with several
    addresses", "From address not valid: ...") is for the caller to treat as a DMARC
    failure at least, because several From addresses are a classic way to show a person
    one sender while authenticating another. The header fields are the ones
    ``read_headers`` finds, so a From below a line that ends the header section is body
    here as it is for DKIM and for the reader; a header section over the reader's limits
    is a problem too ("header section not read: ...").
    """
    try:
        block = read_headers(message)
    except HeaderLimitError as exc:
        return None, f"header section not read: {exc}"
    address, problem = header_from(block)
    return (address.domain if address is not None else None), problem
