"""``securemail config init|check``: create securemail.toml, and show the values in effect.

Values come from a file someone wrote (and from ``SECUREMAIL_*`` variables), so they are
shown through ``common.say`` like any other outside text.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from securemail.cli.common import ConfigOpt, JsonOpt, print_json, say, tell, warn
from securemail.config import Config, default_config_text, find_config, load_config
from securemail.config_checks import Finding, Severity, check_files, describe_service
from securemail.portal import ensure_key

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
    key_file = load_config(path, environ={}).portal.key_file
    if ensure_key(key_file):  # the portal is on in this file: it needs its key
        say(f"wrote {key_file} (the portal's master key, mode 0600)")


@app.command("check")
def config_check(config: ConfigOpt = None, json_out: JsonOpt = False) -> None:
    """Validate the configuration and the files it names; print the values in effect,
    who serve runs as and whether it must be started as root.

    Exit status 2 if anything would stop ``serve`` (or make it run other than
    configured); warnings alone leave it 0.
    """
    cfg = load_config(config)
    findings = [
        *(Finding(Severity.WARNING, "environment", w) for w in cfg.warnings),
        *check_files(cfg),
    ]
    errors = sum(f.severity is Severity.ERROR for f in findings)
    source = find_config(config)
    service = describe_service(cfg)
    if json_out:
        user = service.user
        print_json({
            "config": str(source) if source else None,
            "ok": not errors,
            "values": _config_dict(cfg),
            "service": {
                "user": service.configured,
                "exists": user is not None,
                "uid": user.uid if user else None,
                "gid": user.gid if user else None,
                "root_needed": list(service.root_needed),
            },
            "problems": [dataclasses.asdict(f) for f in findings],
        })  # fmt: skip
    else:
        status = f"{errors} error{'s' * (errors > 1)}" if errors else "OK"
        say(f"{source or 'built-in defaults'}: {status}")
        for section, values in _config_dict(cfg).items():
            for key, value in typing.cast(dict[str, object], values).items():
                say(f"  {section}.{key} = {_toml(value)}")
        say(f"service: {service}")
        for finding in findings:
            if finding.severity is Severity.ERROR:
                tell(("error:", "red"), " ", str(finding))
            else:
                warn(str(finding))
    if errors:
        raise typer.Exit(2)


def _config_dict(cfg: Config) -> dict[str, object]:
    """Each section's values as JSON types: enums as their value, paths as strings."""

    def plain(value: object) -> object:
        if isinstance(value, tuple | list):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, Enum):
            return value.value
        if isinstance(value, Path):
            return str(value)
        return value

    return {
        f.name: {k: plain(v) for k, v in dataclasses.asdict(getattr(cfg, f.name)).items()}
        for f in dataclasses.fields(cfg)
        if f.name not in ("source", "warnings")
    }


def _toml(value: object) -> str:
    """A value as it would be written in securemail.toml, so it can be copied there."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if value is None:
        return '""'  # how the file says "not set"
    return json.dumps(value)  # strings quoted, booleans as true/false
