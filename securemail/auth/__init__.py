"""Email authentication: DKIM signing and verification, SPF, DMARC, ARC, and the
Authentication-Results header that carries their verdicts (RFC 8601)."""
