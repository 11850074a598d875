"""MTA-STS (RFC 8461): a domain's promise that its MX hosts take authenticated TLS.

A sender that honours MTA-STS looks up ``_mta-sts.<domain>``, fetches
``https://mta-sts.<domain>/.well-known/mta-sts.txt`` with a verified certificate and no
redirects, and then (in ``enforce`` mode) delivers only to MX hosts that match one of
the policy's ``mx`` patterns, over TLS with a certificate valid for that host. The
checker asks whether a domain's promise holds; delivery will keep it. Both read records
and policies here, so a policy the checker calls valid is one delivery would enforce.

The steps are separate modules, after Stalwart's ``outbound/mta_sts``:

* ``lookup`` (I/O): the TXT record and the HTTPS fetch, each bounded;
* ``parse`` (pure): the TXT record and the policy file, with every error found;
* ``verify`` (pure): whether an MX host name matches the policy.
"""

from securemail.mech.mta_sts.lookup import (
    MAX_POLICY_BYTES,
    WELL_KNOWN,
    PolicyHostCertificateError,
    fetch_policy,
    lookup_record,
)
from securemail.mech.mta_sts.parse import (
    MAX_MAX_AGE,
    MtaStsError,
    MtaStsPolicy,
    parse_policy,
    parse_txt_record,
)
from securemail.mech.mta_sts.verify import mx_matches, policy_covers

__all__ = [
    "MAX_MAX_AGE",
    "MAX_POLICY_BYTES",
    "WELL_KNOWN",
    "MtaStsError",
    "MtaStsPolicy",
    "PolicyHostCertificateError",
    "fetch_policy",
    "lookup_record",
    "mx_matches",
    "parse_policy",
    "parse_txt_record",
    "policy_covers",
]
