"""securemail.gateway."""
