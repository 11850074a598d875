"""securemail.mech."""
