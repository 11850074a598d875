"""``[relay] networks`` as one object: is this client address one of ours?

Four stages ask it (relay permission, inbound verification, connection limits, the
pregreet pause), so the networks are parsed once and the question has one answer. A
peer that is not an IP address is never one of ours: the safe side for every caller.

They ask it five or six times per message, for the same client; each answer costs
3-6 µs of ``ipaddress`` parsing, so the answers for the last ``KEPT`` addresses are
kept (then all are forgotten at once: the memory stays bounded whoever connects).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

KEPT = 4096


class Networks:
    def __init__(self, networks: Iterable[str] = ()) -> None:
        self.networks = tuple(ipaddress.ip_network(n) for n in networks)
        self._known: dict[str, bool] = {}

    def __contains__(self, ip: object) -> bool:
        text = str(ip)
        known = self._known.get(text)
        if known is None:
            if len(self._known) >= KEPT:
                self._known.clear()
            known = self._known[text] = self._match(text)
        return known

    def _match(self, text: str) -> bool:
        try:
            address = ipaddress.ip_address(text)
        except ValueError:
            return False
        return any(address in network for network in self.networks)
