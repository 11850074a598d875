"""The portal's routes: a link opens a landing page, a passcode opens a session, the
session reads, downloads from and replies to one message.

``create_app`` is the composition root: it takes the portal core (any ``PortalBackend``,
in production ``securemail.portal.Portal``), the reply hand-off to the gateway's queue,
the clock and the limits, and returns the FastAPI app. No route trusts a path or form
value to name a message: ``/m/{token}`` pages resolve the token through the core, and
``/read`` pages serve only the message of the session in the cookie.

The core decides and counts (per-link passcode sends, tries, the lock, sessions); this
layer adds only what needs the client address (``ClientLimiter`` per address) and maps
each outcome the core can return to a page.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from securemail.portal.limits import ClientLimiter
from securemail.portal.records import (
    Access,
    Gone,
    Limited,
    Locked,
    PasscodeSent,
    PortalError,
    Refused,
    Session,
)
from securemail.web.backend import PortalBackend, SubmitReply
from securemail.web.guard import Csrf, Guard, WebLimits
from securemail.web.message_view import view_message
from securemail.web.sanitise import content_disposition, safe_filename

SESSION_COOKIE = "__Host-sm_session"
BROWSER_COOKIE = "__Host-sm_pre"
_STATIC = Path(__file__).with_name("static")


def create_app(
    backend: PortalBackend,
    *,
    base_url: str,
    submit_reply: SubmitReply,
    clock: Callable[[], float] = time.time,
    limits: WebLimits | None = None,
    csrf: Csrf | None = None,
) -> FastAPI:
    """The portal's web app over ``backend``; replies go to ``submit_reply``.

    ``base_url`` (``[portal] base_url``) is the address links in the emails use; pages
    show it so a reader can compare it with the address bar.
    """
    limits = limits or WebLimits()
    csrf = csrf or Csrf()
    passcodes = ClientLimiter(limits.passcodes_per_client, limits.window, clock=clock)
    verifies = ClientLimiter(limits.verifies_per_client, limits.window, clock=clock)
    env = Environment(
        loader=PackageLoader("securemail.web", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
    )
    env.filters["when"] = _when
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=_STATIC), name="static")

    def page(name: str, status: int = 200, **values: Any) -> HTMLResponse:
        html = env.get_template(name).render(base_url=base_url, **values)
        return HTMLResponse(html, status_code=status)

    def gone() -> HTMLResponse:
        return page("gone.html", 410, title="This message is no longer available")

    def browser_id(request: Request) -> str:
        return request.cookies.get(BROWSER_COOKIE, "")

    def client(request: Request) -> str:
        return request.client.host if request.client else ""

    def forbidden() -> HTMLResponse:
        return page("error.html", 403, title="This form has expired", detail="form")

    async def current(request: Request) -> Session | None:
        session_id = request.cookies.get(SESSION_COOKIE, "")
        return await backend.session(session_id) if session_id else None

    def ended() -> HTMLResponse:
        return page("error.html", 403, title="You need to open your link again", detail="ended")

    def locked(access: Access) -> HTMLResponse:
        return page("locked.html", 403, title="This message is locked", access=access)

    async def live(token: str) -> Access | HTMLResponse:
        """The link's ``Access``, or the page that answers instead: 404 for a token the
        core does not know, 410 revoked or expired, the locked page."""
        access = await backend.access(token)
        if access is None:
            raise StarletteHTTPException(404)
        if isinstance(access, Gone):
            return gone()
        return locked(access) if access.locked else access

    @app.exception_handler(PortalError)
    async def unreadable(request: Request, exc: PortalError) -> Response:
        """The session was live a moment ago but its message is no longer readable
        (revoked, expired or locked in between): open the link again, which says why."""
        return ended()

    @app.exception_handler(StarletteHTTPException)
    async def plain_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            return page("error.html", 404, title="Page not found", detail="missing")
        return page("error.html", exc.status_code, title="Something went wrong", detail="")

    @app.get("/m/{token}")
    async def landing(request: Request, token: str) -> Response:
        access = await live(token)
        if not isinstance(access, Access):
            return access
        browser = browser_id(request) or csrf.token("browser", str(clock()) + token)
        response = page(
            "landing.html",
            title=f"Secure message from {access.sender_name or access.sender}",
            access=access,
            token=token,
            csrf=csrf.token("passcode", browser),
        )
        if not browser_id(request):
            _set_cookie(response, BROWSER_COOKIE, browser, max_age=None)
        return response

    async def token_form(
        request: Request, token: str, purpose: str, limiter: ClientLimiter
    ) -> tuple[Any, Access] | Response:
        """What every form posted against a link passes first, in this order: a small
        form, its CSRF token, a live link, the client's rate limit."""
        form = await request.form(max_files=0, max_fields=4)
        if not csrf.valid(purpose, browser_id(request), str(form.get("csrf", ""))):
            return forbidden()
        access = await live(token)
        if not isinstance(access, Access):
            return access
        wait = limiter.allow(client(request))
        if wait:
            return _limited(page, wait)
        return form, access

    @app.post("/m/{token}/passcode")
    async def passcode(request: Request, token: str) -> Response:
        passed = await token_form(request, token, "passcode", passcodes)
        if isinstance(passed, Response):
            return passed
        _form, access = passed
        sent = await backend.send_passcode(token)
        if isinstance(sent, Gone):
            return gone()
        if isinstance(sent, Locked):
            return locked(access)
        if isinstance(sent, Limited):
            return _limited(page, sent.retry_after)
        return code_form(request, token, access, sent=sent)

    def code_form(
        request: Request,
        token: str,
        access: Access,
        *,
        sent: PasscodeSent | None = None,
        refused: Refused | None = None,
    ) -> HTMLResponse:
        return page(
            "verify.html",
            400 if refused else 200,
            title="Enter your passcode",
            access=access,
            token=token,
            sent=sent,
            refused=refused,
            csrf=csrf.token("verify", browser_id(request)),
        )

    @app.get("/m/{token}/verify")
    async def verify_form(request: Request, token: str) -> Response:
        access = await live(token)
        if not isinstance(access, Access):
            return access
        return code_form(request, token, access)

    @app.post("/m/{token}/verify")
    async def verify(request: Request, token: str) -> Response:
        passed = await token_form(request, token, "verify", verifies)
        if isinstance(passed, Response):
            return passed
        form, access = passed
        code = "".join(str(form.get("code", "")).split())[:32]
        result = await backend.check_passcode(token, code, client(request))
        if isinstance(result, Gone):
            return gone()
        if isinstance(result, Locked):
            return locked(access)
        if isinstance(result, Refused):
            return code_form(request, token, access, refused=result)
        response = RedirectResponse("/read", status_code=303)
        life = int(result.expires - clock())  # the cookie dies with the core's session
        _set_cookie(response, SESSION_COOKIE, result.id, max_age=max(life, 1))
        return response

    @app.get("/read")
    async def read(request: Request) -> Response:
        session = await current(request)
        if session is None:
            return ended()
        view = view_message(await backend.read(session))  # the core audits "opened"
        return page("read.html", title=view.subject or "(no subject)", view=view, session=session)

    @app.get("/read/part/{number}")
    async def inline_part(request: Request, number: int) -> Response:
        session = await current(request)
        if session is None:
            return ended()
        part = view_message(await backend.read(session)).inline.get(number)
        if part is None:
            raise StarletteHTTPException(404)
        return Response(part.data, media_type=part.content_type)

    @app.get("/read/attachment/{number}")
    async def attachment(request: Request, number: int) -> Response:
        session = await current(request)
        if session is None:
            return ended()
        part = view_message(await backend.read(session)).attachment(number)
        if part is None:
            raise StarletteHTTPException(404)
        await backend.record(session, "downloaded", part.filename)
        return Response(
            part.data,
            media_type="application/octet-stream",
            headers={"Content-Disposition": content_disposition(part.filename)},
        )

    def reply_form(
        session: Session, subject: str, *, status: int = 200, problem: str = "", text: str = ""
    ) -> HTMLResponse:
        return page(
            "reply.html",
            status,
            title=f"Reply: {subject}" if subject else "Reply",
            csrf=csrf.token("reply", session.id),
            problem=problem,
            text=text,
            limits=limits,
        )

    @app.get("/read/reply")
    async def reply_page(request: Request) -> Response:
        session = await current(request)
        if session is None:
            return ended()
        return reply_form(session, view_message(await backend.read(session)).subject)

    @app.post("/read/reply")
    async def reply(request: Request) -> Response:
        session = await current(request)
        if session is None:
            return ended()
        form = await request.form(
            max_files=limits.max_attachments, max_fields=8, max_part_size=limits.max_body
        )
        if not csrf.valid("reply", session.id, str(form.get("csrf", ""))):
            return forbidden()
        original = await backend.read(session)
        subject = view_message(original).subject
        text = str(form.get("text", ""))
        if not text.strip():
            return reply_form(session, subject, status=400, problem="Write your reply.")
        if len(text) > limits.max_reply_chars:
            problem = f"Your reply is longer than {limits.max_reply_chars:,} characters."
            return reply_form(session, subject, status=400, problem=problem, text=text)
        attachments = []
        for upload in form.getlist("attachment"):
            if isinstance(upload, UploadFile) and upload.filename:
                data = await upload.read()
                attachments.append(
                    (safe_filename(upload.filename), "application/octet-stream", data)
                )
        rcpt, message = backend.reply_message(session, original, text, attachments)
        await submit_reply(rcpt, message)
        await backend.record(session, "replied", f"{len(attachments)} attachment(s)")
        return page("replied.html", title="Your reply has been sent", rcpt=rcpt)

    @app.get("/conversation")
    async def conversation(request: Request) -> Response:
        session = await current(request)
        if session is None:
            return ended()
        entries = await backend.conversation(session)
        return page(
            "conversation.html", title="Your conversation", entries=entries, current=session
        )

    app.add_middleware(Guard, max_body=limits.max_body)
    return app


def _limited(page: Callable[..., HTMLResponse], wait: float) -> HTMLResponse:
    minutes = max(1, round(wait / 60))
    response = page("limited.html", 429, title="Please wait", minutes=minutes)
    response.headers["Retry-After"] = str(max(1, int(wait)))
    return response


def _set_cookie(response: Response, name: str, value: str, *, max_age: int | None) -> None:
    response.set_cookie(
        name, value, max_age=max_age, path="/", secure=True, httponly=True, samesite="strict"
    )


def _when(epoch: float) -> str:
    """A moment from the core (seconds since the epoch) as people read it:
    'Tuesday 3 March 2026 at 14:05 UTC'."""
    moment = datetime.fromtimestamp(epoch, UTC)
    return f"{moment:%A} {moment.day} {moment:%B %Y} at {moment:%H:%M} UTC"
