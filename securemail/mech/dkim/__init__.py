"""DKIM (RFC 6376): sign every outbound message for our domains, verify every inbound one.

The NHS secure email standard requires outgoing mail to be DKIM-signed, and inbound
verdicts feed DMARC and the ``Authentication-Results`` header, so both directions live
in this package and speak the RFC 8601 vocabulary of ``securemail.mech.results``. One
module per job:

* ``keys``: our private keys (generate, write, load) and the one reader of public key
  records (``parse_key_record``), shared with the checker;
* ``sign`` (pure CPU): ``DkimSigner``, byte for byte what dkimpy would write, with
  OpenSSL doing the private-key operation;
* ``verify``: ``verify_dkim``, one verdict per signature, keys fetched through the
  async ``Resolver``;
* ``common``: the one reading of a message in the form dkimpy hashes, which signing and
  verifying must share.

The names below are the package's API; importers need not know which module holds them.
"""

from securemail.mech.dkim.keys import (
    RSA_MIN_BITS,
    DkimError,
    DkimKey,
    KeyProblem,
    KeyRevoked,
    SigningKey,
    dns_record_for,
    generate_key,
    load_keys,
    parse_key_record,
    write_key,
)
from securemail.mech.dkim.sign import SIGNED_HEADERS, DkimSigner
from securemail.mech.dkim.verify import ALGORITHMS, MAX_SIGNATURES, DkimVerdict, verify_dkim

__all__ = [
    "ALGORITHMS",
    "MAX_SIGNATURES",
    "RSA_MIN_BITS",
    "SIGNED_HEADERS",
    "DkimError",
    "DkimKey",
    "DkimSigner",
    "DkimVerdict",
    "KeyProblem",
    "KeyRevoked",
    "SigningKey",
    "dns_record_for",
    "generate_key",
    "load_keys",
    "parse_key_record",
    "verify_dkim",
    "write_key",
]
