"""``DataReader`` reads DATA as aiosmtpd did, line by line, whatever the chunking.

The reference below is aiosmtpd 1.4.6's DATA loop (lines split at CRLF only, the first
dot of a line removed, CRLF.CRLF the end, 1001-octet lines) followed by the listener's
old bare CR/LF normalisation: the reader must give the same message, the same refusal,
and leave the same bytes for the next command, for any split of the stream into
chunks. (Through the listener: tests/security/test_listener_memory.py.)
"""

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from securemail.core import replies
from securemail.gateway.inbound.capacity import DataBudget
from securemail.gateway.inbound.data import DataReader, crlf_only, has_long_line

MAX_LINE = 1001
BARE = re.compile(rb"\r(?!\n)|(?<!\r)\n")


def reference(stream: bytes, max_size: int) -> tuple[bytes | None, str, bytes] | None:
    """(message or None, refusal, rest) as aiosmtpd + normalisation; None: no end yet.

    The first limit passed decides the refusal, as in aiosmtpd."""
    kept, pos, refusal = b"", 0, ""
    while True:
        end = stream.find(b"\r\n", pos)
        if end < 0:
            return None
        line = stream[pos : end + 2]
        pos = end + 2
        if line == b".\r\n":
            break
        if refusal:
            continue
        if len(line) > MAX_LINE:
            refusal = str(replies.LINE_TOO_LONG)
            continue
        kept += BARE.sub(b"\r\n", line[1:] if line.startswith(b".") else line)
        if len(kept) > max_size:
            refusal = str(replies.MESSAGE_TOO_BIG)
    return (None if refusal else kept), refusal, stream[pos:]


def read(
    chunks: list[bytes], max_size: int, budget: DataBudget
) -> tuple[bytes | None, str, bytes] | None:
    reader = DataReader(max_size, MAX_LINE, budget)
    rest = b""
    for i, chunk in enumerate(chunks):
        rest = reader.feed(chunk)
        if reader.done:
            rest += b"".join(chunks[i + 1 :])
            break
    else:
        reader.release()
        return None
    try:
        if reader.refusal is not None:
            return None, str(reader.refusal), rest
        return reader.content(), "", rest
    finally:
        reader.release()


PIECES = [b"\r\n", b".", b"..", b"\r", b"\n", b"x", b"\r\n.\r\n", b".\r\n", b"\n.\n", b"ab" * 40,
          b"z" * 500]  # fmt: skip
streams = st.lists(st.sampled_from(PIECES), max_size=40).map(b"".join)


@settings(max_examples=400, deadline=None)
@given(streams, st.lists(st.integers(1, 700), min_size=1, max_size=30), st.integers(40, 3000))
def test_same_as_line_by_line_for_any_chunking(stream, sizes, max_size):
    stream += b"\r\n.\r\nQUIT\r\n"  # always an end, and a command after it
    chunks, pos = [], 0
    for size in sizes * (len(stream) // len(sizes) + 1):
        if pos >= len(stream):
            break
        chunks.append(stream[pos : pos + size])
        pos += size
    budget = DataBudget(10**6)
    assert read(chunks, max_size, budget) == reference(stream, max_size)
    assert budget.held == 0


def test_long_line_refused_whatever_the_chunks():
    stream = b"a" * 999 + b"\r\n" + b"b" * 1000 + b"\r\n.\r\n"
    for size in (1, 7, 1000, 1001, len(stream)):
        chunks = [stream[i : i + size] for i in range(0, len(stream), size)]
        assert read(chunks, 10**6, DataBudget(10**6)) == reference(stream, 10**6)


def test_a_line_without_end_is_not_kept():
    reader = DataReader(10**6, MAX_LINE, DataBudget(10**6))
    for _ in range(1000):
        reader.feed(b"x" * 1000)  # one line of 1 MB, no CRLF
    assert reader.refusal == replies.LINE_TOO_LONG and len(reader._pending) < 8
    assert reader.feed(b"\r\n.\r\nNOOP\r\n") == b"NOOP\r\n"


def test_budget_shared_and_given_back():
    budget = DataBudget(1000)
    first, second = (DataReader(10**6, MAX_LINE, budget) for _ in range(2))
    first.feed(b"x" * 598 + b"\r\n")
    second.feed(b"y" * 498 + b"\r\n")
    assert second.refusal == replies.INSUFFICIENT_STORAGE and budget.held == 600
    first.feed(b".\r\n")
    assert first.done and first.content() == b"x" * 598 + b"\r\n"
    first.release()
    assert budget.held == 0


# The per-chunk checks, against the expressions they replaced (a list of every line; a
# regex search tried at every position), on bytes rich in what they look for.
line_bytes = st.binary().map(lambda b: bytes(b"\r\n.a"[x % 4] for x in b)) | st.lists(
    st.sampled_from([b"\r\n", b"\r", b"\n", b".", b"a" * 7, b"\r\r\n", b"\n\r"])
).map(b"".join)


@given(line_bytes, st.integers(0, 40))
@settings(max_examples=2000)
def test_has_long_line_is_the_longest_split_line(data, limit):
    assert has_long_line(data, limit) == (max(map(len, data.split(b"\r\n"))) > limit)


@given(line_bytes)
@settings(max_examples=2000)
def test_crlf_only_is_no_bare_newline(data):
    assert crlf_only(data) == (BARE.search(data) is None)
