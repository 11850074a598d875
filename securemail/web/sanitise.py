"""Making what a sender wrote safe to show and to save: HTML bodies and file names.

**HTML** goes through ``nh3`` (the Rust ``ammonia`` sanitiser) with an allow-list: text
structure, tables, links and images, no ``style``, no ``class``, no event handlers, no
forms, frames or scripts. URLs may only be ``http``, ``https`` and ``mailto`` for links;
an image may only come from the message itself (``cid:``, rewritten to the part's URL):
any other image source is dropped, so opening a message makes no request anywhere but
here. The CSP (``guard.py``) is the second line if the first ever fails.

**File names** are the sender's and may say anything: a path (``../../.bashrc``), a
control character, a right-to-left override that turns ``gpj.exe`` into ``exe.jpg``, a
thousand characters. ``safe_filename`` keeps the last path component's printable
characters, bounded; ``content_disposition`` writes it as RFC 6266 wants, with an ASCII
fallback for old clients.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Mapping
from urllib.parse import quote

import nh3

TAGS = frozenset(
    (
        *("a", "abbr", "b", "blockquote", "br", "caption", "code", "dd", "del", "div"),
        *("dl", "dt", "em", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i", "img", "ins"),
        *("li", "ol", "p", "pre", "q", "s", "small", "span", "strong", "sub", "sup"),
        *("table", "tbody", "td", "tfoot", "th", "thead", "tr", "u", "ul"),
    )
)
ATTRIBUTES: Mapping[str, set[str]] = {
    "a": {"href", "title"},
    "img": {"src", "alt", "width", "height"},
    "td": {"colspan", "rowspan"},
    "th": {"colspan", "rowspan", "scope"},
    "ol": {"start"},
}
URL_SCHEMES = frozenset({"http", "https", "mailto", "cid"})
MAX_FILENAME = 120  # characters, before the extension is protected
FALLBACK_NAME = "attachment"


def clean_html(html: str, image_url: Callable[[str], str | None]) -> str:
    """``html`` with only the allow-listed markup left.

    ``image_url(content_id)`` gives the URL of the message's own part with that
    Content-ID, or None when there is none; every other image source is removed.
    """

    def keep(tag: str, attribute: str, value: str) -> str | None:
        if tag == "img" and attribute == "src":
            if value[:4].lower() != "cid:":
                return None
            return image_url(value[4:].strip().strip("<>"))
        return value

    return nh3.clean(
        html,
        tags=set(TAGS),
        clean_content_tags={"script", "style"},
        attributes={tag: set(names) for tag, names in ATTRIBUTES.items()},
        attribute_filter=keep,
        url_schemes=set(URL_SCHEMES),
        strip_comments=True,
        link_rel="noopener noreferrer",
    )


def safe_filename(name: str | None, *, limit: int = MAX_FILENAME) -> str:
    """A file name that is only a name: no directory, no ``..``, no control or format
    characters (which include the bidirectional overrides), no leading dots, at most
    ``limit`` characters with the extension kept; ``attachment`` when nothing is left."""
    text = unicodedata.normalize("NFC", name or "")
    text = text.replace("\\", "/").rsplit("/", 1)[-1]
    text = "".join(
        " " if unicodedata.category(c).startswith(("C", "Z")) else c
        for c in text
        if c not in '<>:"|?*'
    )
    text = " ".join(text.split()).strip(" .")
    while ".." in text:
        text = text.replace("..", ".")
    if not text:
        return FALLBACK_NAME
    if len(text) > limit:
        stem, dot, ext = text.rpartition(".")
        if dot and 0 < len(ext) <= 10 and stem:
            text = stem[: limit - len(ext) - 1].rstrip(" .") + "." + ext
        else:
            text = text[:limit].rstrip(" .")
    return text or FALLBACK_NAME


def content_disposition(filename: str, kind: str = "attachment") -> str:
    """The header value for ``filename`` (already safe): RFC 6266 ``filename*`` in
    UTF-8, with a plain ASCII ``filename`` for clients that ignore it."""
    ascii_name = "".join(c if c.isascii() and c not in '"\\%;' else "_" for c in filename)
    encoded = quote(filename, safe="")
    return f"{kind}; filename=\"{ascii_name}\"; filename*=UTF-8''{encoded}"
