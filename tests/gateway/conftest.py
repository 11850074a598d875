"""Fixtures the gateway's tests share."""

import pytest

from securemail.gateway.spool.sqlite import SqliteSpool


@pytest.fixture
async def spool(tmp_path):
    """An open spool on a temporary file (``synchronous=NORMAL``: tests need no fsync)."""
    spool = SqliteSpool(tmp_path / "spool.db", synchronous="NORMAL")
    await spool.open()
    yield spool
    await spool.close()
