"""``smtp_init.initialise`` sets what aiosmtpd's ``SMTP.__init__`` sets, attribute for
attribute, for the arguments the listeners pass: built both ways and compared, so an
aiosmtpd whose ``__init__`` changes fails here rather than drifting. ``smtp_init.getaddr``
(the protocol's ``_getaddr``) answers what aiosmtpd's ``SMTP._getaddr`` answers."""

from __future__ import annotations

import asyncio
import inspect
import ssl
import warnings
import weakref
from collections.abc import Callable

import pytest
from aiosmtpd.smtp import SMTP
from hypothesis import given, settings
from hypothesis import strategies as st

from securemail.gateway.inbound.server import GatewayHandler, GatewaySMTP
from securemail.gateway.inbound.smtp_init import initialise

ARGS = dict(
    hostname="mail.example.nhs.uk", ident="securemail", require_starttls=True,
    auth_required=True, auth_require_tls=True, data_size_limit=10_000_000, timeout=300,
    enable_SMTPUTF8=True, command_call_limit=1000,
)  # fmt: skip


def _comparable(value: object) -> object:
    """Bound methods compared by (function, instance kind); readers by their limit."""
    if inspect.ismethod(value):
        return ("method", value.__func__, type(value.__self__).__name__)
    if isinstance(value, weakref.ref):
        value = value()
    if isinstance(value, asyncio.StreamReader):
        return ("reader", value._limit)  # type: ignore[attr-defined]
    if isinstance(value, asyncio.Future):
        return ("future", value.done())
    if isinstance(value, dict):
        return {k: _comparable(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(_comparable(v) for v in value)
    if callable(value) and not isinstance(value, type):
        return ("callable", getattr(value, "__qualname__", repr(value)))
    return value


async def test_initialise_sets_what_smtp_init_sets() -> None:
    handler = GatewayHandler("inbound", classify=lambda a: None, accept=None, own_domains=["x"])  # type: ignore[arg-type]
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    theirs = GatewaySMTP.__new__(GatewaySMTP)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        SMTP.__init__(theirs, handler, tls_context=context, **ARGS)
    ours = GatewaySMTP.__new__(GatewaySMTP)
    initialise(ours, handler, tls_context=context, **ARGS)
    mine, reference = vars(ours), vars(theirs)
    assert sorted(mine) == sorted(reference)
    for name in reference:
        assert _comparable(mine[name]) == _comparable(reference[name]), name
    assert list(ours._auth_methods) == list(theirs._auth_methods) == ["LOGIN", "PLAIN"]
    assert ours._smtp_methods.keys() == theirs._smtp_methods.keys()
    assert ours._ehlo_hook_ver == "new"


async def test_every_connection_gets_its_own_bound_methods() -> None:
    handler = GatewayHandler("inbound", classify=lambda a: None, accept=None, own_domains=["x"])  # type: ignore[arg-type]
    one = GatewaySMTP(handler, tls_context=None, **ARGS)
    two = GatewaySMTP(handler, tls_context=None, **ARGS)
    assert one._smtp_methods["DATA"].__self__ is one
    assert two._smtp_methods["DATA"].__self__ is two
    assert one._auth_methods["PLAIN"].method.__self__ is one
    assert one._handle_hooks["DATA"].__self__ is handler


dot_atoms = st.lists(
    st.text(alphabet="aZ09!#$%&'*+/=?^_`{|}~-", min_size=1, max_size=4)
    | st.sampled_from(['"q"', "é", "", "\\", "[1]", " "]),
    min_size=1,
    max_size=3,
).map(".".join)
# MAIL/RCPT arguments as aiosmtpd passes them (after "FROM:"/"TO:"): paths, bare
# addresses, quoted and odd local parts, source routes, parameters, broken syntax.
address_args = st.one_of(
    st.sampled_from(
        [
            "",
            "<>",
            "<a@example.nhs.uk>",
            "<a@example.nhs.uk> SIZE=10240",
            "a@example.nhs.uk",
            " <a@b.test>",
            '<"john doe"@b.test>',
            "<@relay.test:a@b.test>",
            "<a@[192.0.2.1]>",
            "<postmaster>",
            "<a@b.test",
            "a b@c.test",
            "<a@b.test> REQUIRETLS BODY=8BITMIME",
            f"<{'x' * 65}@b.test>",
            "<a..b@c.test>",
            "<(comment)a@b.test>",
            "<a@b.test>x",
        ]
    ),
    st.text(alphabet='<>@."()[]:\\ ,;aZ09-_\t', max_size=40),
    # the shortcut's ground: dot-atoms in brackets (or nearly), and what may follow
    st.tuples(
        st.sampled_from(["<", "<", " <", "", "<<"]),
        dot_atoms,
        st.sampled_from(["@", "@", "@@", ""]),
        dot_atoms,
        st.sampled_from(
            [
                ">",
                "> ",
                ">\t",
                ">  SIZE=1",
                "> (c) X",
                ">(c)",
                "> \x0bX",
                ">X",
                "",
                "> \u2003Y",
                ">\t(c",
                ">)",
            ]
        ),
    ).map("".join),
)


@pytest.mark.parametrize("local_part_limit", [0, 64])
@settings(max_examples=400, deadline=None)
@given(arg=address_args)
def test_getaddr_is_aiosmtpds(arg: str, local_part_limit: int) -> None:
    """The same answer, or the same exception: the email parser raises IndexError on a
    lone '<' or '"', which aiosmtpd lets through to its session's error reply."""
    protocol = GatewaySMTP.__new__(GatewaySMTP)
    protocol.local_part_limit = local_part_limit

    def outcome(parse: Callable[[str], object]) -> object:
        try:
            return parse(arg)
        except Exception as exc:
            return type(exc)

    assert outcome(protocol._getaddr) == outcome(lambda a: SMTP._getaddr(protocol, a))
