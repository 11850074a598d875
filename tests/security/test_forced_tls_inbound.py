"""Attacks on forced TLS inbound: getting a secure domain's mail in over plain text.

Each goes through the live inbound listener in a session without TLS. The domain that
counts is the one DMARC judges (the header From's addr-spec, or every From mailbox when
there is no single one); spellings of a domain (case, IDNA forms) are one domain; what
is not an address at all is never accepted as one; and the REQUIRETLS parameter cannot
be slipped past the MAIL and RCPT parsers.
"""

import asyncio
import smtplib
import socket
import time

import pytest
from harness.gatewaykit import ORG_DOMAIN

pytestmark = pytest.mark.timeout(90)

JO = f"jo@{ORG_DOMAIN}"


def plain(gateway, sender: str, from_header: str | None = None, *, raw_from: str = "",
          options=()) -> list[tuple[int, bytes]]:  # fmt: skip
    """MAIL, RCPT, DATA over plain text as far as they go; the header From is
    ``From: {from_header}`` (or ``raw_from``, whole lines, when given)."""
    header = raw_from or f"From: {from_header or sender}\r\n"
    data = (
        f"{header}To: {JO}\r\nSubject: hello\r\nMessage-ID: <{time.time_ns()}@test>\r\n\r\nbody\r\n"
    ).encode()
    with smtplib.SMTP(*gateway.addresses["inbound"], timeout=30) as smtp:
        smtp.ehlo("mx.attacker.test")
        replies = [smtp.mail(sender, list(options))]
        if replies[-1][0] == 250:
            replies.append(smtp.rcpt(JO))
        if replies[-1][0] == 250:
            replies.append(smtp.data(data))
    return replies


async def attempt(gateway, *args, **kwargs) -> list[int]:
    return [code for code, _ in await asyncio.to_thread(plain, gateway, *args, **kwargs)]


@pytest.mark.parametrize(
    ("header", "codes"),
    [
        # Two From fields: which one a mail client shows is not guessed; nhs.net in
        # either refuses the message.
        ("From: x@evil.test\r\nFrom: gp@nhs.net\r\n", [250, 250, 530]),
        ("From: gp@nhs.net\r\nFrom: x@evil.test\r\n", [250, 250, 530]),
        ("From: x@evil.test, gp@nhs.net\r\n", [250, 250, 530]),
        # The addr-spec is the address; a display name or a comment is not.
        ('From: "x@evil.test" <gp@nhs.net>\r\n', [250, 250, 530]),
        ("From: gp@nhs.net (x@evil.test)\r\n", [250, 250, 530]),
        ("From: (x@evil.test) gp@nhs.net\r\n", [250, 250, 530]),
        ("From: =?utf-8?q?x=40evil=2Etest?= <gp@nhs.net>\r\n", [250, 250, 530]),
        ("From: GP@NHS.NET\r\n", [250, 250, 530]),
        ("FROM : gp@Trust.NHS.net\r\n", [250, 250, 530]),  # the name as the reader reads it
        ("From:\r\n gp@nhs.net\r\n", [250, 250, 530]),  # folded
    ],
)
async def test_header_from_tricks_do_not_hide_a_secure_domain(gateway_factory, header, codes):
    gateway = await gateway_factory()
    assert await attempt(gateway, "x@evil.test", raw_from=header) == codes
    assert await gateway.spool.list_messages() == []


@pytest.mark.parametrize(
    "header",
    [
        'From: "gp@nhs.net" <x@evil.test>\r\n',
        "From: =?utf-8?q?gp=40nhs=2Enet?= <x@evil.test>\r\n",
        "From: x@evil.test (gp@nhs.net)\r\n",
    ],
)
async def test_a_secure_domain_in_a_name_or_comment_is_not_the_sender(
    gateway_factory, internal, header
):
    """What DMARC judges is evil.test: no forced TLS (and no nhs.net trust) for it."""
    gateway = await gateway_factory()
    assert await attempt(gateway, "x@evil.test", raw_from=header) == [250, 250, 250]
    (got,) = await asyncio.to_thread(internal.wait, 1)
    assert b"header.from=evil.test" in got.data.replace(b"\r\n\t", b" ")


@pytest.mark.parametrize(
    ("sender", "code"),
    [
        ("GP@NHS.NET", 530),
        ("gp@Trust.Nhs.Net", 530),
        ("gp@nhs.net.evil.test", 250),  # whole labels: not under nhs.net
        ("gp@evilnhs.net", 250),
    ],
)
async def test_envelope_spellings(gateway_factory, sender, code):
    gateway = await gateway_factory()
    assert (await attempt(gateway, sender))[0] == code


async def test_a_final_dot_is_no_address(gateway_factory):
    """``gp@nhs.net.`` is not an address (so not nhs.net's, and not anyone's): 553 at
    MAIL, and as a header From it fails DMARC's one-From rule at end of DATA."""
    gateway = await gateway_factory()
    assert await attempt(gateway, "gp@nhs.net.") == [553]
    assert await attempt(gateway, "x@evil.test", "gp@nhs.net.") == [250, 250, 550]
    assert await gateway.spool.list_messages() == []


@pytest.mark.parametrize("listed", ["bücher.example", "xn--bcher-kva.example"])
async def test_idn_forms_of_a_listed_domain_are_one_domain(gateway_factory, listed):
    """``require_tls_from`` in either form forces both spellings of the domain."""
    gateway = await gateway_factory(inbound_extra=f'require_tls_from = ["{listed}"]')
    assert (await attempt(gateway, "a@xn--bcher-kva.example"))[0] == 530
    assert (await attempt(gateway, "a@bücher.example", options=["SMTPUTF8"]))[0] == 530
    from_header = "From: a@xn--bcher-kva.example\r\n"
    assert await attempt(gateway, "x@evil.test", raw_from=from_header) == [250, 250, 530]


def _raw(gateway, *commands: bytes) -> list[bytes]:
    """Each command's reply line, over plain text."""
    with socket.create_connection(gateway.addresses["inbound"], timeout=10) as s:
        f = s.makefile("rwb")
        f.readline()
        f.write(b"EHLO mx.attacker.test\r\n")
        f.flush()
        while not f.readline().startswith(b"250 "):
            pass
        out = []
        for command in commands:
            f.write(command + b"\r\n")
            f.flush()
            out.append(f.readline().rstrip())
        return out


async def test_requiretls_parameter_cannot_be_smuggled(gateway_factory):
    gateway = await gateway_factory()
    replies = await asyncio.to_thread(
        _raw,
        gateway,
        b"MAIL FROM:<x@partner.test> requiretls",  # any case: refused outside TLS
        b"MAIL FROM:<x@partner.test> REQUIRETLS=YES",  # takes no value: syntax error
        b"MAIL FROM:<x@partner.test> REQUIRETLS BOGUS=1",  # others still unknown
        b"MAIL FROM:<x@partner.test> BODY=BINARY REQUIRETLS",  # aiosmtpd's checks kept
        b"MAIL FROM:<x@partner.test>",
        b"RCPT TO:<jo@example.nhs.uk> REQUIRETLS",  # not a RCPT parameter
    )
    assert replies[0].startswith(b"530 5.7.0 ") and b"REQUIRETLS" in replies[0]
    assert replies[1].startswith(b"501 ")
    assert replies[2].startswith(b"555 ")
    assert replies[3].startswith(b"501 ")
    assert replies[4].startswith(b"250 ")
    assert replies[5].startswith(b"555 ")
