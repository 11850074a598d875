"""MTA-STS (RFC 8461) rules: is the domain's policy published, servable, valid, covering?

An MX host the policy does not cover is a host that careful senders will refuse, and a
policy that cannot be fetched is no policy at all, so each is its own finding. The
protocol itself (record and policy parsing, the verified fetch, MX matching) lives in
``securemail.mech.mta_sts``, shared with delivery; this module only turns what it finds
into ``mta_sts.*`` findings. ``_evaluate`` is pure.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from securemail.check.model import Finding, dns_error, failed, passed, unknown, warned
from securemail.dns import DnsError, DnsNotFound, Resolver
from securemail.mech.mta_sts import (
    WELL_KNOWN,
    MtaStsError,
    MtaStsPolicy,
    lookup_record,
    parse_policy,
    parse_txt_record,
    policy_covers,
)
from securemail.mech.mta_sts.lookup import PolicyClient, PolicyTimeoutError

MIN_GOOD_MAX_AGE = 86_400


def policy_client(
    resolver: Resolver, *, ca_file: Path | None = None, timeout: float = 10.0,
    max_connections: int = 100,
) -> PolicyClient:  # fmt: skip
    """The client policies are fetched with: policy hosts found through ``resolver``.
    A run of many checks shares one (``Checker``), sized to the domains in flight."""

    async def resolve(host: str) -> str:
        return (await resolver.addresses(host))[0]

    return PolicyClient(
        ca_file=ca_file, timeout=timeout, resolve=resolve, max_connections=max_connections
    )


async def check_mta_sts(
    domain: str,
    resolver: Resolver,
    mx_hosts: Sequence[str],
    *,
    https_port: int = 443,
    ca_file: Path | None = None,
    timeout: float = 10.0,
    client: PolicyClient | None = None,
) -> tuple[list[Finding], dict[str, object]]:
    """Findings for the MTA-STS record and policy, and the facts behind them.

    ``client`` is a run's ``policy_client`` (its ``ca_file`` and ``timeout`` apply);
    without one, a client is made for this check and closed after it."""
    if client is None:
        async with policy_client(resolver, ca_file=ca_file, timeout=timeout) as own:
            return await check_mta_sts(domain, resolver, mx_hosts, https_port=https_port,
                                       client=own)  # fmt: skip
    domain = domain.rstrip(".").lower()
    facts: dict[str, object] = {"id": None}
    out = {"mta_sts": facts}
    fix_publish = (
        "Publish a _mta-sts TXT record (v=STSv1; id=...) and a policy at "
        f"https://mta-sts.{domain}/.well-known/mta-sts.txt; UK government guidance "
        "recommends MTA-STS so senders insist on authenticated TLS"
    )
    try:
        records = await lookup_record(domain, resolver)
    except DnsError as exc:
        return [dns_error("mta_sts", f"_mta-sts.{domain}", str(exc))], out
    record_id, problem = parse_txt_record(records)
    facts["txt"] = [r for r in records if r.startswith("v=STS")]
    if record_id is None:
        if not problem:
            return [warned("mta_sts.record", "no _mta-sts TXT record", fix_publish)], out
        fix = "Publish exactly one record: v=STSv1; id=<1-32 letters and digits>"
        return [failed("mta_sts.record", f"_mta-sts.{domain}: {problem}", fix)], out
    facts["id"] = record_id
    findings = [passed("mta_sts.record", f"_mta-sts.{domain}: v=STSv1, id={record_id}")]

    text, reason = "", ""
    try:
        text = await client.fetch(domain, https_port=https_port)
    except PolicyTimeoutError as exc:  # no answer is no finding: could not check
        fix = "Retry later; if it persists, make sure the policy host answers HTTPS promptly."
        return [*findings, unknown("mta_sts.policy_fetch", str(exc), fix)], out
    except (DnsNotFound, MtaStsError) as exc:
        reason = str(exc)
    except DnsError as exc:
        return [*findings, dns_error("mta_sts", f"mta-sts.{domain}", str(exc))], out
    if reason:
        fix = (
            f"Serve the policy at https://mta-sts.{domain}{WELL_KNOWN} with HTTP 200, "
            "Content-Type text/plain, no redirect and a valid public certificate for "
            f"mta-sts.{domain}; until then senders ignore the policy"
        )
        return [*findings, failed("mta_sts.policy_fetch", reason, fix)], out
    facts["policy"] = text
    findings.append(passed("mta_sts.policy_fetch", f"policy fetched from mta-sts.{domain}"))
    try:
        policy = parse_policy(text)
    except MtaStsError as exc:
        fix = "Correct the policy file (RFC 8461 §3.2); senders ignore an invalid policy"
        return [*findings, failed("mta_sts.policy_syntax", str(exc), fix)], out
    facts.update(mode=policy.mode, mx=list(policy.mx), max_age=policy.max_age)
    findings += [
        warned("mta_sts.policy_syntax", w, "Tidy the policy file") for w in policy.warnings
    ] or [passed("mta_sts.policy_syntax", "policy is valid")]
    findings += _evaluate(policy, mx_hosts)
    return findings, out


def _evaluate(policy: MtaStsPolicy, mx_hosts: Sequence[str]) -> list[Finding]:
    fix_mode = "Once TLS-RPT reports are clean, set 'mode: enforce'"
    if policy.mode == "enforce":
        findings = [passed("mta_sts.mode", "mode is enforce")]
    elif policy.mode == "testing":
        findings = [warned("mta_sts.mode", "mode is testing: not enforced", fix_mode)]
    else:
        findings = [warned("mta_sts.mode", "mode is none: the policy is withdrawn", fix_mode)]
    if policy.mode != "none":
        missing = [host for host in mx_hosts if not policy_covers(policy, host)]
        for host in missing:
            message = f"MX host {host} not covered by the policy's mx patterns"
            fix = f"Add 'mx: {host}' (or a matching *.domain pattern) to the policy"
            if policy.mode == "enforce":
                message += ": senders enforcing the policy will refuse to deliver to it"
                findings.append(failed("mta_sts.mx_coverage", message, fix, host))
            else:
                message += ": senders will refuse it once the mode is enforce"
                findings.append(warned("mta_sts.mx_coverage", message, fix, host))
        if mx_hosts and not missing:
            findings.append(passed("mta_sts.mx_coverage", "every MX host matches the policy"))
    if policy.max_age < MIN_GOOD_MAX_AGE:
        message = f"max_age {policy.max_age} s is too short to protect"
        fix = "Set max_age to at least 604800 (a week); 31557600 is common"
        findings.append(warned("mta_sts.max_age", message, fix))
    else:
        findings.append(passed("mta_sts.max_age", f"max_age {policy.max_age} s"))
    return findings
