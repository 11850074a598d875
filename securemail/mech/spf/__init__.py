"""SPF (RFC 7208): a pure record parser and an async ``check_host()`` evaluator.

Why our own: pyspf does blocking DNS through its own resolver, but the gateway checks SPF
on every inbound message on the event loop, through the one configured ``Resolver``. The
domain checker needs the parser alone, to report syntax problems and count lookups. One
module per job:

* ``record`` (pure): the strict parser, ``parse_spf`` into ``SpfRecord`` of ``Term``s,
  and the macro-string grammar;
* ``macros`` (pure): macro expansion for one transaction (``MacroContext``);
* ``names`` (pure): IP normalisation, CIDR matching and domain validity;
* ``evaluate`` (async): ``check_host``/``check_spf``/``check_helo``, with the §4.6.4
  processing limits, through the one ``Resolver``.

The names below are the package's API; importers need not know which module holds them.
"""

from securemail.mech.spf.evaluate import (
    LOOKUP_LIMIT,
    MAX_EXPLANATION,
    MX_LIMIT,
    PTR_LIMIT,
    QUALIFIER_RESULTS,
    TIME_LIMIT,
    VOID_LIMIT,
    SpfResult,
    check_helo,
    check_host,
    check_spf,
)
from securemail.mech.spf.macros import MacroContext, expand_domain, expand_macros
from securemail.mech.spf.names import (
    MAX_DOMAIN_CHARS,
    IPAddress,
    ip_in_network,
    normalise_ip,
    valid_domain,
)
from securemail.mech.spf.record import (
    DNS_MECHANISMS,
    MECHANISMS,
    SpfRecord,
    SpfSyntaxError,
    Term,
    parse_spf,
    select_spf_record,
    spf_records,
)

__all__ = [
    "DNS_MECHANISMS",
    "LOOKUP_LIMIT",
    "MAX_DOMAIN_CHARS",
    "MAX_EXPLANATION",
    "MECHANISMS",
    "MX_LIMIT",
    "PTR_LIMIT",
    "QUALIFIER_RESULTS",
    "TIME_LIMIT",
    "VOID_LIMIT",
    "IPAddress",
    "MacroContext",
    "SpfRecord",
    "SpfResult",
    "SpfSyntaxError",
    "Term",
    "check_helo",
    "check_host",
    "check_spf",
    "expand_domain",
    "expand_macros",
    "ip_in_network",
    "normalise_ip",
    "parse_spf",
    "select_spf_record",
    "spf_records",
    "valid_domain",
]
