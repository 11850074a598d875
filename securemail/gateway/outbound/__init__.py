"""securemail.gateway.outbound."""
