"""``securemail queue``: the spool from outside the gateway, at Postfix's level.

``list`` is ``mailq``, ``show`` and ``cat`` are ``postcat`` (with NHS numbers masked
unless revealed, on the record), ``hold``/``release``/``delete`` are ``postsuper -h/-H/-d``
(each an operator decision with a reason, kept in the spool's history and logged by the
gateway), ``flush`` is ``postqueue -f``. Reading commands live in ``view``, decisions in
``actions``, what both need (opening the spool, filters, JSON shapes) in ``shared``.
"""

from __future__ import annotations

import typer

from securemail.cli.queue import actions, view

app = typer.Typer(
    rich_markup_mode=None, help="Inspect and manage the spool (works while the gateway runs)."
)

# Help lists commands in the order they are registered.
app.command("list")(view.queue_list)
app.command("show")(view.queue_show)
app.command("cat")(view.queue_cat)
app.command("hold")(actions.queue_hold)
app.command("release")(actions.queue_release)
app.command("delete")(actions.queue_delete)
app.command("flush")(view.queue_flush)
