"""MTA-STS parsing (pure): the ``_mta-sts`` TXT record (§3.1) and the policy file (§3.2).

The policy parser reports every error it finds, each with its line ("line 3: duplicate
'mode' (first on line 2)"), because a person fixing a policy wants the whole list at
once; a sender only needs to know the policy is unusable (``MtaStsError``). What RFC
8461 tolerates (unknown fields, a blank line, an ``mx`` with a trailing dot) is kept as
a warning on the policy, not an error.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

MAX_MAX_AGE = 31_557_600  # RFC 8461 §3.2: about one year

_RECORD = re.compile(r"v=STSv1(?:[ \t;]|$)")
_TXT_FIELD = re.compile(r"([A-Za-z0-9][A-Za-z0-9_.-]{0,31})=([\x21-\x3a\x3c\x3e-\x7e]+)")
_ID = re.compile(r"[A-Za-z0-9]{1,32}")
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_MAX_AGE = re.compile(r"[0-9]{1,10}")
_MODES = ("enforce", "testing", "none")
_KNOWN = ("version", "mode", "mx", "max_age")


class MtaStsError(ValueError):
    """A record or policy is unusable, or the policy could not be fetched (one line)."""


@dataclass(frozen=True, slots=True)
class MtaStsPolicy:
    version: str
    mode: str  # "enforce" | "testing" | "none"
    mx: tuple[str, ...]  # patterns as written: "mx1.example.org", "*.example.org"
    max_age: int  # seconds
    warnings: tuple[str, ...]  # what RFC 8461 tolerates, one "line N: ..." each


def parse_txt_record(txt: Sequence[str]) -> tuple[str | None, str]:
    """``(id, "")`` for one valid record; ``(None, problem)``; ``(None, "")`` for none at all.

    Records not starting with ``v=STSv1`` are not MTA-STS records and are ignored (§3.1).
    """
    records = [t for t in txt if _RECORD.match(t)]
    if not records:
        return None, ""
    if len(records) > 1:
        return None, f"{len(records)} v=STSv1 records (there must be exactly one)"
    fields = re.split(r"[ \t]*;[ \t]*", records[0].strip(" \t"))
    if fields[-1] == "":
        fields.pop()  # one trailing ";" is allowed
    found: dict[str, str] = {}
    for field in fields[1:]:
        match = _TXT_FIELD.fullmatch(field)
        if match is None:
            return None, f"malformed field {field!r} (expected name=value; separated by ';')"
        name, value = match.groups()
        if name in found:
            return None, f"duplicate field {name!r}"
        found[name] = value
    if "id" not in found:
        return None, "no id= field (e.g. v=STSv1; id=20240101T000000)"
    if not _ID.fullmatch(found["id"]):
        return None, f"id {found['id']!r} must be 1 to 32 letters and digits"
    return found["id"], ""


def parse_policy(text: str) -> MtaStsPolicy:
    """Parse a policy file (§3.2); raise ``MtaStsError`` with every error, "line N: ..."."""
    errors: list[str] = []
    warnings: list[str] = []
    values: dict[str, tuple[int, str]] = {}
    mx: list[str] = []
    lines = text.split("\n")
    while lines and lines[-1].rstrip("\r") == "":
        lines.pop()
    for number, raw in enumerate(lines, 1):
        line = raw.removesuffix("\r")
        where = f"line {number}"
        if not line.strip():
            warnings.append(f"{where}: blank line")
            continue
        key, colon, value = line.partition(":")
        value = value.strip(" \t")
        if not colon or not key or key != key.strip():
            errors.append(f"{where}: expected 'key: value', got {line[:60]!r}")
            continue
        if key not in _KNOWN and key.lower() in _KNOWN:
            errors.append(
                f"{where}: field names are case-sensitive: {key!r} must be {key.lower()!r}"
            )
            continue
        if key not in _KNOWN:
            warnings.append(f"{where}: unknown field {key!r} (ignored)")
            continue
        if key == "version" and number != 1:
            errors.append(f"{where}: 'version: STSv1' must be the first line")
        if key == "mx":
            problem = _mx_problem(value)
            if problem:
                errors.append(f"{where}: mx {value!r}: {problem}")
            elif value.endswith("."):
                warnings.append(f"{where}: mx {value!r} has a trailing dot")
            mx.append(value)
            continue
        if key in values:
            errors.append(f"{where}: duplicate {key!r} (first on line {values[key][0]})")
            continue
        values[key] = (number, value)
        if key == "version" and value != "STSv1":
            errors.append(f"{where}: version must be 'STSv1', got {value!r}")
        elif key == "mode" and value not in _MODES:
            errors.append(f"{where}: mode must be enforce, testing or none, got {value!r}")
        elif key == "max_age" and not (_MAX_AGE.fullmatch(value) and int(value) <= MAX_MAX_AGE):
            errors.append(f"{where}: max_age must be whole seconds 0 to {MAX_MAX_AGE}")
    for key in ("version", "mode", "max_age"):
        if key not in values:
            errors.append(f"missing required field '{key}'")
    mode = values.get("mode", (0, ""))[1]
    if not mx and mode in ("enforce", "testing"):
        errors.append(f"no 'mx' field: mode {mode} needs at least one")
    if errors:
        raise MtaStsError("; ".join(errors))
    return MtaStsPolicy("STSv1", mode, tuple(mx), int(values["max_age"][1]), tuple(warnings))


def _mx_problem(pattern: str) -> str:
    name = pattern.removeprefix("*.").removesuffix(".")
    if pattern.startswith("*.") and "." not in name:
        return "a wildcard must be followed by a domain (e.g. *.example.com)"
    if len(name) > 253 or not all(_LABEL.fullmatch(label) for label in name.split(".")):
        return "not a host name or *.domain pattern"
    if name.split(".")[-1].isdigit():
        return "an IP address is not allowed"
    return ""
