"""``securemail dkim keygen|show-record``: our signing keys and the TXT records to publish.

The record goes to stdout alone, in zone-file form, so it can be piped into a zone;
everything else (where the key went, hints) goes to stderr.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from securemail.cli.common import ConfigOpt, plain_line, tell
from securemail.config import load_config
from securemail.errors import InputError

app = typer.Typer(
    rich_markup_mode=None,  # "[section] key" in help texts is text, not markup
    help="DKIM signing keys for our domains.",
)


@app.command("keygen")
def dkim_keygen(
    domain: Annotated[str, typer.Argument(help="The signing domain (d=).")],
    selector: Annotated[str, typer.Argument(help="The selector (s=), e.g. s1 or 2026q4.")],
    algorithm: Annotated[
        str, typer.Option("--algorithm", "-a", help="rsa (2048-bit, the norm) or ed25519.")
    ] = "rsa",
    bits: Annotated[int, typer.Option("--bits", help="RSA key size.")] = 2048,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing key.")] = False,
    config: ConfigOpt = None,
) -> None:
    """Create a signing key (mode 0600) and print the DNS TXT record to publish."""
    from securemail.mech.dkim import generate_key, write_key

    cfg = load_config(config)
    pem, record = generate_key(algorithm, bits)
    path = write_key(cfg.dkim.key_dir, domain, selector, pem, overwrite=force)
    tell(f"wrote {path} (mode 0600)")
    _print_record(domain, selector, record)
    if selector != cfg.dkim.selector:
        tell(
            f"note: [dkim] selector is {cfg.dkim.selector!r}; "
            f"set it to {selector!r} to sign with this key"
        )


@app.command("show-record")
def dkim_show_record(
    domain: Annotated[str, typer.Argument(help="The signing domain.")],
    selector: Annotated[
        str | None, typer.Argument(help="The selector (default: [dkim] selector).")
    ] = None,
    config: ConfigOpt = None,
) -> None:
    """Print the DNS TXT record for an existing key."""
    from securemail.mech.dkim import dns_record_for

    cfg = load_config(config)
    selector = selector or cfg.dkim.selector
    path = cfg.dkim.key_dir / domain.lower().rstrip(".") / f"{selector}.pem"
    try:
        pem = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: no such key (create it with 'securemail dkim keygen')") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror}") from None
    _print_record(domain, selector, dns_record_for(pem))


def _print_record(domain: str, selector: str, record: str) -> None:
    """Zone-file form, the TXT value split into 255-byte strings as DNS requires."""
    chunks = " ".join(f'"{record[i : i + 255]}"' for i in range(0, len(record), 255))
    name = f"{selector}._domainkey.{domain.lower().rstrip('.')}."
    sys.stdout.write(plain_line(name, "IN TXT (", chunks, ")", sep=" "))
