"""The Public Suffix List: where one organisation's names end and the next one's begin.

Two decisions rest on it. DMARC alignment (RFC 7489 §3.2) compares *organizational*
domains, the public suffix plus one label. The accredited-list import refuses a
wildcard such as ``*.co.uk`` that would accredit every organisation registered under a
public suffix. Both must read the same list the same way, so the list is loaded once,
here, and shared.

The list is the one shipped by ``publicsuffixlist`` with its ICANN *and* private
sections (RFC 7489 just says "the public suffix list"). The private section makes every
decision stricter, never looser: two customers of a shared hosting suffix
(``alice.github.io``, ``bob.github.io``) are different organizations, so one cannot pass
DMARC for the other's From domain, and ``*.github.io`` cannot be accredited.

Input is expected as ASCII (IDNA A-labels); case and a trailing dot do not matter.
"""

from __future__ import annotations

from functools import cache, lru_cache

from publicsuffixlist import PublicSuffixList


@cache
def _psl() -> PublicSuffixList:
    """The list, read from the package's data file on first use and then kept."""
    return PublicSuffixList(only_icann=False)  # ICANN and private sections: see module doc


@lru_cache(maxsize=4096)
def organizational_domain(domain: str) -> str:
    """The registrable domain (public suffix plus one label, RFC 7489 §3.2), lower case.

    A domain that is itself a public suffix (``gov.uk``), or that the list cannot read,
    is its own organizational domain.
    """
    domain = domain.strip().rstrip(".").lower()
    return _psl().privatesuffix(domain) or domain


def is_public_suffix(domain: str) -> bool:
    """True for a suffix under which the public registers names (``nhs.uk``, ``co.uk``)."""
    return bool(_psl().is_public(domain.strip().rstrip(".").lower()))
