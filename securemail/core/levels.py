"""Ordered security levels and the typed reasons a TLS requirement could not be met.

Postfix orders its TLS levels as integers (``tls.h``: NONE < MAY < ENCRYPT < … < DANE <
VERIFY < SECURE) and maddy does the same (``TLSNone < TLSEncrypted < TLSAuthenticated``),
so "at least" is a comparison and a policy chain can only raise the bar. ``TlsLevel``
crosses every seam from the decision to the wire (policy → spool → queue → delivery) as
this enum, stored NOT NULL: a string there once made "released" mean "opportunistic".

``TlsFailure`` carries RFC 8460 §4.3 result types, so a failed delivery says *why* in the
vocabulary TLS-RPT reports use, not as a bare boolean.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum


class TlsLevel(IntEnum):
    """What a delivery to a recipient's servers must achieve (higher is stricter).

    ``NONE`` is for recipients nothing is sent to (refused); it never reaches delivery.
    ``VERIFIED`` is the SCCI1596 forced TLS: STARTTLS, and a certificate that chains to a
    trusted root and names the MX host (or a name pinned by the operator). ``MTA_STS`` and
    ``DANE`` are set by the delivery policy chain when the destination publishes them.
    """

    NONE = 0
    OPPORTUNISTIC = 1  # STARTTLS when offered, any certificate; else plain text
    VERIFIED = 2  # STARTTLS with a verified certificate, or defer
    MTA_STS = 3  # VERIFIED, and the MX must match the domain's enforced MTA-STS policy
    DANE = 4  # the certificate must match the MX host's DNSSEC-signed TLSA records

    @property
    def label(self) -> str:
        return self.name.lower().replace("_", "-")

    @property
    def forced(self) -> bool:
        """Plain text is never acceptable at this level."""
        return self >= TlsLevel.VERIFIED

    @classmethod
    def from_label(cls, label: str) -> TlsLevel:
        """The inverse of ``label``; the legacy ``required`` means ``VERIFIED``."""
        if label == "required":
            return cls.VERIFIED
        return cls[label.upper().replace("-", "_")]


class TlsFailure(StrEnum):
    """Why a TLS requirement was not met: RFC 8460 §4.3 result types."""

    STARTTLS_NOT_SUPPORTED = "starttls-not-supported"
    CERTIFICATE_HOST_MISMATCH = "certificate-host-mismatch"
    CERTIFICATE_EXPIRED = "certificate-expired"
    CERTIFICATE_NOT_TRUSTED = "certificate-not-trusted"
    VALIDATION_FAILURE = "validation-failure"  # any other handshake or policy failure
    TLSA_INVALID = "tlsa-invalid"
    DNSSEC_INVALID = "dnssec-invalid"
    DANE_REQUIRED = "dane-required"
    STS_POLICY_FETCH_ERROR = "sts-policy-fetch-error"
    STS_POLICY_INVALID = "sts-policy-invalid"
    STS_WEBPKI_INVALID = "sts-webpki-invalid"
