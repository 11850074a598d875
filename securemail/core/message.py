"""THE header reader: the one place that decides where a message's header fields are.

Every consumer (DKIM signing and verification, ARC, DMARC's From, the trust-header
stripper, the sensitivity scanner, DSNs) reads headers through ``read_headers``. When
each had its own reader they disagreed on crafted input, one seeing a second From or a
Subject that another called body, and a parser differential is how signature and policy
bypasses are born: what DKIM vouches for, what DMARC judges and what a person is shown
must be the same fields.

**The rule** is Postfix's (``cleanup(8)`` with ``is_header()``): the header section is a
run of lines, each either a field or a continuation, and it ends at

* the first empty line (the separator, which belongs to neither headers nor body), or
* the first line that is neither a field nor a continuation; that line is the first
  line of the body and ``malformed`` says which line it was.

A *field* line starts with a name of one or more printable US-ASCII characters other
than the colon (RFC 5322 §2.2), optionally followed by spaces or tabs (the obsolete
syntax of RFC 5322 §4.5, which Postfix also accepts), then a colon. A *continuation*
starts with a space or tab and belongs to the field above it; one with no field above it
is malformed and ends the header section before it. So an mbox ``From `` line, a line
with a NUL or an 8-bit byte in its name, or a bare word all start the body. Python's
``email`` parser agrees except in three places: it skips ``From `` lines and lines with
an empty name (``:value``) where we end the header section, and it ends the header
section at a space before the colon where we read on; dkimpy also skips ``From `` lines
and refuses the rest. Where those libraries still parse (MIME walking, dkimpy's ARC)
they are fed ``reparse_input``, so they see exactly this reader's fields and body.

Lines end with CRLF; a bare LF is accepted too (the gateway normalises line ends before
storing, but the checker and the CLI read files). A CR not followed by LF is just a byte.

**Bounds.** Reading is one pass, linear in the input. A header section of more than
``max_fields`` fields or ``max_bytes`` bytes raises ``HeaderLimitError`` (one line
saying which); each consumer decides what that means for it, in the safe direction.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Callable
from dataclasses import dataclass

from securemail.errors import SecuremailError

MAX_FIELDS = 1000
MAX_BYTES = 1024 * 1024

# A field's name (RFC 5322 §2.2: printable US-ASCII but ':'), optional WSP, the colon.
_NAME = re.compile(rb"[\x21-\x39\x3b-\x7e]+[ \t]*:")
_LINE_BREAK = re.compile(rb"\r?\n")
_WSP = frozenset(b" \t")
# A CR that does not end a line: the stdlib's parser would break the line there.
_BARE_CR = re.compile(rb"\r(?!\n)")
# An RFC 2047 encoded-word. Neither the charset nor the text may hold a "?", so each
# attempt scans at most to the third "?" after its start: linear time on any input.
_ENCODED_WORD = re.compile(rb"=\?([^?\s]*)\?([BbQq])\?([^?]*)\?=")


class HeaderLimitError(SecuremailError):
    """The header section has more fields or bytes than the reader is allowed to read."""


@dataclass(frozen=True, slots=True)
class HeaderField:
    """One header field exactly as it is in the message."""

    name: bytes
    """The name as written, including any space or tab before the colon."""
    raw: bytes
    """The whole field: name, colon, value, folded lines and its final line end."""

    @property
    def lname(self) -> bytes:
        """The name in lower case, without the space before the colon: for comparing."""
        return self.name.rstrip(b" \t").lower()

    @property
    def value(self) -> bytes:
        """Everything after the colon, folding kept, without the final line end."""
        value = self.raw[len(self.name) + 1 :]
        if value.endswith(b"\n"):
            value = value[:-2] if value.endswith(b"\r\n") else value[:-1]
        return value

    @property
    def unfolded(self) -> bytes:
        """``value`` with the line breaks of folding removed (RFC 5322 §2.2.3)."""
        return _LINE_BREAK.sub(b"", self.value)

    @property
    def text(self) -> str:
        """``unfolded`` as text; bytes that are not UTF-8 survive as surrogate escapes."""
        return self.unfolded.decode("utf-8", errors="surrogateescape")

    @property
    def decoded(self) -> str:
        """``unfolded`` with RFC 2047 encoded-words decoded, for people and scanners."""
        return decode_words(self.unfolded)


@dataclass(frozen=True, slots=True)
class HeaderBlock:
    """What ``read_headers`` found: the fields, in order, and where the body starts."""

    fields: tuple[HeaderField, ...]
    header_end: int
    """Where the header section ends: the concatenated ``raw`` of the fields is
    ``message[:header_end]``."""
    body_offset: int
    """Where the body starts: after the empty line, at the malformed line, or at the end."""
    malformed: str = ""
    """Empty when the header section is well formed, else one sentence saying which
    line ended it (and so is the first line of the body)."""

    def get_all(self, name: str) -> tuple[HeaderField, ...]:
        """Every field called ``name`` (any case), in message order."""
        key = name.encode().lower()
        return tuple(f for f in self.fields if f.lname == key)

    def first(self, name: str) -> HeaderField | None:
        """The topmost field called ``name``, or None."""
        key = name.encode().lower()
        return next((f for f in self.fields if f.lname == key), None)

    def count(self, name: str) -> int:
        """How many fields are called ``name``."""
        key = name.encode().lower()
        return sum(f.lname == key for f in self.fields)


def read_headers(
    raw: bytes, *, max_fields: int = MAX_FIELDS, max_bytes: int = MAX_BYTES
) -> HeaderBlock:
    """The header fields of ``raw`` by the rule in the module docstring.

    Never raises for anything in the message except ``HeaderLimitError``, when the
    header section holds more than ``max_fields`` fields or ``max_bytes`` bytes.
    """
    fields: list[HeaderField] = []
    start = -1  # where the field being read starts, -1 before the first
    name_end = 0
    pos, line, size = 0, 0, len(raw)
    malformed = ""
    body_offset = size
    while pos < size:
        newline = raw.find(b"\n", pos)
        end = size if newline < 0 else newline + 1
        line += 1
        if raw[pos] in _WSP:
            if start < 0:
                malformed = f"line {line} is a continuation line with no header field above it"
                body_offset = pos
                break
        elif raw.startswith((b"\n", b"\r\n"), pos):
            body_offset = end
            break
        else:
            match = _NAME.match(raw, pos)
            if match is None:
                malformed = f"line {line} is not a header field (no name and colon)"
                body_offset = pos
                break
            if start >= 0:
                fields.append(HeaderField(raw[start:name_end], raw[start:pos]))
            if len(fields) >= max_fields:
                raise HeaderLimitError(f"more than {max_fields} header fields")
            start, name_end = pos, match.end() - 1
        if end > max_bytes:
            raise HeaderLimitError(f"header section larger than {max_bytes} bytes")
        pos = end
    header_end = min(pos, body_offset)
    if start >= 0:
        fields.append(HeaderField(raw[start:name_end], raw[start:header_end]))
    return HeaderBlock(tuple(fields), header_end, body_offset, malformed)


def without_fields(raw: bytes, block: HeaderBlock, drop: Callable[[HeaderField], bool]) -> bytes:
    """``raw`` (which ``block`` was read from) without the fields ``drop`` picks.

    Everything else, the separator and body included, is kept byte for byte; when no
    field goes, that is ``raw`` itself (the fields are ``raw`` up to ``header_end``, one
    after another), not a copy of a large body.
    """
    kept = [f.raw for f in block.fields if not drop(f)]
    if len(kept) == len(block.fields):
        return raw
    return b"".join(kept) + raw[block.header_end :]


def reparse_input(raw: bytes, block: HeaderBlock) -> bytes:
    """``raw`` rewritten so that a library with its own header parser finds our fields.

    For the places that still hand a whole message to a library (the stdlib's MIME
    parser, dkimpy's ARC): the space before a colon is dropped (the stdlib would end
    the header section there, dkimpy would skip or refuse the line), a CR that does
    not end a line becomes a space (the stdlib would break the field there), and an
    empty line is put where the body starts, so a line this reader calls body is body
    for the library too. A well-formed CRLF message comes back unchanged, and but for
    a bare CR the changes are invisible to relaxed DKIM/ARC canonicalization.
    """
    if (
        raw[block.header_end : block.body_offset] == b"\r\n"
        and _BARE_CR.search(raw, 0, block.header_end) is None
        and not any(f.name.endswith((b" ", b"\t")) for f in block.fields)
    ):
        return raw  # nothing to change: no copy of a large body
    parts: list[bytes] = []
    for f in block.fields:
        value = f.raw[len(f.name) :]
        if _BARE_CR.search(value):
            value = _BARE_CR.sub(b" ", value)
        if not value.endswith(b"\n"):
            value += b"\r\n"  # the last line of a message without a final line end
        parts.append(f.name.rstrip(b" \t") + value)
    return b"".join(parts) + b"\r\n" + raw[block.body_offset :]


def decode_words(value: bytes) -> str:
    """``value`` as text with its RFC 2047 encoded-words decoded; never raises.

    Space between two encoded-words is dropped (RFC 2047 §6.2) and adjacent words in one
    charset are decoded together, so a character split across words survives. A word that
    cannot be decoded stays as written; an unknown charset and text outside words are
    read as UTF-8, with a replacement character for what is not. Linear time, unlike the
    stdlib's ``decode_header`` (quadratic on many words), so no bound on length is needed.
    """
    pieces: list[tuple[bytes, bytes | None]] = []  # (bytes, charset or None for text)
    pos = 0
    after_word = False
    for match in _ENCODED_WORD.finditer(value):
        gap = value[pos : match.start()]
        if gap and not (after_word and not gap.strip(b" \t\r\n")):
            pieces.append((gap, None))
        data = _word_bytes(match[2], match[3])
        after_word = data is not None
        charset = match[1].split(b"*")[0].lower()
        pieces.append((match[0], None) if data is None else (data, charset))
        pos = match.end()
    pieces.append((value[pos:], None))
    merged: list[tuple[bytearray, bytes | None]] = []
    for data, charset in pieces:
        if merged and merged[-1][1] == charset:
            merged[-1][0].extend(data)
        else:
            merged.append((bytearray(data), charset))
    return "".join(_as_text(bytes(data), charset) for data, charset in merged)


def _word_bytes(encoding: bytes, text: bytes) -> bytes | None:
    try:
        if encoding in b"Qq":
            return binascii.a2b_qp(text, header=True)
        return binascii.a2b_base64(text + b"=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None


def _as_text(data: bytes, charset: bytes | None) -> str:
    try:
        return data.decode((charset or b"utf-8").decode("ascii"), errors="replace")
    except (LookupError, UnicodeError, ValueError, TypeError):
        return data.decode("utf-8", errors="replace")
