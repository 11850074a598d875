"""The shared reading of a message and of dkimpy's errors, for the signer and the verifier.

Signing and verifying must see the same header fields and the same body, or a message we
sign could verify differently elsewhere (or a crafted one verify here and not there), so
both take them from ``_for_dkimpy``, the one place ``read_headers``'s reading is turned
into the form dkimpy hashes. dkimpy's error texts are cleaned in one place too, so a
verdict's reason and a key problem read alike.
"""

from __future__ import annotations

import re

from securemail.core.message import read_headers

_FROM = b"from"

_LINE_END = re.compile(rb"\r?\n")
_WSP = re.compile(rb"\s+")
_BYTES_REPR = re.compile(r"b'([^']*)'")


def _for_dkimpy(message: bytes) -> tuple[list[list[bytes]], bytes]:
    """``(headers, body)`` as ``read_headers`` reads them, in the form dkimpy hashes.

    Each header is ``[name as written, value]``, the value being everything after the
    colon with its continuation lines, and every line end CRLF (as dkimpy's
    ``rfc822_parse`` gives them for a well-formed message, so canonicalization is
    byte-identical to dkimpy's). The body starts where the reader says it does.
    """
    block = read_headers(message)
    headers = [[f.name, _crlf(f.value) + b"\r\n"] for f in block.fields]
    return headers, _crlf(message[block.body_offset :])


def _crlf(text: bytes) -> bytes:
    """Every line end as CRLF (a bare LF becomes CRLF); all-CRLF text is returned as it is."""
    if text.count(b"\n") == text.count(b"\r\n"):
        return text
    return _LINE_END.sub(b"\r\n", text)


def _lower(name: bytes) -> bytes:
    return name.rstrip(b" \t").lower()


def _clean(error: object) -> str:
    """dkimpy's message without Python's ``b'...'`` around byte strings, on one line."""
    return _BYTES_REPR.sub(r"\1", _one_line(error))[:160]


def _one_line(error: object) -> str:
    text = " ".join(str(error).split())
    return text or type(error).__name__
