"""Decide whether a message is sensitive, so policy never sends it in the clear by mistake.

A gateway that encrypts only what users remember to tag leaks what they forget, so we
look for what makes a message sensitive whatever its sender intended: a government
protective marking (``OFFICIAL-SENSITIVE``), the ``[secure]`` subject tag (or the legacy
``[encrypt]``), and valid NHS numbers. Every finding says where it was, so a person
told "this will be encrypted" can see why.

Errors lean one way on purpose. Nothing here raises on hostile or broken input, because
a crash would let a message skip the check; what cannot be parsed as MIME is still
scanned as text. Markings count only in the first and last few non-blank lines of a
body, where people put them, so prose that merely mentions the phrase does not trigger.

Only text/plain and text/html parts are read, including those of attached messages.
Other attachments (PDFs, Office documents) are not scanned yet. NHS numbers are masked
in every marker because markers are logged, and a full NHS number is personal data.
"""

from __future__ import annotations

import html
import itertools
import operator
import re
from collections.abc import Iterator
from dataclasses import dataclass
from email import policy
from email.headerregistry import BaseHeader, HeaderRegistry
from email.message import Message
from email.parser import BytesParser
from enum import StrEnum

from securemail.core.message import HeaderBlock, HeaderLimitError, read_headers, reparse_input

_WEIGHTS = range(10, 1, -1)
_HEAD_LINES = 10
_TAIL_LINES = 5
# The stdlib header parser is superlinear on long values; no real MIME header needs more.
_MAX_HEADER_CHARS = 4096

_SEP = "[ \\-\u00a0]"
# Opens with a digit, lookbehinds after it, so the engine skips straight to digits (5x faster).
# Written in groups (3-3-4), the number must not be part of a longer grouped run
# ("943 476 5919 12" is a phone/account number); written solid, only adjacent digits
# disqualify it, so two numbers in a row ("9434765919 4010232137") are both found:
# missing one is the unsafe direction.
_NHS_CANDIDATE = re.compile(
    rf"([0-9](?<![0-9]{{2}})(?<![0-9]{_SEP}[0-9])[0-9]{{2}})({_SEP})([0-9]{{3}})\2([0-9]{{4}})"
    rf"(?![0-9])(?!{_SEP}[0-9])"
    rf"|([0-9](?<![0-9]{{2}})[0-9]{{2}})()([0-9]{{3}})([0-9]{{4}})(?![0-9])"
)
_NHS_EXACT = re.compile(rf"([0-9]{{3}})({_SEP}?)([0-9]{{3}})\2([0-9]{{4}})")
_DASHES = "\\-_:\u2010\u2011\u2013\u2014"
_BLANK = "[ \t\u00a0]"
_DESCRIPTOR = "(personal|commercial|locsen)"
_MARKING = re.compile(
    rf"(?<![^\W\d_])official(?:{_BLANK}{{0,3}}[{_DASHES}]{_BLANK}{{0,3}}|{_BLANK}{{1,3}})sensitive"
    rf"(?:{_BLANK}{{0,3}}(?:\[{_BLANK}{{0,3}}{_DESCRIPTOR}{_BLANK}{{0,3}}\]"
    rf"|[{_DASHES}]{_BLANK}{{0,3}}{_DESCRIPTOR}(?![a-z])))?",
    re.IGNORECASE,
)
_SUBJECT_TAG = re.compile(r"\[\s*(secure|encrypt)\s*\]", re.IGNORECASE)
_HTML_SPACE = re.compile(r"[ \t\r\n\f]+")
# Every tag pattern stops at the next "<", so no match can rescan text: linear time.
_HIDDEN_START = re.compile(r"<!--|<(script|style)\b[^<>]*>", re.IGNORECASE)
_HIDDEN_END = re.compile(r"</(?:script|style)\b[^<>]*>", re.IGNORECASE)
_COMMENT_END = re.compile(r"-->")
_ANY_TAG = re.compile(r"</?[a-z][^<>]*>|<[!?][^<>]*>", re.IGNORECASE)
_BLOCK_TAG = re.compile(
    r"</?(?:p|br|div|tr|td|th|li|ul|ol|table|hr|pre|blockquote|h[1-6]|section|article"
    r"|header|footer)\b[^<>]*>",
    re.IGNORECASE,
)
_NON_BLANK_LINE = re.compile(r"^[^\S\n]*\S[^\n]*", re.MULTILINE)
_TEXT_TYPES = frozenset({"text/plain", "text/html"})


class Kind(StrEnum):
    """What was found. The values are logged and exported, so they do not change."""

    MARKING = "protective-marking"
    SUBJECT_TAG = "subject-tag"
    NHS_NUMBER = "nhs-number"


@dataclass(frozen=True, slots=True)
class Marker:
    """One finding. ``text`` is normalised, and masked for NHS numbers (safe to log)."""

    kind: Kind
    where: str
    text: str


@dataclass(frozen=True, slots=True)
class Sensitivity:
    """What made a message sensitive; no markers means nothing was found."""

    markers: tuple[Marker, ...] = ()

    @property
    def sensitive(self) -> bool:
        return bool(self.markers)

    def summary(self) -> str:
        """One sentence for a person; counts NHS numbers rather than listing even masked ones."""
        if not self.markers:
            return "no sensitive content found"
        groups: dict[tuple[Kind, str, str], int] = {}
        for marker in self.markers:
            text = "" if marker.kind is Kind.NHS_NUMBER else marker.text
            key = (marker.kind, marker.where, text)
            groups[key] = groups.get(key, 0) + 1
        phrases = []
        for (kind, where, text), count in groups.items():
            if kind is Kind.NHS_NUMBER:
                phrases.append(f"{count} NHS number{'' if count == 1 else 's'} in {where}")
            else:
                noun = "marking" if kind is Kind.MARKING else "tag"
                phrases.append(f"{text} {noun} in {where}")
        return "; ".join(phrases)

    def to_json(self) -> dict[str, object]:
        return {
            "sensitive": self.sensitive,
            "markers": [
                {"kind": m.kind.value, "where": m.where, "text": m.text} for m in self.markers
            ],
        }


NOT_SENSITIVE = Sensitivity()


def _check_digits_ok(digits: str) -> bool:
    """Apply the NHS modulus 11 check to ten ASCII digits.

    Numbers whose ten digits are all the same are refused even though some (such as
    ``0000000000``) pass the check: they are never issued, and are typed as placeholders.
    """
    if digits == digits[0] * 10:
        return False
    total = sum(map(operator.mul, map(int, digits[:9]), _WEIGHTS))
    check = 11 - total % 11
    if check == 11:
        check = 0
    return check != 10 and check == int(digits[9])


def is_valid_nhs_number(number: str) -> bool:
    """True for a valid NHS number written ``9434765919``, ``943 476 5919`` or ``943-476-5919``."""
    match = _NHS_EXACT.fullmatch(number)
    return match is not None and _check_digits_ok(match[1] + match[3] + match[4])


def find_nhs_numbers(text: str) -> list[str]:
    """Return the digits of each valid NHS number in ``text``, in order of appearance.

    Ten digits inside a longer run (a phone or account number) do not count: no digit may
    touch either end, and a grouped number (``943 476 5919``) may not continue as a
    grouped run either (``943 476 5919 12``).
    """
    found = []
    for match in _NHS_CANDIDATE.finditer(text):
        first, _sep, middle, last = match.groups()[:4] if match[1] else match.groups()[4:]
        digits = first + middle + last
        if _check_digits_ok(digits):
            found.append(digits)
    return found


def scan_message(raw: bytes) -> Sensitivity:
    """Scan an RFC 5322 message for sensitive content. Never raises.

    The Subject fields are the ones ``read_headers`` finds, the reader every other part
    of the gateway uses, so a marking below a line that ends the header section is found
    "in body", as DKIM and DMARC also take it for body. The stdlib walks the MIME parts,
    fed ``reparse_input`` so that it splits header and body where the reader does.
    """
    markers: list[Marker] = []
    try:
        block = read_headers(raw)
    except HeaderLimitError:
        # Too many header fields to read one by one, so a subject tag could be anywhere
        # in them: look for tags and markings in the whole text (the safe direction).
        text = raw.decode("utf-8", errors="replace")
        return Sensitivity(tuple(dict.fromkeys(_scan_text(text, "body", is_subject=True))))
    for subject in block.get_all("subject"):
        markers += _scan_text(subject.decoded, "subject", is_subject=True)
    try:
        msg = BytesParser(policy=_POLICY).parsebytes(_without_blank_runs(raw, block))
        for where, text in _bodies(msg):
            markers += _scan_text(text, where, is_subject=False)
    except Exception:
        body = raw[block.body_offset :].decode("utf-8", errors="replace")
        markers += _scan_text(body, "body", is_subject=False)
    return Sensitivity(tuple(dict.fromkeys(markers)))


_BLANK_RUN = re.compile(rb"(?:\r\n){3,}+")  # possessive: no backtracking stack per line


def _without_blank_runs(raw: bytes, block: HeaderBlock) -> bytes:
    """``reparse_input(raw)`` with each run of empty body lines cut to one.

    The stdlib parser keeps every line as an object (~80 bytes): 4.9 M empty lines, a
    10 MB message, cost ~400 MB and seconds of CPU. Empty lines carry nothing this scan
    looks for (markings are sought in non-blank lines, and no NHS number spans a line
    break), and one is kept wherever there were several, so every header section in
    the body (the MIME parts') still ends where it did.
    """
    data = reparse_input(raw, block)
    start = len(data) - (len(raw) - block.body_offset)  # the body, after our header block
    return data[:start] + _BLANK_RUN.sub(b"\r\n\r\n", memoryview(data)[start:])


class _BoundedHeaders(HeaderRegistry):
    def __call__(self, name: str, value: str) -> BaseHeader:
        return super().__call__(name, value[:_MAX_HEADER_CHARS])


_POLICY = policy.default.clone(header_factory=_BoundedHeaders())


def _scan_text(text: str, where: str, *, is_subject: bool) -> list[Marker]:
    markers = []
    if is_subject:
        markers += [
            Marker(Kind.SUBJECT_TAG, where, f"[{m[1].lower()}]")
            for m in _SUBJECT_TAG.finditer(text)
        ]
    for line in [text] if is_subject else _edge_lines(text):
        for match in _MARKING.finditer(line):
            descriptor = match[1] or match[2]
            label = (
                f"OFFICIAL-SENSITIVE [{descriptor.upper()}]" if descriptor else "OFFICIAL-SENSITIVE"
            )
            markers.append(Marker(Kind.MARKING, where, label))
    masked = dict.fromkeys(f"*** *** {digits[-4:]}" for digits in find_nhs_numbers(text))
    markers += [Marker(Kind.NHS_NUMBER, where, label) for label in masked]
    return markers


def _edge_lines(text: str) -> list[str]:
    head: list[str] = []
    end = 0
    for match in _NON_BLANK_LINE.finditer(text):
        head.append(match[0])
        end = match.end()
        if len(head) == _HEAD_LINES:
            break
    # The last lines, found by scanning the rest reversed, so a long body is not split up.
    tail = [
        m[0][::-1]
        for m in itertools.islice(_NON_BLANK_LINE.finditer(text[end:][::-1]), _TAIL_LINES)
    ]
    return head + tail[::-1]


def _bodies(msg: Message) -> Iterator[tuple[str, str]]:
    if not msg.is_multipart():
        if msg.get_content_type() in _TEXT_TYPES or msg.get_content_maintype() == "multipart":
            yield "body", _part_text(msg)
        return
    index = 0
    for part in msg.walk():
        ctype = part.get_content_type()
        if part.is_multipart() or (
            ctype not in _TEXT_TYPES and part.get_content_maintype() != "multipart"
        ):
            continue
        index += 1
        yield f"part {index} ({ctype})", _part_text(part)


def _part_text(part: Message) -> str:
    """Decode one leaf part; a multipart left unsplit (broken boundary) is read as raw text."""
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        payload = str(part.get_payload()).encode("utf-8", "surrogateescape")
    text = _decode(payload, part.get_content_charset())
    return _html_text(text) if part.get_content_type() == "text/html" else text


def _decode(data: bytes, charset: str | None) -> str:
    try:
        return data.decode(charset or "utf-8", errors="replace")
    except (LookupError, UnicodeError, ValueError, TypeError):
        return data.decode("utf-8", errors="replace")


def _html_text(markup: str) -> str:
    """Reduce HTML to the text a reader sees, one line per block, so tags cannot split it.

    Regexes rather than ``html.parser``: that is quadratic on some malformed markup in
    the Python versions we support (three megabytes of ``<a `` take minutes), and a
    scanner a sender can stall is a scanner that gets switched off.
    """
    visible = []
    pos = 0
    while (start := _HIDDEN_START.search(markup, pos)) is not None:
        end = (_COMMENT_END if start[1] is None else _HIDDEN_END).search(markup, start.end())
        if end is None:
            break
        visible.append(markup[pos : start.start()])
        pos = end.end()
    visible.append(markup[pos:])
    text = _HTML_SPACE.sub(" ", " ".join(visible))
    return html.unescape(_ANY_TAG.sub("", _BLOCK_TAG.sub("\n", text)))
