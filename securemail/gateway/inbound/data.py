"""The DATA phase in one pass over bytes, and the bound on DATA held across connections.

aiosmtpd reads DATA a line at a time into a Python list of ``bytearray`` lines and joins
them at the end: 4.9 M empty lines (under a 10 MB size limit) cost ~400 MB per connection
and seconds of CPU. ``DataReader`` takes the bytes as they arrive, in chunks, and does
everything in one pass into one buffer: it finds the end (only ``CRLF.CRLF``, so
``\\n.\\n`` cannot end a message — CVE-2024-27305 and CVE-2023-51766), removes the
transparency dot (RFC 5321 §4.5.2), turns bare CR and bare LF into CRLF (so nothing we
relay can end a message early at the next hop), and enforces the line length (RFC 5321
§4.5.3.1.6) and size limits. It never does I/O: the listener feeds it. The buffer is a
``BytesIO``, whose ``getvalue()`` hands over its own bytes object, so the finished
message is not copied (a ``bytearray`` would need ``bytes()``, a second copy).

Every line handed to the per-chunk work starts at a line start and ends with CRLF (an
unfinished line waits, at most one line long, for the next chunk), so the byte-level
replacements below see exactly what a line-by-line reading would.

The bytes kept are counted against the ``DataBudget`` shared by all connections
(``[listen] max_data_in_flight``): past it a DATA is drained and answered ``452 4.3.1``
(try later) instead of growing the process.
"""

from __future__ import annotations

import enum
import io
import re

from securemail.core import replies
from securemail.core.replies import SmtpReply
from securemail.gateway.inbound.capacity import DataBudget

_BARE_NEWLINE = re.compile(rb"\r(?!\n)|(?<!\r)\n")
_END = b"\r\n.\r\n"
_TAIL = len(_END) - 1  # what must be kept, mid-line, to see an end split across chunks


class DataState(enum.Enum):
    NOMINAL = "nominal"
    TOO_LONG = "line too long"
    TOO_MUCH = "too much data"
    NO_ROOM = "DATA in flight over the limit"


_REFUSALS: dict[DataState, SmtpReply] = {
    DataState.TOO_LONG: replies.LINE_TOO_LONG,
    DataState.TOO_MUCH: replies.MESSAGE_TOO_BIG,
    DataState.NO_ROOM: replies.INSUFFICIENT_STORAGE,
}


class DataReader:
    """One DATA transfer: ``feed`` chunks until ``done``, then ``content()`` or ``refusal``.

    ``max_size`` bounds the message as stored (dot-unstuffed, every line ending CRLF:
    the size RFC 1870 ``SIZE`` means), so the buffer never exceeds it.
    ``max_line`` counts a line as sent, with its CRLF (aiosmtpd's 1001: 998 octets,
    CRLF and a transparency dot). Once over a limit the rest is drained, not kept, and
    the reply waits for the end of DATA (RFC 5321 §4.2.5). Call ``release`` when the
    message is no longer held, whatever happened.
    """

    def __init__(self, max_size: int, max_line: int, budget: DataBudget) -> None:
        self.max_size = max_size
        self.max_line = max_line
        self.budget = budget
        self.state = DataState.NOMINAL
        self.done = False
        self._body = io.BytesIO()
        self._reserved = 0
        self._pending = b""  # an unfinished line (or, mid-line, the last bytes seen)
        self._line_start = True  # does _pending start at the start of a line?

    @property
    def refusal(self) -> SmtpReply | None:
        return _REFUSALS.get(self.state)

    def feed(self, chunk: bytes) -> bytes:
        """Take the next bytes; once ``done``, return what followed the end (the next
        command, from a client that did not wait for our reply)."""
        data = self._pending + chunk if self._pending else chunk
        if self._line_start and data.startswith(b".\r\n"):
            end = 0
        else:
            found = data.find(_END)
            end = found + 2 if found >= 0 else -1
        if end >= 0:
            self._lines(data[:end])
            self.done = True
            self._pending = b""
            return data[end + 3 :]
        last = data.rfind(b"\r\n")
        cut = last + 2 if last >= 0 else 0
        if cut:
            self._lines(data[:cut])
            self._line_start = True
        self._pending = data[cut:]
        if len(self._pending) >= self.max_line:  # its CRLF would make it longer still
            self._refuse(DataState.TOO_LONG)
        if self.state is not DataState.NOMINAL and len(self._pending) > _TAIL:
            self._pending = self._pending[-_TAIL:]
            self._line_start = False
        return b""

    def content(self) -> bytes:
        """The message, once ``done`` with no refusal; the buffer is freed."""
        assert self.done and self.state is DataState.NOMINAL
        data = self._body.getvalue()
        self._body = io.BytesIO()
        return data

    def release(self) -> None:
        self._body = io.BytesIO()
        self.budget.give(self._reserved)
        self._reserved = 0

    def _lines(self, lines: bytes) -> None:
        """Whole lines, each ending CRLF, the first at a line start (so while NOMINAL)."""
        if self.state is not DataState.NOMINAL or not lines:
            return
        if has_long_line(lines, self.max_line - 2):
            self._refuse(DataState.TOO_LONG)
            return
        if lines[:1] == b".":
            lines = lines[1:]
        lines = lines.replace(b"\r\n.", b"\r\n")
        if not crlf_only(lines):
            lines = _BARE_NEWLINE.sub(b"\r\n", lines)
        if self._body.tell() + len(lines) > self.max_size:
            self._refuse(DataState.TOO_MUCH)
        elif not self.budget.take(len(lines)):
            self._refuse(DataState.NO_ROOM)
        else:
            self._reserved += len(lines)
            self._body.write(lines)

    def _refuse(self, state: DataState) -> None:
        if self.state is DataState.NOMINAL:
            self.state = state
            self.release()


def has_long_line(data: bytes, limit: int) -> bool:
    """Is a line of ``data`` (split at CRLF only, CRLF not counted) longer than ``limit``
    (≥ 0)? ``max(map(len, data.split(b"\r\n"))) > limit``, without the list of lines.

    From a line start, the last CRLF within ``limit + 2`` bytes ends a run of lines no
    longer than ``limit``; none there, and the line going on past it is too long. Each
    step is one ``rfind`` (a C loop) over at most ``limit + 2`` bytes, and two steps
    always advance by more than ``limit``, so this stays O(n) for any input; a 4 KB chunk
    of 80-octet lines takes 5 steps, where ``split`` made a list of 51 lines.
    """
    start, size = 0, len(data)
    while start < size:
        last = data.rfind(b"\r\n", start, start + limit + 2)
        if last < 0:
            return size - start > limit  # the line from start ends at the end of data
        start = last + 2
    return False


def crlf_only(data: bytes) -> bool:
    """True when every CR in ``data`` is followed by LF and every LF preceded by CR:
    ``_BARE_NEWLINE`` would find nothing to change. Three ``count`` calls (C loops over
    the bytes, ~20 µs for 10 KB) instead of a search with ``_BARE_NEWLINE``, whose
    look-behind branch is tried at every position (~270 µs for 10 KB): the CRLF pairs
    never overlap, so as many CR and as many LF as CRLF means no bare one."""
    pairs = data.count(b"\r\n")
    return data.count(b"\r") == pairs and data.count(b"\n") == pairs
