"""MTA-STS on delivery (RFC 8461): a destination's own demand for verified TLS, kept.

A domain that publishes MTA-STS says: mail for me goes only to MX hosts matching my
policy's ``mx`` patterns, over TLS 1.2 or later with a certificate valid for that host.
This is asked of every destination, not only secure ones: a gateway that forces TLS
only where the guidance tables say would leave every other domain that asks for it open
to a STARTTLS-stripping or MX-spoofing downgrade.

Two pieces, both used by the gateway and by ``securemail policy explain --lookup``:

* ``StsPolicies`` finds the policy in force for a domain. The protocol itself (TXT
  record, bounded and verified HTTPS fetch, parser, MX matching) is ``mech.mta_sts``,
  shared with the checker; this adds RFC 8461 §5.1's cache: a policy fetched is used
  until its ``max_age`` ends, refreshed when the TXT ``id`` changes or it expired, and
  a failed refresh (HTTPS down, a redirect, an oversized or malformed policy, a bad
  certificate) keeps the cached one in force and says so in one log line. The cache is
  the spool's ``mta_sts`` table (``spool/sts_cache.py``: it survives restarts and every
  process delivering from the spool shares one fetch), fronted by memory, so a burst
  of mail to one domain costs at most one TXT lookup per ``recheck`` seconds and one
  HTTPS fetch per policy, never one per message. Concurrent deliveries to one domain
  share one lookup.
* ``MtaSts``, the ``DeliveryPolicy`` link: ``prepare`` adds the policy's mode and id to
  the transport facts (``core.transport`` decides what they mean: ``enforce`` raises
  the level to ``MTA_STS`` unless ``TLS-Required: No`` relaxes it for ordinary mail);
  at ``MTA_STS`` an MX host not matching the policy is refused before connecting and a
  connection without verified TLS 1.2+ naming the MX host is refused before anything is
  sent, so the mail is deferred, never sent in the clear. Under ``testing`` the link
  asks for a verifying handshake only to learn what ``enforce`` would have refused,
  records it (``MtaStsFailure``, RFC 8460 types, for TLS-RPT) and lets delivery go on
  as before (the Deliverer falls back to opportunistic TLS on that host).

Choices where RFC 8461 leaves room: no ``_mta-sts`` record (or an invalid one) with an
unexpired cached policy keeps the cached policy (§8.3: a domain withdraws a policy by
publishing ``mode: none``, not by deleting the record); a DNS failure looking up the
record uses the cached policy if there is one, else none applies (§5: without a policy
delivery goes on as if the domain had none; deferring would add nothing, since whoever
can break that lookup can as well answer "no such name"). Our own domains are routed to
``[inbound] deliver_to``, never by MX, so their policy is not looked up.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from securemail.core.levels import TlsFailure, TlsLevel
from securemail.core.transport import StsMode, TransportDecision, TransportFacts
from securemail.dns import DnsError, Resolver
from securemail.gateway.events import EventSink, Lifecycle, LogSink, MtaStsFailure, MtaStsFetched
from securemail.gateway.outbound.client import TlsFacts
from securemail.gateway.outbound.policy import Accepted, Handshake, Refusal
from securemail.gateway.spool.store import StsPolicyRecord
from securemail.mech.mta_sts import (
    MtaStsError,
    MtaStsPolicy,
    PolicyHostCertificateError,
    fetch_policy,
    lookup_record,
    mx_matches,
    parse_policy,
    parse_txt_record,
)
from securemail.tls import name_matches

RECHECK = 60.0  # seconds between TXT lookups for one domain (RFC 8461 §5.1 "periodically")
FETCH_TIMEOUT = 10.0  # the whole HTTPS fetch
MEMORY = 10_000  # domains remembered in the front cache (least recently used go first)
TLS_VERSIONS = ("TLSv1.2", "TLSv1.3")  # RFC 8461 §4.2: TLS 1.2 or later


class StsStore(Protocol):
    """Where fetched policies are kept: the spool (``Spool.sts_get``/``sts_put``)."""

    async def sts_get(self, domain: str) -> StsPolicyRecord | None: ...
    async def sts_put(self, record: StsPolicyRecord) -> None: ...


@dataclass(frozen=True, slots=True)
class StsView:
    """The MTA-STS policy in force for one destination now, and where it came from."""

    domain: str
    policy: MtaStsPolicy | None  # None: no usable policy (no record, none fetched or cached)
    policy_id: str = ""
    expires: float = 0.0  # epoch; the policy is not used after it
    source: str = "none"  # "fetched" | "cached" | "none"
    note: str = ""  # why, as a person reads it (explain; the log has its own lines)

    @property
    def mode(self) -> StsMode | None:
        return None if self.policy is None else StsMode(self.policy.mode)

    def matching(self, mx: str) -> str | None:
        """The policy ``mx`` pattern ``mx`` matches, if any."""
        patterns = self.policy.mx if self.policy else ()
        return next((p for p in patterns if mx_matches(p, mx)), None)

    def to_json(self) -> dict[str, object]:
        policy = self.policy
        return {
            "domain": self.domain,
            "mode": policy.mode if policy else None,
            "id": self.policy_id or None,
            "mx": list(policy.mx) if policy else [],
            "max_age": policy.max_age if policy else None,
            "expires": self.expires or None,
            "source": self.source,
            "note": self.note,
        }


class StsPolicies:
    """The MTA-STS policy in force per destination: lookup, fetch, cache (see above).

    ``store`` None keeps policies in memory only (``policy explain``); ``clock`` is the
    wall clock the cache's ``expires`` are written in.
    """

    def __init__(
        self,
        resolver: Resolver,
        *,
        store: StsStore | None = None,
        https_port: int = 443,
        ca_file: Path | None = None,
        timeout: float = FETCH_TIMEOUT,
        recheck: float = RECHECK,
        memory: int = MEMORY,
        clock: Callable[[], float] = time.time,
        events: EventSink | None = None,
    ) -> None:
        self.resolver = resolver
        self.store = store
        self.https_port = https_port
        self.ca_file = ca_file
        self.timeout = timeout
        self.recheck = recheck
        self.memory = memory
        self.clock = clock
        self.events = events or LogSink()
        self._seen: OrderedDict[str, tuple[float, StsView]] = OrderedDict()  # domain → checked
        self._pending: dict[str, asyncio.Task[StsView]] = {}

    async def current(self, domain: str) -> StsView:
        """The policy for ``domain``: from memory within ``recheck`` seconds of the last
        look (and before it expires), else looked up once however many ask at a time."""
        domain = domain.rstrip(".").lower()
        now = self.clock()
        seen = self._seen.get(domain)
        if seen is not None:
            checked, view = seen
            if now - checked < self.recheck and (view.policy is None or now < view.expires):
                self._seen.move_to_end(domain)
                return view
        task = self._pending.get(domain)
        if task is None:
            task = asyncio.ensure_future(self._refresh(domain, now, seen[1] if seen else None))
            self._pending[domain] = task
            task.add_done_callback(lambda _: self._pending.pop(domain, None))
        return await asyncio.shield(task)

    async def _refresh(self, domain: str, now: float, previous: StsView | None) -> StsView:
        view = await self._lookup(domain, now, previous)
        self._seen[domain] = (now, view)
        self._seen.move_to_end(domain)
        while len(self._seen) > self.memory:
            self._seen.popitem(last=False)
        return view

    async def _lookup(self, domain: str, now: float, previous: StsView | None) -> StsView:
        cached = await self._cached(domain, now, previous)
        try:
            records = await lookup_record(domain, self.resolver)
        except DnsError as exc:
            why = f"_mta-sts.{domain} could not be looked up ({exc})"
            return self._without_record(domain, cached, why, warn=True)
        record_id, problem = parse_txt_record(records)
        if record_id is None:
            why = f"_mta-sts.{domain}: {problem}" if problem else f"no _mta-sts.{domain} record"
            return self._without_record(domain, cached, why, warn=bool(problem))
        if cached is not None and cached.policy_id == record_id:
            return replace(cached, note=f"cached, id {record_id} still published")
        return await self._fetch(domain, record_id, now, cached)

    def _without_record(
        self, domain: str, cached: StsView | None, why: str, *, warn: bool
    ) -> StsView:
        """No usable record: the cached policy stays in force until it expires."""
        if cached is not None:
            note = f"{why}; the cached policy id={cached.policy_id} stays in force"
            if warn:
                self.events.emit(Lifecycle(f"MTA-STS {domain}: {note}", warning=True))
            return replace(cached, note=note)
        if warn:
            note = f"{why}; no cached policy, so none applies (RFC 8461 §5)"
            self.events.emit(Lifecycle(f"MTA-STS {domain}: {note}", warning=True))
        return StsView(domain, None, note=why)

    async def _fetch(
        self, domain: str, record_id: str, now: float, cached: StsView | None
    ) -> StsView:
        """Fetch and parse the policy for ``record_id``; on failure keep ``cached``."""

        async def resolve(host: str) -> str:
            return (await self.resolver.addresses(host))[0]

        try:
            text = await fetch_policy(
                domain,
                https_port=self.https_port,
                ca_file=self.ca_file,
                timeout=self.timeout,
                resolve=resolve,
            )
        except PolicyHostCertificateError as exc:
            return self._failed(domain, record_id, TlsFailure.STS_WEBPKI_INVALID, str(exc), cached)
        except (MtaStsError, DnsError) as exc:
            failure = TlsFailure.STS_POLICY_FETCH_ERROR
            return self._failed(domain, record_id, failure, str(exc), cached)
        try:
            policy = parse_policy(text)
        except MtaStsError as exc:
            failure = TlsFailure.STS_POLICY_INVALID
            return self._failed(domain, record_id, failure, f"invalid policy: {exc}", cached)
        expires = now + policy.max_age
        await self._keep(StsPolicyRecord(domain, record_id, text, now, expires))
        self.events.emit(MtaStsFetched(domain, record_id, policy.mode, policy.max_age, policy.mx))
        return StsView(domain, policy, record_id, expires, "fetched", f"fetched, id {record_id}")

    def _failed(
        self,
        domain: str,
        record_id: str,
        failure: TlsFailure,
        detail: str,
        cached: StsView | None,
    ) -> StsView:
        """One log line saying what failed and what applies instead."""
        kept = cached.policy_id if cached is not None else ""
        mode = cached.policy.mode if cached is not None and cached.policy else ""
        self.events.emit(MtaStsFailure(domain, failure, detail, record_id, mode, kept=kept))
        why = f"policy id={record_id} not fetched ({failure.value}: {detail})"
        if cached is not None:
            return replace(cached, note=f"{why}; the cached policy id={kept} stays in force")
        return StsView(domain, None, note=f"{why}; no cached policy, so none applies")

    async def _cached(self, domain: str, now: float, previous: StsView | None) -> StsView | None:
        """The unexpired policy we hold for ``domain``: in memory, else in the spool."""
        if previous is not None and previous.policy is not None and now < previous.expires:
            return replace(previous, source="cached")
        if self.store is None:
            return None
        try:
            record = await self.store.sts_get(domain)
        except Exception as exc:  # a spool problem must not stop mail: fetch afresh
            self.events.emit(
                Lifecycle(f"MTA-STS {domain}: policy cache unreadable: {exc}", warning=True)
            )
            return None
        if record is None or record.expires <= now:
            return None
        try:
            policy = parse_policy(record.policy)
        except MtaStsError:
            return None  # a row this parser refuses is no policy: fetched again
        return StsView(domain, policy, record.policy_id, record.expires, "cached")

    async def _keep(self, record: StsPolicyRecord) -> None:
        if self.store is None:
            return
        try:
            await self.store.sts_put(record)
        except Exception as exc:  # kept in memory; the next process fetches it again
            self.events.emit(
                Lifecycle(
                    f"MTA-STS {record.domain}: policy id={record.policy_id} not cached "
                    f"in the spool: {exc}",
                    warning=True,
                )
            )


class MtaSts:
    """The ``DeliveryPolicy`` link for MTA-STS (see the module docstring).

    ``skip``: domains never routed by MX (our own, to ``[inbound] deliver_to``).
    """

    CHECK = "mta-sts"

    def __init__(
        self, policies: StsPolicies, *, skip: Iterable[str] = (), events: EventSink | None = None
    ) -> None:
        self.policies = policies
        self.skip = frozenset(d.lower() for d in skip)
        self.events = events or policies.events

    async def prepare(self, domain: str, facts: TransportFacts) -> TransportFacts | Refusal:
        if domain.lower() in self.skip:
            return facts
        view = await self.policies.current(domain)
        if view.mode is None:
            return facts
        return replace(facts, sts_mode=view.mode, sts_id=view.policy_id)

    async def check_mx(
        self, domain: str, mx: str, decision: TransportDecision
    ) -> TlsLevel | Refusal:
        enforce = decision.level is TlsLevel.MTA_STS
        if not (enforce or decision.sts_testing):
            return decision.level
        view = await self.policies.current(domain)  # in memory since prepare
        if view.mode not in (StsMode.ENFORCE, StsMode.TESTING) or view.matching(mx):
            return decision.level
        assert view.policy is not None
        detail = (
            f"MX host {mx} does not match the MTA-STS policy of {domain} "
            f"(id={view.policy_id}, mx: {', '.join(view.policy.mx)})"
        )
        if enforce:
            return Refusal(TlsFailure.VALIDATION_FAILURE, detail, check=self.CHECK)
        self._record(domain, view, mx, TlsFailure.VALIDATION_FAILURE, detail)
        return decision.level

    def handshake(self, domain: str, mx: str, decision: TransportDecision) -> Handshake | None:
        """Under ``testing``, verify as ``enforce`` would, to learn what it would refuse
        (the Deliverer retries that host opportunistically if the handshake fails)."""
        if decision.sts_testing and not decision.level.forced:
            return Handshake.PKIX_MX_HOSTNAME
        return None

    async def check_conn(
        self, domain: str, mx: str, facts: TlsFacts, decision: TransportDecision
    ) -> Accepted | Refusal:
        if decision.level is TlsLevel.MTA_STS:
            problem = _problem(mx, facts)
            if problem is not None:
                return Refusal(*problem, check=self.CHECK)
            view = await self.policies.current(domain)
            return Accepted(f"mta-sts:{view.matching(mx) or mx}")
        if decision.sts_testing:
            problem = _problem(mx, facts, verifying_only=False)
            if problem is not None:
                self._record(domain, await self.policies.current(domain), mx, *problem)
        return Accepted()

    def _record(
        self, domain: str, view: StsView, mx: str, failure: TlsFailure, detail: str
    ) -> None:
        mode = view.policy.mode if view.policy else "testing"
        self.events.emit(MtaStsFailure(domain, failure, detail, view.policy_id, mode, mx))


def _problem(
    mx: str, facts: TlsFacts, *, verifying_only: bool = True
) -> tuple[TlsFailure, str] | None:
    """Why ``facts`` do not meet RFC 8461 §4.2 for ``mx``, or None.

    ``verifying_only`` False (testing) leaves out the one thing an opportunistic
    connection cannot show, an unverified certificate: what the verifying handshake
    found is already in ``facts.failure``.
    """
    if not facts.starttls:
        return TlsFailure.STARTTLS_NOT_SUPPORTED, f"{facts.peer} did not offer STARTTLS"
    if facts.failure is not None:
        return facts.failure, facts.error
    if facts.version not in TLS_VERSIONS:
        got = facts.version or "no TLS"
        return TlsFailure.VALIDATION_FAILURE, f"{facts.peer}: {got}, not TLS 1.2 or later"
    named = facts.verified or (facts.chain_verified and name_matches(mx, facts.names))
    if named or not verifying_only:
        return None
    if facts.chain_verified:
        names = ", ".join(facts.names) or "no DNS name"
        return (
            TlsFailure.CERTIFICATE_HOST_MISMATCH,
            f"the certificate of {facts.peer} names {names}, not the MX host {mx}",
        )
    return TlsFailure.VALIDATION_FAILURE, f"the certificate of {facts.peer} was not verified"
