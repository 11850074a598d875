"""securemail.gateway.inbound."""
