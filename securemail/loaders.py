"""Config → the pure decision objects, with the I/O they need done here, once.

``core/`` never imports the config or touches the disk; the CLI and the gateway both build
their classifier and policy through these functions, so ``securemail classify`` /
``policy explain`` and the running gateway can never be configured differently.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from pathlib import Path

from securemail.accredited_store import load_accredited
from securemail.config import Config
from securemail.core.classify import Classifier
from securemail.core.policy import Policy
from securemail.core.rules import Audience


def classifier_from_config(
    config: Config,
    *,
    clock: Callable[[], date] = date.today,
    audience: Audience | None = None,
    accredited: Path | None = None,
    on_missing: Callable[[Path], None] | None = None,
) -> Classifier:
    """The classifier the config describes; ``audience``/``accredited`` override it.

    The one place that reads the accredited list. A configured list that does not exist
    yet is reported through ``on_missing``; an explicitly given one that does not exist is
    an error (``load_accredited`` raises). The list is loaded with today's date only to
    report entries already expired at import; expiry itself is judged by the classifier
    against ``clock()`` on every decision.
    """
    path = accredited or config.policy.accredited_list
    listed = None
    if path is not None:
        if accredited is None and not path.exists():
            if on_missing is not None:
                on_missing(path)
        else:
            listed = load_accredited(path, today=clock())
    return Classifier(
        audience or config.organisation.audience,
        clock=clock,
        accredited=listed,
        secure_domains=config.policy.secure_domains,
        deny_domains=config.policy.deny_domains,
    )


def policy_from_config(config: Config) -> Policy:
    return Policy.of(
        config.organisation.domains,
        config.policy.unknown_sensitive_action,
        config.policy.unscannable,
    )
