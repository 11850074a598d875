"""What every sub-command shares: options, the consoles, terminal-safe text, JSON lines,
and the one path from an error to one line on stderr and exit status 2.

Most of what the CLI prints was written by someone else: addresses, reasons built from
them, remote servers' replies, EHLO names, organisation names from a CSV, config values.
A terminal obeys escape sequences (``ESC [ 2 J`` clears it, OSC 8 forges links, a CR
overwrites the line before it), and rich would read ``[red]`` as markup. So human
output is built only from ``text``/``say``/``tell``/``plain_line``, each of which passes
every value through ``safe``, and becomes a ``rich.text.Text``, which rich never parses
as markup. ``json_line`` keeps the data exact and escapes the same characters in JSON.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.text import Text

try:  # typer >= 0.22 vendors click; older releases depend on it
    from typer._click import exceptions as click_errors
    from typer._click.utils import echo
except ImportError:  # pragma: no cover
    from click import echo
    from click import exceptions as click_errors

from securemail.errors import SecuremailError

out = Console(highlight=False)
err = Console(stderr=True, highlight=False, soft_wrap=True)

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="Config file (default: $SECUREMAIL_CONFIG, else ./securemail.toml if present).",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output (JSON lines).")]

# A value, or a value and the rich style to show it in (``("sensitive", "bold red")``).
Part = object | tuple[object, str]


# --- terminal safety: the one place ---------------------------------------------------


def _printable(char: str) -> bool:
    """Whether ``char`` may reach a terminal as itself: Python's ``str.isprintable``.

    It refuses C0 and C1 controls (ESC, CR, LF, TAB, NUL, DEL, CSI U+009B...), format
    characters (bidi overrides, zero-width joiners), line and paragraph separators, lone
    surrogates (undecodable input kept by surrogateescape), private-use and unassigned
    code points, and every space but U+0020. There are no exceptions: our own layout
    (table cells, tabs between fields) is added after a value is made safe, never taken
    from it.
    """
    return char.isprintable()


def _visible(char: str) -> str:
    """A refused character as an escape a person can read: ``\\x1b``, ``\\u202e``."""
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # surrogateescape: the undecodable byte itself
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def safe(value: object) -> str:
    """``str(value)`` fit for a terminal: every character ``_printable`` refuses is shown
    as its escape, so nothing from outside can move the cursor, recolour, retitle or
    overwrite what we print. Cheap when there is nothing to escape (one C-level scan),
    which matters when classifying millions of streamed addresses."""
    shown = str(value)
    if shown.isprintable():
        return shown
    return "".join(c if _printable(c) else _visible(c) for c in shown)


def text(*parts: Part) -> Text:
    """One ``Text`` of ``parts``, each made ``safe``; rich never reads it as markup."""
    result = Text()
    for part in parts:
        if isinstance(part, tuple):
            value, style = part
            result.append(safe(value), style)
        else:
            result.append(safe(part))
    return result


def lines(*rows: Text) -> Text:
    """Rows (already ``text``) stacked in one table cell: the only newlines are ours."""
    return Text("\n").join(rows)


def say(*parts: Part) -> None:
    """One line for a person, on stdout."""
    out.print(text(*parts))


def tell(*parts: Part) -> None:
    """One line for a person, on stderr: progress, notes, warnings around the data."""
    err.print(text(*parts))


def warn(*parts: Part) -> None:
    """A problem the user should know about that does not stop the command."""
    tell(("warning:", "yellow"), " ", *parts)


def plain_line(*fields: object, sep: str = "\t") -> str:
    """Fields as one undecorated line (for pipes and zone files), each made ``safe``, so
    a tab or newline inside a value cannot forge a field or a line."""
    return sep.join(safe(field) for field in fields) + "\n"


def _json_escape(char: str) -> str:
    code = ord(char)
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000  # JSON spells a code point beyond the BMP as a UTF-16 surrogate pair
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def json_line(obj: object) -> str:
    """One JSON object on one line, non-ASCII kept readable. json.dumps escapes C0
    controls itself; what it leaves raw and ``_printable`` refuses (C1 controls, bidi
    overrides, lone surrogates...) is escaped too, so the value a program reads back
    is unchanged and the bytes are safe on a terminal and valid UTF-8."""
    line = json.dumps(obj, ensure_ascii=False)
    if not line.isprintable():
        line = "".join(c if _printable(c) else _json_escape(c) for c in line)
    return line + "\n"


def print_json(obj: object) -> None:
    """``json_line(obj)`` on stdout."""
    sys.stdout.write(json_line(obj))


# --- input and running -----------------------------------------------------------------


MAX_STDIN_LINE = 4096  # characters: a domain is 253, an address 254; the rest is junk


def stdin_lines() -> Iterator[str]:
    """Lines of stdin; undecodable bytes survive as lone surrogates (then: invalid).

    A line is at most ``MAX_STDIN_LINE`` characters: the rest of a longer one is read
    and dropped, so one newline-free gigabyte costs a buffer, not a gigabyte (what is
    kept is still reported, as not a domain or address)."""
    stream = open(  # noqa: SIM115 - wraps stdin's own descriptor, which we must not close
        sys.stdin.fileno(), encoding="utf-8", errors="surrogateescape", closefd=False
    )
    with stream:
        while line := stream.readline(MAX_STDIN_LINE):
            if not line.endswith("\n"):
                while (rest := stream.readline(MAX_STDIN_LINE)) and not rest.endswith("\n"):
                    pass
            if line.strip():
                yield line


def run_async(coro: Coroutine[Any, Any, None]) -> None:
    """uvloop when installed (measurably faster TLS and socket handling), else asyncio."""
    import asyncio

    try:
        import uvloop
    except ImportError:  # pragma: no cover
        asyncio.run(coro)
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(coro)


# --- errors: one line, exit status 2 ---------------------------------------------------


def invoke(app: typer.Typer, argv: list[str] | None) -> int:
    """Run ``app``; turn every user error into one line and exit status 2.

    Errors a user can fix (``SecuremailError``, bad usage, unreadable files) end as one
    line on stderr; a traceback means a bug and is shown only with ``SECUREMAIL_DEBUG=1``.
    """
    try:
        rv = app(args=argv, prog_name="securemail", standalone_mode=False)
    except click_errors.NoArgsIsHelpError as exc:
        echo(exc.ctx.get_help() if exc.ctx else str(exc))
        rv = 0
    except click_errors.UsageError as exc:
        command = exc.ctx.command_path if exc.ctx else "securemail"
        fail(f"{command}: {exc.format_message()} (see '{command} --help')")
    except click_errors.ClickException as exc:
        fail(exc.format_message())
    except SecuremailError as exc:
        fail(str(exc))
    except typer.Abort:
        fail("aborted", status=130)
    except KeyboardInterrupt:
        fail("interrupted", status=130)
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): not an error of ours. Point stdout at
        # /dev/null so the interpreter's final flush does not complain.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:
        if os.environ.get("SECUREMAIL_DEBUG"):
            raise
        fail(f"internal error: {exc!r} (a bug; rerun with SECUREMAIL_DEBUG=1 for details)", 1)
    return rv if isinstance(rv, int) else 0


def fail(message: str, status: int = 2) -> NoReturn:
    """The one way out on an error: the message, made ``safe`` (it often quotes what the
    user typed or a file held), as one line on stderr."""
    sys.stdout.flush()
    print(f"securemail: error: {safe(message)}", file=sys.stderr)
    raise SystemExit(status)


def plural(count: int, noun: str) -> str:
    """``1 recipient``, ``2 recipients``: a person reads these lines (a script, --json)."""
    return f"{count} {noun}{'' if count == 1 else 's'}"
