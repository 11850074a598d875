"""securemail.gateway.queue."""
