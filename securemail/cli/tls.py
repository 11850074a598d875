"""``securemail tls selfsigned``: a certificate so the listeners can offer STARTTLS at once."""

from __future__ import annotations

from typing import Annotated

import typer

from securemail.cli.common import ConfigOpt, say
from securemail.config import load_config

app = typer.Typer(
    rich_markup_mode=None,  # "[section] key" in help texts is text, not markup
    help="The listeners' certificate.",
)


@app.command("selfsigned")
def tls_selfsigned(
    config: ConfigOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing pair.")] = False,
) -> None:
    """Create a self-signed certificate for [organisation] hostname, if none exists."""
    from securemail.tls import write_self_signed

    cfg = load_config(config)
    cert, key = cfg.tls.cert, cfg.tls.key
    if cert.exists() and key.exists() and not force:
        say(f"{cert} exists; kept it")
        return
    write_self_signed(cert, key, cfg.organisation.hostname)
    say(f"wrote {cert} and {key} for {cfg.organisation.hostname}")
