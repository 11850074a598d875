"""Decide whether a message is sensitive, so policy never sends it in the clear by mistake.

A gateway that encrypts only what users remember to tag leaks what they forget, so we
look for what makes a message sensitive whatever its sender intended: a government
protective marking (``OFFICIAL-SENSITIVE``), the ``[secure]`` subject tag (or the legacy
``[encrypt]``), and valid NHS numbers. Every finding says where it was, so a person
told "this will be encrypted" can see why.

**Every part a person could read is read**: each ``text/*`` part (any subtype or
charset, base64 and quoted-printable decoded), attached messages (their Subject and
their parts, recursively), and attachments of any declared type through
``core.extract``: Office and OpenDocument files, PDFs, ZIPs (recursively), and anything
else as text. The MIME tree is walked here, iteratively, with the header fields of every
part and attached message found by ``core.message.read_headers`` (the one header reader;
only the values of the Content-* fields are parsed by the stdlib). What cannot be read
(encrypted, malformed, over a bound of ``extract.Limits``) is a ``Kind.UNSCANNABLE``
marker saying why; ``core.policy`` decides what that means.

Errors lean one way on purpose. Nothing here raises on hostile or broken input, because
a crash would let a message skip the check; what cannot be parsed as MIME is still
scanned as text, and so is a part nested too deep to open (as well as being reported).
Markings count only in the first and last few non-blank lines of a text, where people
put them, so prose that merely mentions the phrase does not trigger.

NHS numbers are masked in every marker because markers are logged, and a full NHS number
is personal data. Labels name parts by number and type, never by file name, for the same
reason.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import operator
import quopri
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email import policy
from email._encoded_words import decode_b  # what Message.get_payload uses
from email.headerregistry import BaseHeader, HeaderRegistry
from email.message import EmailMessage
from email.message import _decode_uu as decode_uu  # likewise
from enum import StrEnum

from securemail.core.extract import (
    DEFAULT_LIMITS,
    Budget,
    Embedded,
    Limits,
    Text,
    Unscannable,
    decode_text,
    extract,
)
from securemail.core.message import MAX_BYTES, HeaderBlock, HeaderLimitError, read_headers

_WEIGHTS = range(10, 1, -1)
_HEAD_LINES = 10
_TAIL_LINES = 5
# The stdlib header parser is superlinear on long values; no real MIME header needs more.
_MAX_HEADER_CHARS = 4096
_MAX_TYPE_IN_LABEL = 80

_SEP = "[ \\-\u00a0]"
# Opens with a digit, lookbehinds after it, so the engine skips straight to digits (5x faster).
# Written in groups (3-3-4), the number must not be part of a longer grouped run
# ("943 476 5919 12" is a phone/account number); written solid, only adjacent digits
# disqualify it, so two numbers in a row ("9434765919 4010232137") are both found:
# missing one is the unsafe direction. Solid ten digits inside a longer token of letters
# and digits (a hex id "a9434765919f", a URL token "id=X9434765919") are an identifier,
# not an NHS number, unless the token says so itself: "NHS9434765919".
_NHS_CANDIDATE = re.compile(
    rf"([0-9](?<![0-9]{{2}})(?<![0-9]{_SEP}[0-9])[0-9]{{2}})({_SEP})([0-9]{{3}})\2([0-9]{{4}})"
    rf"(?![0-9])(?!{_SEP}[0-9])"
    rf"|([0-9](?<![0-9]{{2}})[0-9]{{2}})()([0-9]{{3}})([0-9]{{4}})(?![0-9])"
    r"(?:(?<=[Nn][Hh][Ss][0-9]{10})|(?<![^\W_][0-9]{10})(?![^\W_]))"
)
_DIGITS_AS_ZERO = str.maketrans("123456789", "000000000")  # "0" then marks every digit
_SPARSE = 64  # one digit in this many characters or fewer: _sparse_matches is faster
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
# In every marking, with the same flags ("offıcial" too, unlike str.lower): a line without
# it skips _MARKING, whose leading look-behind is tried at every position (39 µs -> 11).
_MARKING_HINT = re.compile("official", re.IGNORECASE)
_SUBJECT_TAG = re.compile(r"\[\s*(secure|encrypt)\s*\]", re.IGNORECASE)
_NON_BLANK_LINE = re.compile(r"^[^\S\n]*\S[^\n]*", re.MULTILINE)
# A line that may be a MIME delimiter: "--", a token, then the end of the line.
_DASH_LINE = re.compile(rb"^--([^\r\n]*)(?:\r\n|\n|\Z)", re.MULTILINE)
_MESSAGE_TYPES = frozenset({"message/rfc822", "message/global"})


class Kind(StrEnum):
    """What was found. The values are logged and exported, so they do not change."""

    MARKING = "protective-marking"
    SUBJECT_TAG = "subject-tag"
    NHS_NUMBER = "nhs-number"
    UNSCANNABLE = "unscannable"
    """Not a finding but its absence: a part that could not be read; ``text`` says why."""


@dataclass(frozen=True, slots=True)
class Marker:
    """One finding. ``text`` is normalised, and masked for NHS numbers (safe to log)."""

    kind: Kind
    where: str
    text: str


@dataclass(frozen=True, slots=True)
class Sensitivity:
    """What made a message sensitive, and what could not be read to tell.

    ``sensitive`` is about what was found; whether an unscannable part makes the message
    count as sensitive is policy's decision (``[policy] unscannable``), not this one's.
    """

    markers: tuple[Marker, ...] = ()

    @property
    def sensitive(self) -> bool:
        """True when sensitive content was found (unscannable parts do not count here)."""
        return any(m.kind is not Kind.UNSCANNABLE for m in self.markers)

    @property
    def unscannable(self) -> tuple[Marker, ...]:
        """The parts that could not be read, each with the reason in ``text``."""
        return tuple(m for m in self.markers if m.kind is Kind.UNSCANNABLE)

    def summary(self) -> str:
        """One sentence for a person; counts NHS numbers rather than listing even masked ones."""
        groups: dict[tuple[Kind, str, str], int] = {}
        for marker in self.markers:
            text = "" if marker.kind is Kind.NHS_NUMBER else marker.text
            key = (marker.kind, marker.where, text)
            groups[key] = groups.get(key, 0) + 1
        found, unread = [], []
        for (kind, where, text), count in groups.items():
            if kind is Kind.NHS_NUMBER:
                found.append(f"{count} NHS number{'' if count == 1 else 's'} in {where}")
            elif kind is Kind.UNSCANNABLE:
                unread.append(f"{where} unscannable ({text})")
            else:
                noun = "marking" if kind is Kind.MARKING else "tag"
                found.append(f"{text} {noun} in {where}")
        if not found:
            found = ["no sensitive content found" + (" in what could be read" if unread else "")]
        return "; ".join(found + unread)

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
    grouped run either (``943 476 5919 12``). Ten digits written solid inside a longer
    token of letters and digits (``a9434765919f``) do not count either, unless the token
    begins the digits with ``NHS``; a space or any punctuation ends a token.
    """
    return [digits for _, digits in _nhs_numbers(text)]


def mask_nhs_number(digits: str) -> str:
    """How an NHS number is shown where it must not be read whole: ``*** *** 5919``
    (the last four digits, enough to tell two apart). Markers and ``queue cat`` use it."""
    return f"*** *** {digits[-4:]}"


def mask_nhs_numbers(text: str) -> str:
    """``text`` with every NHS number ``find_nhs_numbers`` finds masked, and nothing else
    changed: the same detector, so what the scanner counts is exactly what is hidden."""
    parts, end = [], 0
    for match, digits in _nhs_numbers(text):
        parts += [text[end : match.start()], mask_nhs_number(digits)]
        end = match.end()
    return "".join(parts) + text[end:] if parts else text


def text_is_sensitive(text: str) -> bool:
    """True when one line of text (a display name, say) holds anything the scanner
    would call sensitive in a Subject: a tag, a marking, an NHS number."""
    return bool(_scan_text(text, "text", is_subject=True))


def _nhs_numbers(text: str) -> Iterator[tuple[re.Match[str], str]]:
    """Each valid NHS number in ``text``: where it is, and its ten digits."""
    zeros = text.translate(_DIGITS_AS_ZERO)
    digits = zeros.count("0")
    if digits < 10:
        return
    sparse = digits * _SPARSE <= len(text)
    matches = _sparse_matches(text, zeros) if sparse else _NHS_CANDIDATE.finditer(text)
    for match in matches:
        first, _sep, middle, last = match.groups()[:4] if match[1] else match.groups()[4:]
        found = first + middle + last
        if _check_digits_ok(found):
            yield match, found


def _sparse_matches(text: str, zeros: str) -> Iterator[re.Match[str]]:
    """``_NHS_CANDIDATE.finditer(text)`` for a text with few digits, found faster;
    ``zeros`` is ``text`` with every digit made "0" (``_DIGITS_AS_ZERO``).

    ``finditer`` tries the pattern at every position (its leading look-behinds defeat the
    regex engine's first-character skip, and a character-class search is slow too: about
    1 ms for a 10 KB letter). Both of its branches start with three digits, so trying it
    only where three digits start (``str.find("000")`` in ``zeros``), left to right, going
    on from the end of each match, finds the same matches: 10 KB of lines that each start
    with a digit cost 20 µs, not the 240 of stepping from digit to digit.
    ``test_nhs_number_search_is_finditers`` holds the two side by side."""
    pos = 0
    while (start := zeros.find("000", pos)) >= 0:
        match = _NHS_CANDIDATE.match(text, start)
        if match is None:
            pos = start + 1
        else:
            yield match
            pos = match.end()


def scan_message(
    raw: bytes,
    *,
    limits: Limits = DEFAULT_LIMITS,
    clock: Callable[[], float] = time.monotonic,
) -> Sensitivity:
    """Scan an RFC 5322 message for sensitive content. Never raises.

    The Subject fields are the ones ``read_headers`` finds, the reader every other part
    of the gateway uses, so a marking below a line that ends the header section is found
    "in body", as DKIM and DMARC also take it for body. ``clock`` measures the scan
    against ``limits.max_seconds``; it is read between parts, never inside one.
    """
    budget = Budget(limits, clock)
    markers: list[Marker] = []
    for piece in _walk(raw, budget):
        if isinstance(piece, Unscannable):
            markers.append(Marker(Kind.UNSCANNABLE, piece.where, piece.reason))
        else:
            markers += _scan_text(piece.text, piece.where, is_subject=piece.subject)
    return Sensitivity(tuple(dict.fromkeys(markers)))


class _Headers(HeaderRegistry):
    def __call__(self, name: str, value: str) -> BaseHeader:
        return super().__call__(name, value[:_MAX_HEADER_CHARS])


_POLICY = policy.default.clone(header_factory=_Headers())


@dataclass(frozen=True, slots=True)
class _Piece:
    where: str
    text: str
    subject: bool = False


@dataclass(slots=True)
class _Names:
    """How the parts of one message are labelled: ``part 3 (text/csv)``, in walk order.

    An attached message shares its parent's numbering (its parts are parts of the
    message a person reads); a message found inside an archive is numbered on its own,
    after the member's label.
    """

    prefix: str = ""
    parts: int = 0
    messages: int = 0

    def part(self, content_type: str) -> str:
        self.parts += 1
        return f"{self.prefix}part {self.parts} ({content_type[:_MAX_TYPE_IN_LABEL]})"

    def attached_subject(self) -> str:
        self.messages += 1
        return f"{self.prefix}attached message {self.messages} subject"


class _Source:
    """One buffer being walked (the message, or a decoded attached message), and its
    delimiter lines, found once: every line ``--TOKEN`` (optionally white space after),
    by token. Each multipart then looks up its own boundary instead of searching its
    body again, so nesting costs nothing extra: the walk is linear in the message."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self._lines: dict[bytes, tuple[list[int], list[int]]] | None = None

    def delimiters(self, token: bytes, start: int, end: int) -> list[tuple[int, int]]:
        """(line start, next line start) of each ``--token`` line within [start, end)."""
        if self._lines is None:
            self._lines = {}
            for line in _DASH_LINE.finditer(self.data):
                at, after = self._lines.setdefault(line[1].rstrip(b" \t"), ([], []))
                at.append(line.start())
                after.append(line.end())
        at, after = self._lines.get(token, ((), ()))
        first, last = bisect.bisect_left(at, start), bisect.bisect_left(at, end)
        return list(zip(at[first:last], after[first:last], strict=True))


@dataclass(frozen=True, slots=True)
class _Entity:
    """A MIME entity waiting to be read: ``source.data[start:end]``, header fields then body."""

    source: _Source
    start: int
    end: int
    depth: int
    names: _Names = field(default_factory=_Names)
    root: bool = False
    """A message on its own (the top level, or one found in an archive): its Subject is
    read, and a body that is not multipart is called "body"."""
    message: bool = False
    """A message, not a body part (the top level, an attached ``message/rfc822``, an
    ``.eml`` in an archive): its Subject is read."""
    default_type: str = "text/plain"

    @classmethod
    def of(cls, data: bytes, depth: int, names: _Names, *, root: bool = False) -> _Entity:
        return cls(_Source(data), 0, len(data), depth, names, root=root, message=True)

    def content(self, offset: int = 0) -> bytes:
        """The entity's bytes from ``offset`` (its body, given the body's offset)."""
        return self.source.data[self.start + offset : self.end]


def _walk(raw: bytes, budget: Budget) -> Iterator[_Piece | Unscannable]:
    """Depth first, in message order, with a stack rather than recursion, so nesting
    depth is a bound we choose (``Limits.max_depth``) and not the interpreter's."""
    stack = [_Entity.of(raw, 0, _Names(), root=True)]
    while stack and budget.count_part():
        entity = stack.pop()
        found: list[_Entity] = []
        pieces: list[_Piece | Unscannable] = []
        try:
            pieces.extend(_read(entity, budget, found))
        except Exception:  # whatever went wrong, the bytes are still read as text
            pieces.append(
                _Piece(_leaf_label(entity, "unknown"), decode_text(entity.content(), None))
            )
            found = []
        yield from pieces
        stack.extend(reversed(found))
    if budget.spent:
        yield Unscannable("rest of message", budget.spent)


def _leaf_label(entity: _Entity, content_type: str) -> str:
    if entity.root:
        return f"{entity.names.prefix}body"
    return entity.names.part(content_type)


def _read(entity: _Entity, budget: Budget, found: list[_Entity]) -> Iterator[_Piece | Unscannable]:
    """What one entity holds; the entities inside it are appended to ``found``."""
    try:
        # The reader stops at MAX_BYTES anyway: hand it no more than that of a large body.
        end = min(entity.end, entity.start + MAX_BYTES + 2)
        block = read_headers(entity.source.data[entity.start : end])
    except HeaderLimitError:
        # Too many header fields to read one by one, so a subject tag could be anywhere
        # in them: look for tags and markings in the whole text (the safe direction).
        yield _Piece(
            _leaf_label(entity, "message/rfc822" if entity.message else "unknown"),
            decode_text(entity.content(), None),
            subject=entity.message,
        )
        return
    names = entity.names
    if entity.message:
        label = f"{names.prefix}subject" if entity.root else names.attached_subject()
        for subject in block.get_all("subject"):
            yield _Piece(label, subject.decoded, subject=True)
    info = _content_fields(block, entity.default_type)
    content_type = info.content_type
    body_start = entity.start + block.body_offset
    if reason := budget.too_deep(entity.depth):
        label = _leaf_label(entity, content_type)
        yield Unscannable(label, reason)
        yield _Piece(label, decode_text(entity.content(block.body_offset), None))
        return
    if info.maintype == "multipart":
        boundary = info.boundary
        parts = _split(entity.source, body_start, entity.end, boundary) if boundary else None
        if parts is not None:
            child_type = "message/rfc822" if content_type == "multipart/digest" else "text/plain"
            depth = entity.depth + 1
            found += [
                _Entity(entity.source, s, e, depth, names, default_type=child_type)
                for s, e in parts
            ]
            return
        # No boundary, or none in the body: one text, as mail clients show it.
    payload = _decoded(info, entity.content(block.body_offset))
    if not budget.take(len(payload)):
        return
    if content_type in _MESSAGE_TYPES:
        found.append(_Entity.of(payload, entity.depth + 1, names))
        return
    label = _leaf_label(entity, content_type)
    if content_type == "message/partial":
        yield Unscannable(label, "a fragment of a message (message/partial)")
        return
    items = extract(
        payload,
        label,
        depth=entity.depth,
        budget=budget,
        content_type=content_type,
        charset=info.charset(),
        filename=info.filename(),
    )
    for item in items:
        if isinstance(item, Embedded):
            found.append(_Entity.of(item.raw, item.depth, _Names(f"{item.where}, "), root=True))
        elif isinstance(item, Text):
            yield _Piece(item.where, item.text)
        else:
            yield item


@dataclass(frozen=True, slots=True)
class _Fields:
    """What the walk needs of an entity's Content-* fields, as the stdlib parses them.

    Parsing a Content-Type through the email package's header registry costs about
    0.1 ms, four times a message: more than the rest of a small message's scan together
    (a portal notice, a DSN, a one-line reply). Most values repeat (``text/plain;
    charset="utf-8"`` with quoted-printable), so the parsed answer is kept by value
    (``_parse_fields``): exactly what the stdlib said for the same text, not a second
    parser that could read a field differently. The charset and the file name were read
    only for leaf parts, and may raise; they are kept as the stdlib's answer or its error.
    """

    content_type: str
    boundary: str | None
    cte: str  # as ``Message.get_payload`` compares it
    _charset: str | Exception | None
    _filename: str | Exception

    @property
    def maintype(self) -> str:
        return self.content_type.partition("/")[0]

    def charset(self) -> str | None:
        if isinstance(self._charset, Exception):
            raise self._charset.with_traceback(None)  # not a traceback per raise
        return self._charset

    def filename(self) -> str:
        if isinstance(self._filename, Exception):
            raise self._filename.with_traceback(None)
        return self._filename


_CONTENT_FIELDS = ("content-type", "content-transfer-encoding", "content-disposition")
_CACHED_FIELD_CHARS = 512  # longer values are parsed each time: the cache stays small


def _content_fields(block: HeaderBlock, default_type: str) -> _Fields:
    """The entity's Content-* fields (the first of each, as ``read_headers`` found them),
    with their values parsed by the stdlib: types, parameters, RFC 2231."""
    texts = tuple(
        None if (found := block.first(name)) is None else found.text.lstrip(" \t")
        for name in _CONTENT_FIELDS
    )
    if sum(len(text) for text in texts if text) > _CACHED_FIELD_CHARS:
        return _parse_fields.__wrapped__(texts, default_type)
    return _parse_fields(texts, default_type)


@functools.lru_cache(maxsize=1024)
def _parse_fields(texts: tuple[str | None, ...], default_type: str) -> _Fields:
    info = EmailMessage(policy=_POLICY)
    info.set_default_type(default_type)
    for name, text in zip(_CONTENT_FIELDS, texts, strict=True):
        if text is not None:
            info.set_raw(name, text)
    charset: str | Exception | None
    filename: str | Exception
    try:
        charset = info.get_content_charset()
    except Exception as exc:
        charset = exc
    try:
        filename = info.get_filename() or ""
    except Exception as exc:
        filename = exc
    content_type = info.get_content_type()
    return _Fields(
        content_type,
        info.get_boundary() if info.get_content_maintype() == "multipart" else None,
        str(info.get("content-transfer-encoding", "")).lower(),
        charset,
        filename,
    )


def _decoded(info: _Fields, body: bytes) -> bytes:
    """``body`` with its Content-Transfer-Encoding undone, as ``Message.get_payload(
    decode=True)`` undoes it for a body read as ASCII with surrogate escapes (its
    ``bpayload`` is then ``body`` itself); ``test_sensitivity_fields`` holds the two
    side by side."""
    if info.cte == "quoted-printable":
        return quopri.decodestring(body)
    if info.cte == "base64":
        return decode_b(b"".join(body.splitlines()))[0]
    if info.cte in ("x-uuencode", "uuencode", "uue", "x-uue"):
        try:
            return decode_uu(body)
        except ValueError:
            return body
    return body


def _split(source: _Source, start: int, end: int, boundary: str) -> list[tuple[int, int]] | None:
    """Where the body parts of a multipart body are, or None without a delimiter line.

    A delimiter is ``--boundary`` at the start of a line, then optional white space and
    the end of the line; ``--boundary--`` closes. The line break before a delimiter
    belongs to it (RFC 2046 §5.1.1). Preamble and epilogue are not parts.
    """
    token = boundary.encode("utf-8", "surrogateescape")
    closes = source.delimiters(token + b"--", start, end)
    stop = closes[0][0] if closes else end
    lines = source.delimiters(token, start, stop)
    if not lines:
        return None
    data = source.data
    parts = []
    for (_, after), (next_at, _) in zip(lines, [*lines[1:], (stop, stop)], strict=True):
        part_end = next_at
        if next_at < end or closes:
            part_end -= 2 if data[next_at - 2 : next_at] == b"\r\n" else 1
        parts.append((min(after, part_end), part_end))
    return parts


def _scan_text(text: str, where: str, *, is_subject: bool) -> list[Marker]:
    markers = []
    if is_subject:
        markers += [
            Marker(Kind.SUBJECT_TAG, where, f"[{m[1].lower()}]")
            for m in _SUBJECT_TAG.finditer(text)
        ]
    for line in [text] if is_subject else _edge_lines(text):
        if _MARKING_HINT.search(line) is None:
            continue
        for match in _MARKING.finditer(line):
            descriptor = match[1] or match[2]
            label = (
                f"OFFICIAL-SENSITIVE [{descriptor.upper()}]" if descriptor else "OFFICIAL-SENSITIVE"
            )
            markers.append(Marker(Kind.MARKING, where, label))
    masked = dict.fromkeys(mask_nhs_number(digits) for digits in find_nhs_numbers(text))
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
