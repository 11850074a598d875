"""Where a domain's mail goes: its MX hosts (RFC 5321 §5.1), or our internal server.

Mail for our own domains goes to the internal mail server named in ``[inbound]
deliver_to``, by address, whatever DNS says. Anything else follows the MX records in
preference order; a domain without MX records is its own (implicit) MX, and a null MX
(RFC 7505) means the domain accepts no mail, which is permanent.
"""

from __future__ import annotations

from dataclasses import dataclass

from securemail.dns import DnsNotFound, Resolver


@dataclass(frozen=True, slots=True)
class Route:
    """Where to connect: (host name used for TLS verification, port)."""

    hosts: tuple[str, ...]
    port: int
    literal_ip: str | None = None  # for the internal server given as IP:port


class Router:
    def __init__(
        self, resolver: Resolver, *, port: int, internal: dict[str, tuple[str, int]] | None = None
    ) -> None:
        self.resolver = resolver
        self.port = port
        self.internal = internal or {}

    async def route(self, domain: str) -> Route:
        """Raises DnsError subclasses; DnsNotFound / null MX are permanent."""
        if domain in self.internal:
            ip, port = self.internal[domain]
            return Route((ip,), port, literal_ip=ip)
        mx = await self.resolver.mx(domain)
        if mx.null:
            raise DnsNotFound(f"{domain} accepts no mail (null MX, RFC 7505)")
        return Route(tuple(h.host for h in mx.hosts), self.port)

    async def addresses(self, route: Route, host: str) -> list[str]:
        """The addresses to try for one of the route's hosts; raises DnsError."""
        return [route.literal_ip] if route.literal_ip else await self.resolver.addresses(host)
