"""MX: where the domain's mail goes, whether each host has an address, and reverse DNS.

Lookup (``lookup_mx``: the MX set, every host's A/AAAA, every address's PTR and the
forward lookup of each PTR name) is kept apart from the rules (``evaluate_mx``), which are
pure. A DNS failure is recorded where it happened and becomes an ``mx.dns_error`` (could
not check): never a pass, and never taken to mean the record is absent. A domain that
does not exist at all (NXDOMAIN) gets the one finding ``domain.exists``.

Forward-confirmed reverse DNS (a PTR name whose own addresses include the address) is a
warning only: the standard does not demand it, but many receivers score mail from hosts
without it as spam, and most MX hosts also send.
"""

from __future__ import annotations

import asyncio
import ipaddress
from dataclasses import dataclass, field

from securemail.check.model import Finding, dns_error, failed, passed, warned
from securemail.dns import DnsNotFound, DnsTemporaryError, MxResult, Resolver

MAX_PTR_NAMES = 10

Facts = dict[str, object]


@dataclass(slots=True)
class AddressInfo:
    ip: str
    ptr_names: list[str] = field(default_factory=list)
    confirmed: str = ""  # the PTR name that resolves back to ``ip`` ("" when none)
    error: str = ""  # the PTR (or forward) lookup could not be completed


@dataclass(slots=True)
class HostInfo:
    host: str
    preference: int
    addresses: list[AddressInfo] = field(default_factory=list)
    missing: bool = False  # the host has no A/AAAA (NXDOMAIN or no records)
    error: str = ""  # the address lookup could not be completed


@dataclass(slots=True)
class MxInfo:
    domain: str
    result: MxResult | None = None
    hosts: list[HostInfo] = field(default_factory=list)
    missing: str = ""  # why the domain receives no mail ("" when it has MX or A/AAAA)
    exists: bool = True  # False: the domain name itself is NXDOMAIN
    error: str = ""  # the MX lookup itself could not be completed


# --- lookup (I/O) ----------------------------------------------------------------------


async def lookup_mx(domain: str, resolver: Resolver) -> MxInfo:
    info = MxInfo(domain)
    try:
        info.result = await resolver.mx(domain)
    except DnsTemporaryError as exc:
        info.error = str(exc)
        return info
    except DnsNotFound as exc:
        info.missing = str(exc)
        info.exists = await _exists(domain, resolver)
        return info
    info.hosts = [HostInfo(mx.host, mx.preference) for mx in info.result.hosts]
    await asyncio.gather(*(_lookup_host(host, resolver) for host in info.hosts))
    return info


async def _exists(domain: str, resolver: Resolver) -> bool:
    """False only when the name itself is NXDOMAIN. ``Resolver.mx`` says "not found" for
    NXDOMAIN and for a name with no MX and no address alike; asking for the MX record
    alone tells them apart (only NXDOMAIN raises). Asked on this rare path only, and
    answered from the resolver's cache. A failed lookup here counts as existing: the MX
    findings already say what was (not) found."""
    try:
        await resolver.query(domain, "MX")
    except DnsNotFound:
        return False
    except DnsTemporaryError:
        return True
    return True


async def _lookup_host(host: HostInfo, resolver: Resolver) -> None:
    try:
        ips = await resolver.addresses(host.host)
    except DnsTemporaryError as exc:
        host.error = str(exc)
        return
    except DnsNotFound:
        host.missing = True
        return
    host.addresses = [AddressInfo(ip) for ip in ips]
    await asyncio.gather(*(_lookup_reverse(address, resolver) for address in host.addresses))


async def _lookup_reverse(address: AddressInfo, resolver: Resolver) -> None:
    try:
        address.ptr_names = (await resolver.ptr(address.ip))[:MAX_PTR_NAMES]
    except DnsNotFound:
        return
    except DnsTemporaryError as exc:
        address.error = str(exc)
        return
    forward = await asyncio.gather(
        *(resolver.addresses(name) for name in address.ptr_names), return_exceptions=True
    )
    ip = ipaddress.ip_address(address.ip)
    for name, found in zip(address.ptr_names, forward, strict=True):
        if isinstance(found, list) and ip in {ipaddress.ip_address(a) for a in found}:
            address.confirmed = name
            return
    errors = [f for f in forward if isinstance(f, DnsTemporaryError)]
    if errors:
        address.error = str(errors[0])


# --- rules (pure) ----------------------------------------------------------------------


def evaluate_mx(info: MxInfo) -> list[Finding]:
    if info.error:
        return [_dns_error(f"the MX records of {info.domain}", info.error)]
    if not info.exists:
        return [_no_such_domain(info.domain)]
    if info.missing or info.result is None:
        return [_no_mail(info.domain, info.missing)]
    if info.result.null:
        return [_null_mx(info.domain)]
    findings = [_records(info)]
    for host in info.hosts:
        findings.extend(_host_findings(host))
    return findings


def _records(info: MxInfo) -> Finding:
    if info.result is not None and info.result.implicit:
        return warned(
            "mx.records",
            f"{info.domain} has no MX record; mail goes to its own A/AAAA address (implicit MX)",
            f"Publish an MX record for {info.domain} naming the hosts that receive its mail.",
        )
    names = ", ".join(f"{h.host} ({h.preference})" for h in info.hosts)
    count = len(info.hosts)
    return passed("mx.records", f"{count} MX host{'s' * (count != 1)}: {names}")


def _no_such_domain(domain: str) -> Finding:
    """One finding, not a page: with no domain there is nothing else to fix."""
    return failed(
        "domain.exists",
        f"{domain} does not exist: DNS has no such name (NXDOMAIN)",
        f"Check the spelling of {domain}. If it is right, its registration or DNS "
        "delegation has lapsed: renew it or restore its nameservers.",
    )


def _no_mail(domain: str, why: str) -> Finding:
    return failed(
        "mx.records",
        f"{domain} receives no mail ({why or 'no MX record and no A/AAAA address'})",
        f"Publish MX records for {domain} naming the hosts that receive its mail.",
    )


def _null_mx(domain: str) -> Finding:
    return failed(
        "mx.null",
        f'{domain} publishes a null MX ("0 ."): it explicitly accepts no mail',
        f"If {domain} should receive secure email, replace the null MX with MX records "
        "naming its mail hosts.",
    )


def _host_findings(host: HostInfo) -> list[Finding]:
    if host.error:
        return [_dns_error(f"the addresses of {host.host}", host.error, host.host)]
    if host.missing:
        return [
            failed(
                "mx.addresses",
                f"MX host {host.host} has no A or AAAA record: mail cannot be delivered to it",
                f"Publish A/AAAA records for {host.host}, or remove it from the MX set.",
                host.host,
            )
        ]
    ips = [a.ip for a in host.addresses]
    findings = [passed("mx.addresses", f"{host.host} has {', '.join(ips)}", host.host)]
    findings.extend(_reverse_finding(host.host, address) for address in host.addresses)
    return findings


def _reverse_finding(host: str, address: AddressInfo) -> Finding:
    ip = address.ip
    if address.confirmed:
        return passed("mx.ptr", f"{ip} ({host}) has reverse DNS {address.confirmed}", ip)
    if address.error:
        return _dns_error(f"the reverse DNS of {ip}", address.error, ip)
    fix = (
        f"Ask whoever runs {ip} to publish a PTR record naming a host whose A/AAAA "
        f"record is {ip} (for example {host})."
    )
    if not address.ptr_names:
        return warned("mx.ptr", f"{ip} ({host}) has no reverse DNS (PTR) record", fix, ip)
    names = ", ".join(address.ptr_names)
    return warned(
        "mx.ptr",
        f"{ip} ({host}) has PTR {names}, which does not resolve back to {ip}",
        fix,
        ip,
    )


def _dns_error(what: str, error: str, subject: str = "") -> Finding:
    return dns_error("mx", what, error, subject)


def mx_facts(info: MxInfo) -> Facts:
    result = info.result
    return {
        "mx": [
            {
                "host": h.host,
                "preference": h.preference,
                "addresses": [a.ip for a in h.addresses],
                "ptr": {a.ip: a.confirmed or (a.ptr_names or [""])[0] for a in h.addresses},
            }
            for h in info.hosts
        ],
        "implicit": bool(result and result.implicit),
        "mx_null": bool(result and result.null),
        "mx_dnssec": bool(result and result.dnssec),
        "mx_hosts": [h.host for h in info.hosts],
        "exists": info.exists,
    }


# --- entry point -----------------------------------------------------------------------


async def check_mx(domain: str, resolver: Resolver) -> tuple[list[Finding], Facts]:
    """Findings ``mx.*`` (or the one ``domain.exists``); facts ``mx``, ``implicit``,
    ``mx_null``, ``mx_dnssec``, ``mx_hosts`` and ``exists`` (the last two for the runner,
    which removes them from the report)."""
    info = await lookup_mx(domain.strip().rstrip(".").lower(), resolver)
    return evaluate_mx(info), mx_facts(info)
