"""The OpenSPF RFC 7208 test suite (pyspf's ``rfc7208-tests.yml``): a loader and a driver.

The suite is public data kept outside the project, in ``/work/shared/conformance``; this
module only reads it. There is no YAML library among our dependencies, and the suite
uses a small, fixed part of YAML (block mappings and sequences, flow sequences of
scalars, quoted and plain scalars, block scalars), so ``load_documents`` reads exactly
that part and refuses anything else loudly rather than guessing.

``run_scenario`` serves one scenario's ``zonedata`` from the loopback ``DnsServer`` (the
same real-DNS harness as the rest of the SPF tests) and runs ``check_spf`` for each of
its tests. The suite's zone conventions are pyspf's test driver's: an ``SPF`` record
also stands for a ``TXT`` record unless the name has ``TXT`` records of its own (``TXT:
NONE`` means none at all), and a bare ``TIMEOUT`` makes every query of a type not
listed before it time out.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import dns.message
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TXT
from harness.dnsserver import DnsServer

from securemail.dns import Resolver
from securemail.mech.spf import check_spf

RESOLVER_TIMEOUT = 0.3  # a TIMEOUT in the zone data costs this much per query
DEFAULT_EXPLANATION = "DEFAULT"  # pyspf's driver's text for "no exp= explanation"

# --- the YAML subset ---------------------------------------------------------------------

_KEY = re.compile(r"""^("(?:[^"\\]|\\.)*"|'(?:[^']|'')*'|[^\s"'#][^#]*?)\s*:(?:\s+(.*))?$""")


def load_documents(text: str) -> list[Any]:
    """The ``---``-separated documents of ``text`` (the subset the suite uses)."""
    documents: list[list[str]] = [[]]
    for line in text.splitlines():
        if line.rstrip() == "---":
            documents.append([])
        elif line.strip() and not line.lstrip().startswith("#"):
            documents[-1].append(line.rstrip())
        elif documents[-1] and not line.strip():
            documents[-1].append("")  # blank lines matter inside block scalars
    parsed = []
    for lines in documents:
        while lines and not lines[-1]:
            lines.pop()
        if lines:
            node, end = _block(lines, 0, _indent(lines[0]))
            if end != len(lines):
                raise ValueError(f"unexpected YAML at {lines[end]!r}")
            parsed.append(node)
    return parsed


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _block(lines: list[str], i: int, indent: int) -> tuple[Any, int]:
    if lines[i].lstrip().startswith("- ") or lines[i].strip() == "-":
        return _sequence(lines, i, indent)
    return _mapping(lines, i, indent)


def _sequence(lines: list[str], i: int, indent: int) -> tuple[list[Any], int]:
    items: list[Any] = []
    while i < len(lines) and lines[i] and _indent(lines[i]) == indent:
        stripped = lines[i].strip()
        if not stripped.startswith("-"):
            break
        content = stripped[1:].lstrip()
        if not content.startswith("[") and _KEY.match(content):
            # "- key: value": a mapping whose first line shares the dash's line
            inner = indent + (len(stripped) - len(content))
            lines = [*lines[:i], " " * inner + content, *lines[i + 1 :]]
            node, i = _mapping(lines, i, inner)
        else:
            node, i = _scalar(content), i + 1
        items.append(node)
    return items, i


def _mapping(lines: list[str], i: int, indent: int) -> tuple[dict[str, Any], int]:
    mapping: dict[str, Any] = {}
    while i < len(lines):
        if not lines[i]:
            i += 1
            continue
        if _indent(lines[i]) != indent:
            break
        match = _KEY.match(lines[i].strip())
        if match is None:
            raise ValueError(f"expected 'key: value' in {lines[i]!r}")
        key, value = _scalar(match.group(1)), (match.group(2) or "").strip()
        i += 1
        if value in (">", ">-", "|", "|-", ">+", "|+"):
            mapping[key], i = _block_scalar(lines, i, indent, folded=value[0] == ">")
        elif value:
            i = _skip_continuation(lines, i, indent)  # a plain scalar over several lines
            mapping[key] = _scalar(value)
        elif i < len(lines) and lines[i] and _indent(lines[i]) > indent:
            mapping[key], i = _block(lines, i, _indent(lines[i]))
        elif i < len(lines) and lines[i].strip().startswith("- ") and _indent(lines[i]) == indent:
            mapping[key], i = _sequence(lines, i, indent)
        else:
            mapping[key] = None
    return mapping, i


def _skip_continuation(lines: list[str], i: int, indent: int) -> int:
    while i < len(lines) and (not lines[i] or _indent(lines[i]) > indent):
        i += 1
    return i


def _block_scalar(lines: list[str], i: int, indent: int, *, folded: bool) -> tuple[str, int]:
    start = i
    i = _skip_continuation(lines, i, indent)
    body = [line.strip() for line in lines[start:i]]
    return (" " if folded else "\n").join(body).strip(), i


def _scalar(text: str) -> Any:
    text = text.strip()
    if text.startswith("[") and text.endswith("]"):
        inner = text[1:-1].strip()
        return [_scalar(part) for part in _split_flow(inner)] if inner else []
    if text.startswith('"') and text.endswith('"') and len(text) >= 2:
        return ast.literal_eval(text)  # YAML's \x, \\ and \" escapes are Python's too
    if text.startswith("'") and text.endswith("'") and len(text) >= 2:
        return text[1:-1].replace("''", "'")
    return text


def _split_flow(text: str) -> Iterator[str]:
    part, quote = "", ""
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char == ",":
            yield part
            part = ""
            continue
        part += char
    yield part


# --- scenarios ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SuiteTest:
    name: str
    host: str
    mailfrom: str
    helo: str
    results: tuple[str, ...]  # the first is preferred; any is a pass
    explanation: str | None


@dataclass(slots=True)
class Scenario:
    description: str
    tests: list[SuiteTest]
    zonedata: dict[str, list[Any]] = field(default_factory=dict)


def scenarios(text: str) -> list[Scenario]:
    """The suite's scenarios, each with its tests and zone data."""
    found = []
    for document in load_documents(text):
        tests = []
        for name, data in document["tests"].items():
            results = data["result"]
            results = tuple(results) if isinstance(results, list) else (results,)
            tests.append(
                SuiteTest(
                    name,
                    data["host"],
                    data.get("mailfrom") or "",
                    data.get("helo") or "",
                    results,
                    data.get("explanation"),
                )
            )
        found.append(Scenario(document.get("description", ""), tests, document["zonedata"]))
    return found


class SuiteDnsServer(DnsServer):
    """The loopback server, plus the suite's per-type ``TIMEOUT`` (the harness has per-name)."""

    def __init__(self) -> None:
        super().__init__()
        self.answering: dict[str, set[str]] = {}  # name -> the only types that get answers

    async def _reply(self, data: bytes, *, tcp: bool) -> bytes | None:
        try:
            question = dns.message.from_wire(data).question[0]
        except Exception:
            return None
        name = question.name.to_text(omit_final_dot=True).lower()
        answering = self.answering.get(name)
        if answering is not None and dns.rdatatype.to_text(question.rdtype) not in answering:
            return None
        return await super()._reply(data, tcp=tcp)


def load_zone(server: SuiteDnsServer, zonedata: dict[str, list[Any]]) -> None:
    """Serve ``zonedata`` the way pyspf's driver does (see the module docstring)."""
    for name, entries in zonedata.items():
        seen: set[str] = set()
        spf_texts: list[Any] = []
        has_txt = any(isinstance(e, dict) and "TXT" in e for e in entries)
        for entry in entries:
            if entry == "TIMEOUT":
                server.answering[name.lower()] = set(seen)
                continue
            ((rdtype, value),) = entry.items()
            if value != "NONE":
                seen.add(rdtype)
            if rdtype == "SPF":
                spf_texts.append(value)
            elif rdtype == "TXT":
                if value != "NONE":
                    server.add(name, "TXT", _txt(value))
            elif rdtype == "MX":
                preference, host = value
                server.add(name, "MX", f"{preference} {_absolute(host)}")
            else:
                values = value if isinstance(value, list) else [value]
                if rdtype in ("PTR", "CNAME"):
                    values = [_absolute(v) for v in values]
                server.add(name, rdtype, *values)
        if not has_txt:
            for value in spf_texts:
                server.add(name, "TXT", _txt(value))


def _absolute(name: str) -> str:
    return name if name.endswith(".") else f"{name}."


def _txt(value: str | list[str]) -> dns.rdtypes.ANY.TXT.TXT:
    strings = value if isinstance(value, list) else [value]
    chunks = [s.encode("utf-8") for s in strings] or [b""]
    return dns.rdtypes.ANY.TXT.TXT(dns.rdataclass.IN, dns.rdatatype.TXT, chunks)


async def run_scenario(scenario: Scenario) -> list[str]:
    """What went wrong in each of ``scenario``'s tests (nothing when all pass)."""
    failures = []
    with SuiteDnsServer() as server:
        load_zone(server, scenario.zonedata)
        resolver = Resolver([server.nameserver], timeout=RESOLVER_TIMEOUT, cache=False)
        for test in scenario.tests:
            spf = await check_spf(test.host, test.mailfrom, test.helo, resolver)
            got = spf.result.value
            explanation = spf.explanation or DEFAULT_EXPLANATION
            if got not in test.results:
                failures.append(f"{test.name}: {got} not in {test.results} ({spf.reason})")
            elif test.explanation is not None and explanation != test.explanation:
                failures.append(f"{test.name}: explanation {explanation!r} != {test.explanation!r}")
    return failures
