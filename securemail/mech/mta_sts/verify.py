"""MTA-STS verification (pure): may mail go to this MX host under this policy? (§4.1)

A wildcard covers exactly one label, as Stalwart's ``verify`` has it: ``*.example.com``
matches ``mx1.example.com`` but neither ``example.com`` nor ``a.b.example.com``, and
matching is anchored at both ends, so ``mail.example.com.attacker.net`` never matches
``mail.example.com`` (the overmatch STYLE.md records in checkdmarc).
"""

from __future__ import annotations

from securemail.mech.mta_sts.parse import MtaStsPolicy


def mx_matches(pattern: str, host: str) -> bool:
    """Does ``host`` match the policy ``mx`` pattern? ``*.`` stands for exactly one label."""
    pattern = pattern.strip().rstrip(".").lower()
    host = host.strip().rstrip(".").lower()
    if not pattern or not host:
        return False
    if pattern.startswith("*."):
        suffix = pattern[2:]
        label, dot, rest = host.partition(".")
        return bool(suffix) and "*" not in suffix and bool(label and dot) and rest == suffix
    return "*" not in pattern and pattern == host


def policy_covers(policy: MtaStsPolicy, host: str) -> bool:
    """True when one of the policy's ``mx`` patterns matches ``host``.

    Whether a miss matters is the caller's to decide from ``policy.mode``: ``enforce``
    refuses the host, ``testing`` only reports it, ``none`` withdraws the policy.
    """
    return any(mx_matches(pattern, host) for pattern in policy.mx)
