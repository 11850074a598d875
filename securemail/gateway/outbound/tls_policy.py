"""Per-destination TLS policy, after Postfix's ``smtp_tls_policy_maps``: pinned names.

Forced TLS verifies the certificate against the MX host name, and that name comes from
DNS. Without DNSSEC, whoever answers the MX query (a poisoned resolver, a hijacked
delegation) names the host, and a publicly trusted certificate for a host of their own
is a few minutes' work: "verified" then proves only that the peer is who DNS said. A
pinned policy names the certificate names a destination's servers must present,
whatever the MX host name is, so a spoofed MX fails with ``certificate-host-mismatch``
and the mail waits.

``[delivery.tls_policy]`` maps a destination to a policy string, as Postfix does::

    "nhs.net" = "secure match=nexthop:dot-nexthop"   # the domain itself only
    ".nhs.net" = "verify match=.nhs.net"             # any subdomain (not nhs.net itself)
    "partner.example" = "verify match=mx1.partner.example:mx2.partner.example"
    "legacy.example" = "may"

Lookup: the recipient domain exactly, then ``.parent`` keys from the nearest parent up.
Levels: ``none`` (no STARTTLS) and ``may`` (opportunistic) for destinations that need
nothing more, never lowering a forced one (logged, the stricter kept); ``verify`` forces
TLS with a trusted chain naming the MX host (the gateway's ``VERIFIED``), or the
``match=`` names when given; ``secure`` is ``verify`` whose names default to
``nexthop:dot-nexthop``. Patterns (colon-separated): ``nexthop`` the recipient domain,
``dot-nexthop`` any subdomain of it, ``name`` exactly that name, ``.name`` any
subdomain of it; certificate names are matched as RFC 6125 reads them
(``securemail.tls``). ``encrypt``, ``dane`` and Postfix's other attributes are refused
at startup rather than half-honoured; so is ``match=hostname``, which trusts the very
DNS answer a pin exists to distrust (leave ``match=`` out for that).

Parsing is pure and happens once, at startup (``TlsPolicyMap.parse``); ``PolicyMap`` is
the ``DeliveryPolicy`` link that applies the parsed records on every delivery.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from enum import Enum, StrEnum

from securemail.core.addresses import AddressError, normalise_domain
from securemail.core.levels import TlsFailure
from securemail.core.transport import TransportDecision, TransportFacts
from securemail.gateway.events import EventSink, Lifecycle, LogSink
from securemail.gateway.outbound.client import TlsFacts
from securemail.gateway.outbound.policy import Accepted, Handshake, NeutralLink, Refusal
from securemail.tls import name_matches, subdomain_matches


class PolicyError(ValueError):
    """A map entry that cannot be used; ``key`` is the destination as written."""

    def __init__(self, message: str, key: str = "") -> None:
        super().__init__(message)
        self.key = key


class PolicyLevel(StrEnum):
    NONE = "none"
    MAY = "may"
    VERIFY = "verify"
    SECURE = "secure"


_REFUSED_LEVELS = {
    "encrypt": "encrypt (TLS that authenticates no one) is not supported: use may or verify",
    "dane": "dane is not supported here yet: use verify or secure",
    "dane-only": "dane-only is not supported here yet: use verify or secure",
    "fingerprint": "fingerprint is not supported: use secure with match= names",
}


class MatchKind(Enum):
    NEXTHOP = "nexthop"  # the recipient domain itself
    DOT_NEXTHOP = "dot-nexthop"  # any subdomain of the recipient domain
    NAME = "name"  # exactly ``name``
    SUBDOMAIN = "subdomain"  # any subdomain of ``name``


@dataclass(frozen=True, slots=True)
class MatchPattern:
    """One ``match=`` pattern; ``name`` is set for ``NAME`` and ``SUBDOMAIN`` only."""

    kind: MatchKind
    name: str = ""

    def reference(self, domain: str) -> str:
        """The pattern made concrete for ``domain``: ``nhs.net``, ``.nhs.net``, a name."""
        match self.kind:
            case MatchKind.NEXTHOP:
                return domain
            case MatchKind.DOT_NEXTHOP:
                return f".{domain}"
            case MatchKind.NAME:
                return self.name
            case MatchKind.SUBDOMAIN:
                return f".{self.name}"

    def matches(self, domain: str, names: tuple[str, ...]) -> bool:
        """A certificate with DNS ``names`` satisfies this pattern for ``domain``."""
        reference = self.reference(domain)
        if reference.startswith("."):
            return subdomain_matches(reference[1:], names)
        return name_matches(reference, names)

    def __str__(self) -> str:
        if self.kind in (MatchKind.NEXTHOP, MatchKind.DOT_NEXTHOP):
            return self.kind.value
        return self.reference("")


SECURE_DEFAULT_MATCH = (MatchPattern(MatchKind.NEXTHOP), MatchPattern(MatchKind.DOT_NEXTHOP))


@dataclass(frozen=True, slots=True)
class TlsPolicy:
    """One parsed entry: ``destination`` is its normalised key (``.nhs.net``, ``nhs.net``)."""

    destination: str
    level: PolicyLevel
    match: tuple[MatchPattern, ...] = ()  # empty: the MX host name (verify) or no check

    @property
    def forces(self) -> bool:
        """The entry demands verified TLS, whatever the recipient's decision said."""
        return self.level in (PolicyLevel.VERIFY, PolicyLevel.SECURE)

    @property
    def pinned(self) -> bool:
        """Certificate names come from the map, not from DNS."""
        return bool(self.match)

    def matching(self, domain: str, names: tuple[str, ...]) -> MatchPattern | None:
        """The first pattern a certificate with DNS ``names`` satisfies, if any."""
        return next((p for p in self.match if p.matches(domain, names)), None)

    def __str__(self) -> str:
        patterns = ":".join(map(str, self.match))
        return f"{self.level.value} match={patterns}" if patterns else self.level.value


def parse_destination(key: str) -> str:
    """``nhs.net`` (exactly) or ``.nhs.net`` (its subdomains), lower-case ASCII."""
    subdomains = key.startswith(".")
    if "*" in key:
        raise PolicyError("wildcards are not destinations: use .example.org for subdomains", key)
    try:
        domain = normalise_domain(key[1:] if subdomains else key)
    except AddressError as exc:
        raise PolicyError(str(exc), key) from None
    return f".{domain}" if subdomains else domain


def parse_policy(key: str, text: str) -> TlsPolicy:
    """Parse one entry (``key`` = its destination as written); raises ``PolicyError``."""
    destination = parse_destination(key)
    words = text.split()
    if not words:
        raise PolicyError("empty policy: expected one of none, may, verify, secure", key)
    word = words[0].lower()
    if word in _REFUSED_LEVELS:
        raise PolicyError(_REFUSED_LEVELS[word], key)
    try:
        level = PolicyLevel(word)
    except ValueError:
        raise PolicyError(
            f"unknown level {words[0]!r}: expected one of none, may, verify, secure", key
        ) from None
    match: tuple[MatchPattern, ...] | None = None
    for attribute in words[1:]:
        name, sep, value = attribute.partition("=")
        if not sep:
            raise PolicyError(f"expected NAME=VALUE after the level, got {attribute!r}", key)
        if name.lower() != "match":
            raise PolicyError(f"unknown attribute {name!r} (only match= is supported)", key)
        if match is not None:
            raise PolicyError("match= given twice: list every pattern in one, with ':'", key)
        match = tuple(_parse_pattern(item, key) for item in value.split(":"))
    if match is not None and level in (PolicyLevel.NONE, PolicyLevel.MAY):
        raise PolicyError(f"match= applies to verify and secure, not {level.value}", key)
    if match is None:
        match = SECURE_DEFAULT_MATCH if level is PolicyLevel.SECURE else ()
    return TlsPolicy(destination, level, match)


def _parse_pattern(item: str, key: str) -> MatchPattern:
    lowered = item.lower()
    if lowered in ("nexthop", "dot-nexthop"):
        return MatchPattern(MatchKind(lowered))
    if not item:
        raise PolicyError("empty match= pattern", key)
    if lowered == "hostname":
        raise PolicyError(
            "match=hostname trusts the MX name from DNS, which a pin exists to distrust: "
            "leave match= out for that (verify)",
            key,
        )
    if "*" in item:
        raise PolicyError(f"{item!r}: use .example.org to match its subdomains", key)
    subdomain = item.startswith(".")
    try:
        name = normalise_domain(item[1:] if subdomain else item)
    except AddressError as exc:
        raise PolicyError(f"match pattern {item!r}: {exc}", key) from None
    return MatchPattern(MatchKind.SUBDOMAIN if subdomain else MatchKind.NAME, name)


class TlsPolicyMap(Mapping[str, TlsPolicy]):
    """The parsed ``[delivery.tls_policy]``, keyed by normalised destination."""

    def __init__(self, policies: Mapping[str, TlsPolicy] | None = None) -> None:
        self._policies = dict(policies or {})

    @classmethod
    def parse(cls, entries: Mapping[str, str]) -> TlsPolicyMap:
        """Every entry parsed, or ``PolicyError`` naming the first bad one."""
        policies: dict[str, TlsPolicy] = {}
        written: dict[str, str] = {}
        for key, text in entries.items():
            policy = parse_policy(key, text)
            if policy.destination in policies:
                raise PolicyError(f"the same destination as {written[policy.destination]!r}", key)
            policies[policy.destination] = policy
            written[policy.destination] = key
        return cls(policies)

    def lookup(self, domain: str) -> TlsPolicy | None:
        """The entry for ``domain``: itself, else the nearest ``.parent`` (Postfix's order)."""
        labels = domain.rstrip(".").lower().split(".")
        keys = [".".join(labels)] + ["." + ".".join(labels[i:]) for i in range(1, len(labels))]
        return next((self._policies[k] for k in keys if k in self._policies), None)

    def __getitem__(self, key: str) -> TlsPolicy:
        return self._policies[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._policies)

    def __len__(self) -> int:
        return len(self._policies)


class PolicyMap(NeutralLink):
    """The ``DeliveryPolicy`` link that applies a ``TlsPolicyMap``.

    ``prepare`` names the destination's entry in the transport facts: ``verify``/
    ``secure`` make the decision ``VERIFIED`` (``tls_policy nhs.net = secure ...`` among
    its reasons); ``none``/``may`` never lower a forced one (the decision cannot; the
    operator is told once per domain). A pinned entry asks for a chain-only handshake
    and accepts the peer only if its certificate names match a pattern: ``verified_by``
    then says which (``pkix:policy-match(.nhs.net)``). A ``none`` entry asks for no
    STARTTLS at all, for mail nothing forces.
    """

    CHECK = "tls-policy"

    def __init__(self, policies: TlsPolicyMap, events: EventSink | None = None) -> None:
        self.policies = policies
        self.events = events or LogSink()
        self._told: set[str] = set()

    async def prepare(self, domain: str, facts: TransportFacts) -> TransportFacts | Refusal:
        policy = self.policies.lookup(domain)
        if policy is None:
            return facts
        entry = f"{policy.destination} = {policy}"
        if not policy.forces and facts.recipient.forced and domain not in self._told:
            self._told.add(domain)
            self.events.emit(
                Lifecycle(
                    f"tls_policy {policy.destination!r} = {str(policy)!r} ignored for "
                    f"{domain}: its mail requires {facts.recipient.label} TLS, kept",
                    warning=True,
                )
            )
        return replace(facts, map_forces=policy.forces, map_entry=entry)

    def handshake(self, domain: str, mx: str, decision: TransportDecision) -> Handshake | None:
        policy = self.policies.lookup(domain)
        if policy is None:
            return None
        if policy.pinned and decision.level.forced:
            return Handshake.PKIX_CHAIN
        if policy.level is PolicyLevel.NONE and not decision.level.forced:
            return Handshake.PLAINTEXT
        return None

    async def check_conn(
        self, domain: str, mx: str, facts: TlsFacts, decision: TransportDecision
    ) -> Accepted | Refusal:
        policy = self.policies.lookup(domain)
        if policy is None or not policy.pinned or not decision.level.forced:
            return Accepted()
        pattern = policy.matching(domain, facts.names)
        if pattern is not None:
            return Accepted(f"pkix:policy-match({pattern.reference(domain)})")
        names = ", ".join(facts.names) or "no verified DNS name"
        return Refusal(
            TlsFailure.CERTIFICATE_HOST_MISMATCH,
            f"the certificate of {facts.peer} names {names}, but the TLS policy for "
            f"{policy.destination} requires match={':'.join(map(str, policy.match))}",
            check=self.CHECK,
        )
