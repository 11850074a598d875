"""Realistic zones for the checker benchmark, the same on every run for a given seed.

Domains are ``dNNNNNN.example``. Most (80 %) use one of five shared mail providers, the
way most organisations use Microsoft 365 or Google: MX ``mx1``/``mx2.providerP.example``,
SPF ``include:_spf.providerP.example`` which itself includes ``_netblocks.providerP.
example``, and DKIM selectors ``s1``/``s2`` published as CNAMEs to the provider's keys
(``s1._domainkey.dN`` → ``s1.dkim.providerP.example``, a real 2048-bit RSA key). The others
run their own MX host (``mx.dN.example``) and publish their own key at selector
``s2026`` (the one given to the checker in ``[check] selectors``). Every healthy domain
has DMARC ``p=reject`` (or quarantine) with reports to itself, MTA-STS (the TXT record,
``mta-sts.dN`` and a policy in enforce mode naming exactly its MX hosts), TLS-RPT, and
no DANE (optional for the checker: not published is a pass). 2 % also carry the
site-verification tokens real apexes collect, which push their TXT answer over 1,232 bytes
(so the checker meets truncation and TCP). Every host resolves to 127.0.0.1, whose PTR
names a host that resolves back to it.

One domain in every twenty is *dead*: its nameservers never answer, for any name under
it. Healthy workloads take the live domains only (``healthy_domains``); the dead
workload takes every domain in order (``mixed_domains``: 5 % dead).

Each domain is decided by a hash of (seed, index), so any process (the DNS server, the
HTTPS server serving MTA-STS policies) can compute any domain's layout without building
the others. ``python bench/check_zones.py serve COUNT SEED`` runs the DNS server.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

PROVIDERS = 5
OWN_MX_SHARE = 0.2
BIG_TXT_SHARE = 0.02
DEAD_EVERY = 20  # one domain in twenty is dead (the dead workload's 5 %)
OWN_SELECTOR = "s2026"  # configured in [check] selectors
PROVIDER_SELECTORS = ("s1", "s2")  # CNAMEd to the provider's keys
DKIM_KEYS = 4  # real 2048-bit keys, shared out among providers and domains
HOST_IP = "127.0.0.1"
MAX_AGE = 604800
_MASK = (1 << 64) - 1


class ZoneSink(Protocol):
    """What the records are written into (``dns_fast.Zone``)."""

    def add(self, name: str, rtype: str, values: Iterable[str]) -> None: ...
    def apex(self, name: str) -> None: ...
    def dead(self, name: str) -> None: ...


@dataclass(frozen=True, slots=True)
class DomainSpec:
    index: int
    name: str
    dead: bool
    provider: int | None  # the shared MX provider; None: its own MX host
    mx_hosts: tuple[str, ...]
    spf: str
    dmarc: str
    big_txt: bool


def domain_name(index: int) -> str:
    return f"d{index:06d}.example"


def domain_index(name: str) -> int | None:
    """The index of ``dNNNNNN.example`` (or of a name under it), None for other names."""
    labels = name.lower().rstrip(".").split(".")
    if len(labels) < 2 or labels[-1] != "example" or not labels[-2].startswith("d"):
        return None
    digits = labels[-2][1:]
    return int(digits) if digits.isdigit() else None


def _roll(seed: int, index: int, salt: int) -> float:
    """A uniform [0, 1) from (seed, index, salt): splitmix64, cheap and the same everywhere."""
    x = (seed * 0x9E3779B97F4A7C15 + index * 0xBF58476D1CE4E5B9 + salt * 0x94D049BB133111EB) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return (x ^ (x >> 31)) / 2.0**64


def spec(index: int, seed: int) -> DomainSpec:
    name = domain_name(index)
    dead = (index + seed) % DEAD_EVERY == 0
    own = _roll(seed, index, 1) < OWN_MX_SHARE
    provider = int(_roll(seed, index, 2) * PROVIDERS)
    other = (provider + 1 + int(_roll(seed, index, 3) * (PROVIDERS - 1))) % PROVIDERS
    flavour = _roll(seed, index, 4)
    if own:
        mx_hosts: tuple[str, ...] = (f"mx.{name}",)
        spf = f"v=spf1 mx ip4:192.0.2.{index % 256} include:_spf.provider{provider}.example -all"
    else:
        mx_hosts = (f"mx1.provider{provider}.example", f"mx2.provider{provider}.example")
        if flavour < 0.5:
            spf = f"v=spf1 include:_spf.provider{provider}.example -all"
        elif flavour < 0.8:
            spf = f"v=spf1 mx include:_spf.provider{provider}.example ~all"
        else:
            spf = (
                f"v=spf1 ip4:192.0.2.{index % 256} include:_spf.provider{provider}.example "
                f"include:_spf.provider{other}.example -all"
            )
    rua = f"rua=mailto:dmarc-reports@{name}"
    if flavour < 0.6:
        dmarc = f"v=DMARC1; p=reject; {rua}"
    elif flavour < 0.85:
        ruf = f"ruf=mailto:dmarc-forensic@{name}; fo=1"
        dmarc = f"v=DMARC1; p=reject; sp=reject; adkim=s; aspf=s; {rua}; {ruf}"
    else:
        dmarc = f"v=DMARC1; p=quarantine; {rua}"
    return DomainSpec(
        index, name, dead, None if own else provider, mx_hosts, spf, dmarc,
        big_txt=_roll(seed, index, 5) < BIG_TXT_SHARE,
    )  # fmt: skip


def healthy_domains(count: int, seed: int) -> list[str]:
    """The first ``count`` live domains."""
    names: list[str] = []
    index = 0
    while len(names) < count:
        if not spec(index, seed).dead:
            names.append(domain_name(index))
        index += 1
    return names


def mixed_domains(count: int) -> list[str]:
    """The first ``count`` domains, dead ones included (one in ``DEAD_EVERY``)."""
    return [domain_name(i) for i in range(count)]


def zone_size(healthy: int, mixed: int, seed: int) -> int:
    """How many domains the zones must hold for both workloads."""
    last = domain_index(healthy_domains(healthy, seed)[-1]) if healthy else -1
    return max(mixed, (last or 0) + 1)


def mta_sts_policy(item: DomainSpec) -> str:
    mx = "".join(f"mx: {host}\r\n" for host in item.mx_hosts)
    return f"version: STSv1\r\nmode: enforce\r\n{mx}max_age: {MAX_AGE}\r\n"


def dkim_keys(count: int = DKIM_KEYS) -> list[str]:
    """Key records (``v=DKIM1; k=rsa; p=...``) of ``count`` fresh 2048-bit keys."""
    from securemail.mech.dkim import generate_key

    return [generate_key("rsa", 2048)[1] for _ in range(count)]


def populate(zone: ZoneSink, count: int, seed: int, keys: list[str]) -> None:
    """Write the shared infrastructure and ``count`` domains into ``zone``."""
    for apex in ("example", "dns.example", "127.in-addr.arpa"):
        zone.apex(apex)
    for host in ("ns1.dns.example", "ns2.dns.example"):
        zone.add(host, "A", [HOST_IP])
    zone.add("1.0.0.127.in-addr.arpa", "PTR", ["mx1.provider0.example."])
    for p in range(PROVIDERS):
        provider = f"provider{p}.example"
        zone.apex(provider)
        for host in ("mx1", "mx2"):
            zone.add(f"{host}.{provider}", "A", [HOST_IP])
        zone.add(
            f"_spf.{provider}", "TXT",
            [f"v=spf1 ip4:198.51.100.{16 * p}/28 include:_netblocks.{provider} ~all"],
        )  # fmt: skip
        zone.add(
            f"_netblocks.{provider}", "TXT",
            [f"v=spf1 ip4:203.0.113.0/24 ip6:2001:db8:{p}::/48 ~all"],
        )  # fmt: skip
        for n, selector in enumerate(PROVIDER_SELECTORS):
            zone.add(f"{selector}.dkim.{provider}", "TXT", [keys[(p + n) % len(keys)]])
    for index in range(count):
        _domain(zone, spec(index, seed), keys)


def _domain(zone: ZoneSink, item: DomainSpec, keys: list[str]) -> None:
    name = item.name
    if item.dead:
        zone.dead(name)
        return
    zone.apex(name)
    zone.add(name, "MX", [f"{10 * (n + 1)} {host}." for n, host in enumerate(item.mx_hosts)])
    txt = [item.spf]
    if item.big_txt:
        txt += [_token(kind, item.index, n) for n in range(4) for kind in _TOKENS]
    zone.add(name, "TXT", txt)
    zone.add(f"_dmarc.{name}", "TXT", [item.dmarc])
    if item.provider is None:
        zone.add(f"mx.{name}", "A", [HOST_IP])
        zone.add(f"{OWN_SELECTOR}._domainkey.{name}", "TXT", [keys[item.index % len(keys)]])
    else:
        for selector in PROVIDER_SELECTORS:
            target = f"{selector}.dkim.provider{item.provider}.example."
            zone.add(f"{selector}._domainkey.{name}", "CNAME", [target])
    zone.add(f"_mta-sts.{name}", "TXT", [f"v=STSv1; id=2026{item.index % 9973:04d}"])
    zone.add(f"mta-sts.{name}", "A", [HOST_IP])
    zone.add(f"_smtp._tls.{name}", "TXT", [f"v=TLSRPTv1; rua=mailto:tls-reports@{name}"])


_TOKENS = (
    "google-site-verification=",
    "MS=ms",
    "facebook-domain-verification=",
    "atlassian-domain-verification=",
)


def _token(kind: str, index: int, n: int) -> str:
    tail = f"{index:06d}{n}{len(kind):02d}".ljust(43, "x")
    return kind + tail


# --- the DNS server process --------------------------------------------------------------


def serve(count: int, seed: int) -> None:
    """Build the zones, report, and serve until stdin closes (see ``helper_process``)."""
    from dns_fast import FastDnsServer, Zone
    from helper_process import peak_rss_mb, serve_control

    start = time.perf_counter()
    keys = dkim_keys()
    zone = Zone()
    populate(zone, count, seed, keys)
    zone.finish()
    built = time.perf_counter() - start
    server = FastDnsServer(zone).start()

    def stats() -> dict[str, object]:
        return {
            "queries": server.queries,
            "dropped": server.dropped,
            "kernel_drops": server.kernel_drops(),
            "udp_cpu": server.udp_cpu(),
            "cpu": time.process_time(),
        }

    serve_control(
        {
            "host": server.host, "port": server.port, "domains": count, "rrsets": zone.rrsets,
            "answers": zone.answers, "build_s": round(built, 2), "rss_mb": peak_rss_mb(),
        },
        stats,
    )  # fmt: skip


if __name__ == "__main__":
    if sys.argv[1:2] != ["serve"] or len(sys.argv) != 4:
        sys.exit("usage: check_zones.py serve COUNT SEED")
    serve(int(sys.argv[2]), int(sys.argv[3]))
