"""aiosmtpd's ``SMTP.__init__`` without its per-connection introspection, and its
``_getaddr`` without a class built per MAIL and RCPT.

aiosmtpd builds three method tables in every protocol's ``__init__``: ``inspect.
getmembers`` of the protocol and of the handler (AUTH mechanisms), ``dir`` of both
(``handle_*`` hooks, ``smtp_*`` commands) and ``inspect.signature`` of the EHLO hook,
then formats a log line listing the AUTH mechanisms whether or not INFO is on. That is
~0.3 ms of CPU per connection, on the event loop, a tenth of all the CPU a relayed
message costs (``bench/relay_bench.py``, one message per connection). The names in those
tables depend only on the classes, so they are found once per (protocol class, handler
class) here, and each connection only binds them (a dict of a dozen ``getattr``).

``initialise`` sets exactly the attributes aiosmtpd 1.4's ``__init__`` sets, to the same
values, for the arguments the listeners pass; ``tests/gateway/test_smtp_init.py`` builds
one protocol each way and compares every attribute, so an aiosmtpd upgrade that changes
its ``__init__`` fails that test instead of drifting.

``getaddr`` is aiosmtpd 1.4's ``SMTP._getaddr``: the MAIL and RCPT path parsed by the
email package's RFC 5322 parser, ~70 µs of CPU per path, most of it building and
joining its token tree, plus a ``typing.Protocol`` class aiosmtpd declares inside the
function on every call. Nearly every path is ``<dot-atom@dot-atom>``, for which that
parser's answer is the text between the brackets; such a path is answered directly
(~2 µs), anything else goes to the parser as before. The same test file compares the
two on generated arguments, so the shortcut can only ever give the parser's answer.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import re
import ssl
from email._header_value_parser import get_addr_spec, get_angle_addr
from email.errors import HeaderParseError
from typing import Any

from aiosmtpd.smtp import SMTP, __ident__, _AuthMechAttr, login_always_fail


@functools.cache
def _auth_names(protocol: type, handler: type) -> tuple[tuple[str, str, bool], ...]:
    """(mechanism, attribute, built in) for each ``auth_*`` member, as aiosmtpd names
    them: the protocol's first, then the handler's, a later one replacing an earlier."""
    found: dict[str, tuple[str, str, bool]] = {}
    for owner, builtin in ((protocol, True), (handler, False)):
        for name, member in inspect.getmembers(owner):
            if name.startswith("auth_"):
                mechanism = getattr(
                    member, "__auth_mechanism_name__", name.replace("auth_", "").replace("__", "-")
                )
                found[mechanism] = (mechanism, name, builtin)
    return tuple(found.values())


@functools.cache
def _prefixed(cls: type, prefix: str) -> tuple[str, ...]:
    return tuple(name for name in dir(cls) if name.startswith(prefix))


@functools.cache
def _ehlo_version(handler: type) -> str | None:
    hook = getattr(handler, "handle_EHLO", None)
    if hook is None:
        return None
    params = len(inspect.signature(hook).parameters) - 1  # unbound: drop ``self``
    if params == 5:
        return "new"
    raise RuntimeError("the gateway's handlers use the 5-argument handle_EHLO hook")


def initialise(
    protocol: SMTP, handler: Any, *, data_size_limit: int | None, enable_SMTPUTF8: bool,
    hostname: str, ident: str | None, tls_context: ssl.SSLContext | None,
    require_starttls: bool, timeout: float, auth_required: bool, auth_require_tls: bool,
    command_call_limit: int,
) -> None:  # fmt: skip
    """What ``SMTP.__init__(handler, **those)`` does, from cached method names."""
    protocol.__ident__ = ident or __ident__
    protocol.loop = asyncio.get_running_loop()
    asyncio.StreamReaderProtocol.__init__(
        protocol,
        asyncio.StreamReader(loop=protocol.loop, limit=protocol.line_length_limit),
        client_connected_cb=protocol._cb_client_connected,
        loop=protocol.loop,
    )
    protocol.event_handler = handler
    protocol.data_size_limit = data_size_limit
    protocol.enable_SMTPUTF8 = enable_SMTPUTF8
    protocol._decode_data = False
    protocol.command_size_limits.clear()  # aiosmtpd's own (class-level) reset
    protocol.hostname = hostname
    protocol.tls_context = tls_context
    protocol.require_starttls = bool(tls_context) and require_starttls
    protocol._timeout_duration = timeout
    protocol._timeout_handle = None
    protocol._tls_handshake_okay = True
    protocol._tls_protocol = None
    protocol._original_transport = None
    protocol.session = None
    protocol.envelope = None
    protocol.transport = None
    protocol._handler_coroutine = None
    protocol._auth_require_tls = auth_require_tls
    protocol._proxy_timeout = None
    protocol._authenticator = None
    protocol._auth_callback = login_always_fail
    protocol._auth_required = auth_required
    protocol._auth_methods = {
        mechanism: _AuthMechAttr(getattr(protocol if builtin else handler, name), builtin)
        for mechanism, name, builtin in _auth_names(type(protocol), type(handler))
    }
    protocol._handle_hooks = {
        name.replace("handle_", ""): getattr(handler, name)
        for name in _prefixed(type(handler), "handle_")
    }
    protocol._ehlo_hook_ver = _ehlo_version(type(handler))
    protocol._smtp_methods = {
        name.replace("smtp_", ""): getattr(protocol, name)
        for name in _prefixed(type(protocol), "smtp_")
    }
    protocol._enforce_call_limit = True
    protocol._call_limit_base = {}
    protocol._call_limit_default = command_call_limit


_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"  # RFC 5322 atext, ASCII
_DOT_ATOM = rf"{_ATOM}(?:\.{_ATOM})*"
_PLAIN_PATH = re.compile(rf"<({_DOT_ATOM}@{_DOT_ATOM})>")


def getaddr(protocol: SMTP, arg: str) -> tuple[str | None, str | None]:
    """``SMTP._getaddr``: (address, the rest of the argument), ("", "") for no argument,
    (None, None) for one that does not parse or has too long a local part."""
    if not arg:
        return "", ""
    plain = _PLAIN_PATH.match(arg)
    if plain is not None:
        rest = arg[plain.end() :]
        if rest[:1] in (" ", "\t"):
            rest = rest.lstrip()  # the parser's folding white space: str.lstrip()
        if not rest.startswith("("):  # a comment: the parser's business
            return _within_limit(protocol, plain[1], rest)
    try:
        if arg.lstrip().startswith("<"):
            address, rest = get_angle_addr(arg)
        else:
            address, rest = get_addr_spec(arg)
    except HeaderParseError:
        return None, None
    return _within_limit(protocol, address.addr_spec, rest)


def _within_limit(protocol: SMTP, addr: str, rest: str) -> tuple[str | None, str | None]:
    localpart = addr.rpartition("@")[0]
    if protocol.local_part_limit and len(localpart) > protocol.local_part_limit:
        return None, None
    return addr, rest
