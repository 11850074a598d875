"""``[relay] networks`` as one object: is this client address one of ours?

Four stages ask it (relay permission, inbound verification, connection limits, the
pregreet pause), so the networks are parsed once and the question has one answer. A
peer that is not an IP address is never one of ours: the safe side for every caller.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable


class Networks:
    def __init__(self, networks: Iterable[str] = ()) -> None:
        self.networks = tuple(ipaddress.ip_network(n) for n in networks)

    def __contains__(self, ip: object) -> bool:
        try:
            address = ipaddress.ip_address(str(ip))
        except ValueError:
            return False
        return any(address in network for network in self.networks)
