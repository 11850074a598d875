"""The web layer's pieces, without a browser: the sanitiser, file names, the MIME walk's
bounds, CSRF tokens, the listen settings, a clean stop, and the seam to the core (the
real ``Portal`` is a ``PortalBackend``)."""

from __future__ import annotations

import inspect
from email.message import EmailMessage
from typing import get_type_hints

import httpx
import pytest
from harness.portal_pages import Clock, Mailbox, portal_config

from securemail.config import PortalConfig
from securemail.errors import InputError
from securemail.portal import Portal
from securemail.web.app import create_app
from securemail.web.backend import PortalBackend
from securemail.web.guard import Csrf
from securemail.web.message_view import MAX_DEPTH, MAX_PARTS, view_message
from securemail.web.sanitise import clean_html, content_disposition, safe_filename
from securemail.web.serve import portal_listen, start_portal_web


def test_clean_html_keeps_structure_and_drops_everything_active():
    html = (
        '<h2 style="x">Hi</h2><a href="https://nhs.uk">ok</a><a href="javascript:x">no</a>'
        '<img src="cid:a@b"><img src="cid:unknown"><img src="data:image/png;base64,AA">'
        "<form><input></form><math><mi>x</mi></math>"
    )
    cleaned = clean_html(html, {"a@b": "/read/part/1"}.get)
    assert cleaned == (
        '<h2>Hi</h2><a href="https://nhs.uk" rel="noopener noreferrer">ok</a>'
        '<a rel="noopener noreferrer">no</a><img src="/read/part/1"><img><img>'
    )


@pytest.mark.parametrize(
    ("given", "safe"),
    [
        ("notes.txt", "notes.txt"),
        ("../x/../../y.txt", "y.txt"),
        ("C:\\Users\\me\\z.doc", "z.doc"),
        ("...hidden", "hidden"),
        ("a..b.pdf", "a.b.pdf"),
        ('what?<"*|>.txt', "what.txt"),
        ("\u202e\u200bname.pdf", "name.pdf"),
        ("", "attachment"),
        (None, "attachment"),
    ],
)
def test_safe_filename(given, safe):
    assert safe_filename(given) == safe


def test_content_disposition_has_an_ascii_fallback_and_utf8_name():
    assert content_disposition("résumé 1.pdf") == (
        "attachment; filename=\"r_sum_ 1.pdf\"; filename*=UTF-8''r%C3%A9sum%C3%A9%201.pdf"
    )


def test_the_mime_walk_is_bounded_in_depth_and_parts():
    deep = EmailMessage()
    deep.set_content("bottom")
    for _ in range(MAX_DEPTH + 3):
        outer = EmailMessage()
        outer.make_mixed()
        outer.attach(deep)
        deep = outer
    view = view_message(b"Subject: deep\r\n" + bytes(deep))
    assert any("deeper" in note for note in view.notes) and view.text == ""
    wide = EmailMessage()
    wide["Subject"] = "wide"
    wide.set_content("body")
    for n in range(MAX_PARTS + 20):
        wide.add_attachment(b"x", maintype="application", subtype="octet-stream", filename=f"{n}")
    view = view_message(bytes(wide))
    assert len(view.attachments) == MAX_PARTS - 1  # the body is the first leaf
    assert any(str(MAX_PARTS) in note for note in view.notes)


def test_an_svg_is_never_an_inline_image():
    msg = EmailMessage()
    msg.set_content("<p>x</p>", subtype="html")
    msg.add_related(b"<svg onload='alert(1)'/>", maintype="image", subtype="svg+xml", cid="<s@x>")
    view = view_message(bytes(msg))
    assert view.inline == {} and [p.content_type for p in view.attachments] == ["image/svg+xml"]


def test_csrf_tokens_are_bound_to_purpose_and_binding():
    csrf = Csrf(b"k" * 32)
    token = csrf.token("reply", "session-a")
    assert csrf.valid("reply", "session-a", token)
    assert not csrf.valid("reply", "session-b", token)
    assert not csrf.valid("verify", "session-a", token)
    assert not csrf.valid("reply", "", csrf.token("reply", ""))
    assert not Csrf().valid("reply", "session-a", token)  # another process's secret


@pytest.mark.parametrize(
    ("listen", "base_url", "key"),
    [
        ("0.0.0.0", "https://portal.example", "portal.listen"),
        ("host:99999", "https://portal.example", "portal.listen"),
        ("[::1]:8443", "http://portal.example", "portal.base_url"),
        ("[::1]:8443", "https://portal.example/path", "portal.base_url"),
    ],
)
def test_portal_listen_refuses_bad_values(listen, base_url, key):
    with pytest.raises(InputError, match=key):
        portal_listen(listen, base_url)


def test_portal_listen_reads_host_port_and_base_url():
    listen = portal_listen("[::1]:8443", "https://portal.example.nhs.uk/")
    assert (listen.host, listen.port, listen.base_url) == (
        "::1",
        8443,
        "https://portal.example.nhs.uk",
    )


async def test_the_listener_serves_https_and_stops_cleanly(pki, tmp_path):
    async def submit(rcpt: str, raw: bytes) -> None:
        raise AssertionError("no reply expected")

    portal = Portal.open(portal_config(tmp_path, "https://x"), clock=Clock(), send=Mailbox())
    await portal.start()
    app = create_app(portal, base_url="https://x", submit_reply=submit)
    listen = portal_listen("127.0.0.1:0", "https://localhost")
    server = await start_portal_web(app, listen, pki.server_context("localhost"))
    url = f"https://localhost:{server.port}"
    async with httpx.AsyncClient(verify=pki.client_context()) as http:
        response = await http.get(f"{url}/static/portal.css")
        assert response.status_code == 200 and "focus-visible" in response.text
        assert (await http.get(f"{url}/m/unknown")).status_code == 404
    await server.stop(grace=2)
    await portal.close()
    async with httpx.AsyncClient(verify=pki.client_context()) as http:
        with pytest.raises(httpx.ConnectError):
            await http.get(f"{url}/m/unknown")


def _members(protocol: type) -> list[str]:
    return [n for n, v in vars(protocol).items() if inspect.isfunction(v) and n[0] != "_"]


@pytest.mark.parametrize("name", _members(PortalBackend))
def test_the_real_portal_satisfies_portal_backend(name):
    """What a type checker would say of ``backend: PortalBackend = Portal(...)``, checked
    at run time member by member (ruff has no type checker, and none is installed):
    the same coroutine-ness, parameters and resolved annotations, so the web layer is
    written against exactly what ``Portal`` answers."""
    backend: PortalBackend = Portal.open(PortalConfig())  # nothing opened before start()
    wanted, given = getattr(PortalBackend, name), getattr(type(backend), name)
    assert inspect.iscoroutinefunction(wanted) == inspect.iscoroutinefunction(given)
    shape = [(p.name, p.kind, p.default) for p in inspect.signature(wanted).parameters.values()]
    assert shape == [
        (p.name, p.kind, p.default) for p in inspect.signature(given).parameters.values()
    ]
    assert get_type_hints(wanted) == get_type_hints(given)
