"""``securemail config init|check``: create securemail.toml, and show the values in effect.

Values come from a file someone wrote (and from ``SECUREMAIL_*`` variables), so they are
shown through ``common.say`` like any other outside text.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer

from securemail.cli.common import ConfigOpt, JsonOpt, print_json, say
from securemail.config import Config, default_config_text, find_config, load_config

app = typer.Typer(
    rich_markup_mode=None,  # "[section] key" in help texts is text, not markup
    help="Create and check securemail.toml.",
)


@app.command("init")
def config_init(
    path: Annotated[Path, typer.Argument(help="Where to write it.")] = Path("securemail.toml"),
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Write a commented default securemail.toml (kept if it exists)."""
    if path.exists() and not force:
        say(f"{path} exists; kept it (use --force to overwrite)")
        return
    path.write_text(default_config_text(), encoding="utf-8")
    say(f"wrote {path}")


@app.command("check")
def config_check(config: ConfigOpt = None, json_out: JsonOpt = False) -> None:
    """Validate the configuration and print the values in effect."""
    cfg = load_config(config)
    effective = _config_dict(cfg)
    if json_out:
        print_json(effective)
        return
    say(f"{find_config(config) or 'built-in defaults'}: OK")
    for section, values in effective.items():
        if isinstance(values, dict):
            for key, value in values.items():
                say(f"  {section}.{key} = {value!r}")


def _config_dict(cfg: Config) -> dict[str, object]:
    def plain(value: object) -> object:
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        if isinstance(value, Path):
            return str(value)
        return value

    return {
        f.name: {k: plain(v) for k, v in dataclasses.asdict(getattr(cfg, f.name)).items()}
        for f in dataclasses.fields(cfg)
        if f.name != "source"
    }
