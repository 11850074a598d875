"""aiosmtpd's ``SMTP.__init__`` without its per-connection introspection.

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
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import ssl
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
