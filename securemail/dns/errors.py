"""The three ways a lookup fails, shared by the resolver and its wire client."""

from __future__ import annotations


class DnsError(Exception):
    """A DNS lookup failed; ``str(err)`` is one line naming the query and the reason."""


class DnsTemporaryError(DnsError):
    """SERVFAIL, REFUSED, timeout or no nameserver answered: try again later."""


class DnsNotFound(DnsError):
    """The name does not exist (NXDOMAIN), or has no record that could be used."""
