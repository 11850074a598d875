"""A gateway with the portal on, for tests and benchmarks: its config section, the
links in its notices, and whether a message's text is anywhere on disk.

The portal's promise is that a sensitive message it holds is never written in the
clear, so its tests grep every file under the data directory (databases, WAL and
journal files, logs) for each message's unique string, in every encoding mail uses."""

from __future__ import annotations

import base64
import quopri
import re
from collections.abc import Iterable
from pathlib import Path

BASE_URL = "https://portal.example.nhs.uk"
PORTAL_SECTION = (
    '[policy]\nunknown_sensitive_action = "portal"\n'
    '[portal]\nenabled = true\nkey_file = "portal.key"\ndatabase = "portal.db"\n'
    f'base_url = "{BASE_URL}"\nlisten = "127.0.0.1:0"\n'
)
"""Sensitive mail to recipients not known to be secure goes to the portal (key and
database beside the config; create the key with ``ensure_key`` first)."""

LINK = re.compile(re.escape(BASE_URL).encode() + rb"/m/([A-Za-z0-9_-]+)")


def link_tokens(notice: bytes) -> list[str]:
    """The tokens of the portal links in a notice, in order."""
    return [m.group(1).decode() for m in LINK.finditer(notice)]


def encoded_forms(text: str) -> list[bytes]:
    """``text`` as it could sit on disk: plain, quoted-printable, base64 (any offset)."""
    raw = text.encode()
    forms = [raw, quopri.encodestring(raw).strip()]
    for pad in range(3):
        encoded = base64.b64encode(b"\0" * pad + raw)[4:-4]  # the stable middle
        forms.append(encoded)
    return forms


def plaintext_on_disk(root: Path, texts: Iterable[str]) -> list[str]:
    """``"file: form"`` for every file under ``root`` holding any form of any text."""
    forms = [form for text in texts for form in encoded_forms(text)]
    found = []
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            found += [f"{path.name}: {form!r}" for form in forms if form in data]
    return found
