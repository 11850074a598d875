"""securemail.core."""
