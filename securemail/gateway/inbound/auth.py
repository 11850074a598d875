"""Judge inbound mail: SPF, DKIM, DMARC, ARC → one verdict and what to do with it.

Two halves, as everywhere in securemail: ``authenticate`` does the lookups (all through
the one resolver, concurrently), ``decide`` is pure and says accept / quarantine /
reject / try-later, with the peer-safe reply and the trust mark.

Enforcement follows RFC 7489 (``p=reject`` failures refused at end of DATA,
``p=quarantine`` delivered but marked), plus the guidance's rule that a message's
claimed origin is only trusted from systems that meet the standard: mail whose From
domain is itself *secure* (nhs.net, gov.uk, ...) and that does not pass DMARC is never
delivered as trusted, and by default is refused outright. DNS trouble never turns
into a pass: when the answer depends on a lookup that failed, the client is told to
try again later (``451``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from securemail.core.classify import Classification
from securemail.core.message import HeaderBlock, HeaderLimitError, read_headers, without_fields
from securemail.core.replies import AUTH_TEMPFAIL, SmtpReply, auth_refused
from securemail.core.rules import Status
from securemail.cpu import RunCpu, run_inline
from securemail.dns import Resolver
from securemail.mech.arc import ArcVerdict, verify_arc
from securemail.mech.dkim import DkimVerdict, verify_dkim
from securemail.mech.dmarc import (
    DkimPass,
    DmarcResult,
    SpfOutcome,
    check_dmarc,
    header_from_domain,
)
from securemail.mech.results import MethodResult, Result, is_own_auth_results
from securemail.mech.spf import SpfResult, check_helo, check_spf

TRUST_HEADER = "X-Securemail-Trust"


class Action(StrEnum):
    ACCEPT = "accept"
    QUARANTINE = "quarantine"
    REJECT = "reject"
    TEMPFAIL = "tempfail"


@dataclass(frozen=True, slots=True)
class AuthVerdict:
    spf: SpfResult  # the MAIL FROM identity (postmaster@HELO for the null sender)
    dkim: tuple[DkimVerdict, ...]
    dmarc: DmarcResult | None  # None when the From header itself is unusable
    arc: ArcVerdict
    from_domain: str | None
    from_problem: str
    helo: SpfResult | None = None  # the HELO identity (RFC 7208 §2.3), reported only

    def method_results(self) -> list[MethodResult]:
        out = [self.spf.to_method_result()]
        if self.helo is not None and self.helo.result is not Result.NONE:
            out.append(self.helo.to_method_result())
        out += [d.to_method_result() for d in self.dkim] or [MethodResult("dkim", Result.NONE)]
        if self.dmarc is not None:
            out.append(self.dmarc.to_method_result())
        else:
            out.append(MethodResult("dmarc", Result.PERMERROR, self.from_problem))
        out.append(self.arc.to_method_result())
        return out


@dataclass(frozen=True, slots=True)
class AuthDecision:
    action: Action
    trusted: bool  # X-Securemail-Trust: secure
    reply: SmtpReply | None  # for REJECT/TEMPFAIL: the SMTP reply (with the detail)
    log: str  # the detail, for the log line


@dataclass(frozen=True, slots=True)
class AuthPolicy:
    enforce_dmarc: bool = True
    secure_senders_must_pass: bool = True


async def authenticate(
    data: bytes,
    *,
    ip: str,
    helo: str,
    mail_from: str,
    resolver: Resolver,
    run: RunCpu = run_inline,
) -> AuthVerdict:
    """Run SPF (MAIL FROM and HELO), DKIM, ARC concurrently, then DMARC over them.

    DKIM's and ARC's hashing go to ``run`` (``securemail.cpu``); what it raises when it
    cannot finish them is raised here.
    """
    from_domain, problem = header_from_domain(data)
    spf, helo_spf, dkim, arc = await asyncio.gather(
        check_spf(ip, mail_from, helo, resolver),
        check_helo(ip, helo, resolver),
        verify_dkim(data, resolver, run=run),
        verify_arc(data, resolver, run=run),
    )
    dmarc = None
    if from_domain is not None:
        passes = [DkimPass(v.domain) for v in dkim if v.result is Result.PASS]
        spf_outcome = SpfOutcome(spf.result.value, spf.domain)
        dmarc = await check_dmarc(from_domain, spf_outcome, passes, resolver)
    return AuthVerdict(spf, tuple(dkim), dmarc, arc, from_domain, problem, helo_spf)


def decide(
    verdict: AuthVerdict,
    *,
    tls: bool,
    classify: Callable[[str], Classification],
    policy: AuthPolicy,
) -> AuthDecision:
    """Pure: what the gateway does with a message, given its authentication verdict."""
    dmarc = verdict.dmarc
    if dmarc is None:
        detail = f"unusable From header: {verdict.from_problem}"
        return AuthDecision(
            Action.REJECT,
            False,
            auth_refused(f"{verdict.from_problem} (RFC 7489 §6.6.1)", "from").logged(detail),
            detail,
        )
    temporary = verdict.spf.result is Result.TEMPERROR or any(
        d.result is Result.TEMPERROR for d in verdict.dkim
    )
    if dmarc.result is Result.TEMPERROR:
        return _tempfail(f"DMARC lookup for {dmarc.from_domain} failed: {dmarc.reason}")
    sender_secure = classify(f"postmaster@{dmarc.from_domain}").status is Status.SECURE
    passed = dmarc.result is Result.PASS
    trusted = sender_secure and passed and tls
    if not passed and policy.enforce_dmarc and dmarc.disposition == "reject":
        if temporary:
            return _tempfail(f"DMARC fail for {dmarc.from_domain} while a lookup failed")
        detail = f"dmarc={dmarc.result.value} p={dmarc.policy} dis=reject: {dmarc.reason}"
        reply = auth_refused(
            f"it fails the DMARC policy of {dmarc.from_domain} "
            "(neither SPF nor DKIM authenticates the From domain)",
            "dmarc",
        )
        return AuthDecision(Action.REJECT, False, reply.logged(detail), detail)
    if sender_secure and not passed and policy.secure_senders_must_pass:
        if temporary:
            return _tempfail(f"secure sender {dmarc.from_domain} unauthenticated; lookup failed")
        detail = f"secure sender domain {dmarc.from_domain} failed DMARC: {dmarc.reason}"
        reply = auth_refused(
            f"mail from {dmarc.from_domain} must pass DMARC (secure email standard anti-spoofing)",
            "secure-sender",
        )
        return AuthDecision(Action.REJECT, False, reply.logged(detail), detail)
    if not passed and policy.enforce_dmarc and dmarc.disposition == "quarantine":
        return AuthDecision(
            Action.QUARANTINE, False, None, f"dmarc quarantine for {dmarc.from_domain}"
        )
    return AuthDecision(Action.ACCEPT, trusted, None, f"dmarc={dmarc.result.value}")


def _tempfail(detail: str) -> AuthDecision:
    return AuthDecision(
        Action.TEMPFAIL,
        False,
        AUTH_TEMPFAIL.logged(detail),
        detail,
    )


_ALWAYS_OURS = (b"x-securemail-trust", b"x-securemail-quarantine")


def strip_own_headers(data: bytes, authserv_id: str, block: HeaderBlock | None = None) -> bytes:
    """Remove incoming copies of headers only we may write (RFC 8601 §5).

    Authentication-Results with our authserv-id (``is_own_auth_results``), and every
    X-Securemail-Trust / X-Securemail-Quarantine: a sender must not be able to pre-mark
    mail as trusted. The fields are the ones ``read_headers`` finds, so what it calls
    body is left alone here as everywhere; the rest is kept byte for byte. A header
    section over the reader's limits is returned as it is: ``authenticate`` then finds
    no usable From ("header section not read") and ``decide`` refuses the message.
    ``block``: ``data``'s fields, when the caller has read them already.
    """
    if block is None:
        try:
            block = read_headers(data)
        except HeaderLimitError:
            return data
    return without_fields(
        data,
        block,
        lambda f: f.lname in _ALWAYS_OURS or is_own_auth_results(f, authserv_id),
    )


def trust_header(trusted: bool) -> bytes:
    """The one place the trust mark is written (``secure`` or ``external``)."""
    return f"{TRUST_HEADER}: {'secure' if trusted else 'external'}\r\n".encode()


def result_headers(auth_results: str, decision: AuthDecision) -> bytes:
    """The Authentication-Results header given, the trust mark, the quarantine mark."""
    text = auth_results.encode() + trust_header(decision.trusted)
    if decision.action is Action.QUARANTINE:
        text += f"X-Securemail-Quarantine: yes ({decision.log})\r\n".encode()
    return text
