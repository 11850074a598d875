"""A portal on a temporary directory, with a fake clock and a mailbox for its emails
(``Clock`` and ``Mailbox`` are the harness's, shared with the web tests)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from harness.portal_pages import Clock, Mailbox
from harness.portal_pages import portal_config as make_config

from securemail.config import PortalConfig
from securemail.portal import Portal


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def mailbox() -> Mailbox:
    return Mailbox()


@pytest.fixture
def portal_config(tmp_path: Path) -> PortalConfig:
    return make_config(tmp_path, "https://portal.example.nhs.uk")


@pytest.fixture
async def portal(
    portal_config: PortalConfig, clock: Clock, mailbox: Mailbox
) -> AsyncIterator[Portal]:
    p = Portal.open(
        portal_config, clock=clock, address="portal@example.nhs.uk", send=mailbox,
        sender_notice_wait=0,  # each sender notice at once; test_sender_digest gathers
    )  # fmt: skip
    await p.start()
    yield p
    await p.close()
