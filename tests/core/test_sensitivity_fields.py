"""The scanner's Content-* fields and transfer decoding are the stdlib's answers, kept by
value (``sensitivity._parse_fields``) and undone without building a message per part
(``sensitivity._decoded``). Each is held against the stdlib path it replaced, on
ordinary, odd and hostile values, so the cache is never a second parser."""

from __future__ import annotations

import base64
import binascii
from email import policy
from email.message import EmailMessage

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from securemail.core import sensitivity
from securemail.core.message import read_headers

POLICY = policy.default.clone(header_factory=sensitivity._Headers())

TYPES = [
    None,
    "text/plain",
    'text/plain; charset="utf-8"',
    "TEXT/HTML; CHARSET=ISO-8859-1",
    "text/plain; charset*=utf-8''%E2%82%AC",
    'multipart/mixed; boundary="=_b1"',
    "multipart/alternative; boundary=abc; boundary=def",
    "multipart/mixed",
    "message/rfc822",
    'application/pdf; name="=?utf-8?q?lettre_=C3=A9t=C3=A9.pdf?="',
    'application/octet-stream; name*0="a"; name*1="b.zip"',
    "text",
    "/",
    ";;;",
    "text/plain; charset",
    'text/plain; charset="unterminated',
    "text/plain; charset*=bogus''x",
    "text/plain; charset*=utf-8'en'%ZZ",
    "image/png (comment) ; name=x.png",
]
ENCODINGS = [None, "7bit", "Quoted-Printable", "base64", " BASE64 ", "x-uuencode", "uue",
             "8bit", "binary", "bogus", "quoted-printable; x=y"]  # fmt: skip
DISPOSITIONS = [None, "inline", 'attachment; filename="r\u00e9sum\u00e9.pdf"',
                "attachment; filename*=utf-8''%E2%82%AC.txt", "attachment; filename=",
                'attachment; filename="../../etc/passwd"', "attachment; filename*0*=x'y'%"]  # fmt: skip
BODIES = [
    b"plain text\r\nline two\r\n",
    b"caf=C3=A9 =\r\nsoft break=3D\r\n",
    base64.b64encode(b"hello world, NHS 943 476 5919") + b"\r\n",
    b"aGVsbG8gd29y\r\nbGQ=\r\n",
    b"!!!not base64!!!\r\n",
    b"aGVsbG8",
    binascii.b2a_uu(b"uuencoded text"),
    b"begin 644 x.txt\n" + binascii.b2a_uu(b"inside begin") + b"`\nend\n",
    b"begin 644 x\nnot uu at all\nend\n",
    "non-ascii \u00e9 in 7bit".encode(),
    b"\xff\xfe\x00raw",
]


def outcome(fn, *args):  # type: ignore[no-untyped-def]
    """The answer, or the type of what was raised (the walk reads such a part as text)."""
    try:
        return fn(*args)
    except Exception as exc:
        return type(exc)


def stdlib(texts: tuple[str | None, ...], default_type: str, body: bytes) -> tuple[object, ...]:
    """What the scanner did before: one EmailMessage per entity, the stdlib's answers."""
    info = EmailMessage(policy=POLICY)
    info.set_default_type(default_type)
    for name, text in zip(sensitivity._CONTENT_FIELDS, texts, strict=True):
        if text is not None:
            info.set_raw(name, text)

    def attempt(fn):  # type: ignore[no-untyped-def]
        try:
            return fn()
        except Exception as exc:
            return type(exc)

    content_type = info.get_content_type()
    boundary = info.get_boundary() if info.get_content_maintype() == "multipart" else None
    info.set_payload(body.decode("ascii", "surrogateescape"))
    payload = info.get_payload(decode=True)
    return (content_type, info.get_content_maintype(), boundary,
            attempt(info.get_content_charset), attempt(lambda: info.get_filename() or ""),
            payload if isinstance(payload, bytes) else body)  # fmt: skip


def ours(texts: tuple[str | None, ...], default_type: str, body: bytes) -> tuple[object, ...]:
    head = "".join(
        f"{name}: {text}\r\n"
        for name, text in zip(sensitivity._CONTENT_FIELDS, texts, strict=True)
        if text is not None
    )
    fields = sensitivity._content_fields(read_headers(head.encode() + b"\r\n"), default_type)

    def attempt(fn):  # type: ignore[no-untyped-def]
        try:
            return fn()
        except Exception as exc:
            return type(exc)

    return (fields.content_type, fields.maintype, fields.boundary, attempt(fields.charset),
            attempt(fields.filename), sensitivity._decoded(fields, body))  # fmt: skip


@pytest.mark.parametrize("content_type", TYPES)
@pytest.mark.parametrize("cte", ENCODINGS)
def test_fields_and_decoding_are_the_stdlibs(content_type: str | None, cte: str | None) -> None:
    for i, body in enumerate(BODIES):
        texts = (content_type, cte, DISPOSITIONS[i % len(DISPOSITIONS)])
        default = ("text/plain", "message/rfc822")[i % 2]
        assert outcome(ours, texts, default, body) == outcome(stdlib, texts, default, body)
        # and again, from the cache
        assert outcome(ours, texts, default, body) == outcome(stdlib, texts, default, body)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(["text/plain", "multipart/mixed", "application/pdf", "TeXt/HtMl"]),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=0x2FF), max_size=40),
    st.sampled_from(ENCODINGS),
    st.binary(max_size=200),
)
def test_any_parameters_and_body_match_the_stdlib(
    base: str, params: str, cte: str | None, body: bytes
) -> None:
    texts = (f"{base}; {params}", cte, f"attachment; filename={params}")
    assert outcome(ours, texts, "text/plain", body) == outcome(stdlib, texts, "text/plain", body)


def test_long_values_are_not_kept() -> None:
    sensitivity._parse_fields.cache_clear()
    long_type = "text/plain; x=" + "y" * 600
    ours((long_type, None, None), "text/plain", b"x")
    ours(("text/plain", None, None), "text/plain", b"x")
    assert sensitivity._parse_fields.cache_info().currsize == 1
