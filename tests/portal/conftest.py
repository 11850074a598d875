"""A portal on a temporary directory, with a fake clock and a mailbox for its emails."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from securemail.config import PortalConfig
from securemail.portal import Portal, ensure_key


@dataclass
class Clock:
    now: float = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Mailbox:
    sent: list[tuple[str, bytes]] = field(default_factory=list)

    async def __call__(self, rcpt: str, message: bytes) -> None:
        self.sent.append((rcpt, message))

    def to(self, rcpt: str) -> list[bytes]:
        return [m for r, m in self.sent if r == rcpt]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def mailbox() -> Mailbox:
    return Mailbox()


@pytest.fixture
def portal_config(tmp_path: Path) -> PortalConfig:
    config = PortalConfig(
        enabled=True, key_file=tmp_path / "portal.key", database=tmp_path / "portal.db",
        base_url="https://portal.example.nhs.uk",
    )  # fmt: skip
    ensure_key(config.key_file)
    return config


@pytest.fixture
async def portal(
    portal_config: PortalConfig, clock: Clock, mailbox: Mailbox
) -> AsyncIterator[Portal]:
    p = Portal.open(portal_config, clock=clock, address="portal@example.nhs.uk", send=mailbox)
    await p.start()
    yield p
    await p.close()
