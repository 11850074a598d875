"""securemail.check.rules."""
