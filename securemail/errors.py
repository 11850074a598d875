"""Exceptions a user can act on.

Every error that reaches the command line as a ``SecuremailError`` is printed as one
line and exits with status 2; anything else is a bug. Keeping the hierarchy small lets
the CLI draw that line in exactly one place.
"""


class SecuremailError(Exception):
    """A problem with the user's input, files or configuration (not a bug)."""


class ConfigError(SecuremailError):
    """The configuration file or an environment override is invalid."""


class InputError(SecuremailError):
    """A file or value given on the command line cannot be used."""


class AccreditedListError(InputError):
    """The accredited-organisations CSV cannot be imported."""
