"""securemail: a secure email gateway and assurance toolkit for the NHS secure email
standard (DCB1596 / SCCI1596)."""

__version__ = "0.1.0"
