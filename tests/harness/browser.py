"""A real browser for the tests: Debian's Chromium driven by Playwright, headless,
trusting the test CA the way a person's browser trusts a CA: through its NSS database.

No ``playwright install``: the browser is the system's ``/usr/bin/chromium`` (apt
``chromium``) and the CA goes into an NSS database (``certutil``, apt
``libnss3-tools``) under a private ``HOME``, so certificate checks stay on and a
certificate not from the test CA would fail the page load, as it should.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from playwright.async_api import Browser, async_playwright

CHROMIUM = Path("/usr/bin/chromium")
CERTUTIL = Path("/usr/bin/certutil")
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "portal"
PHONE = {"width": 375, "height": 812}
DESKTOP = {"width": 1024, "height": 768}


def nss_home(ca_file: Path) -> Path:
    """A HOME whose NSS database trusts ``ca_file`` for TLS servers (and nothing else
    beyond the system's roots)."""
    home = Path(tempfile.mkdtemp(prefix="sm-browser-"))
    db = home / ".pki" / "nssdb"
    db.mkdir(parents=True)
    subprocess.run(
        [CERTUTIL, "-N", "-d", f"sql:{db}", "--empty-password"], check=True, capture_output=True
    )
    subprocess.run(
        [CERTUTIL, "-A", "-d", f"sql:{db}", "-n", "securemail test CA", "-t", "C,,", "-i", ca_file],
        check=True,
        capture_output=True,
    )
    return home


@contextlib.asynccontextmanager
async def chromium(ca_file: Path, *, args: tuple[str, ...] = ()) -> AsyncIterator[Browser]:
    """Headless Chromium trusting ``ca_file``; closed and its HOME removed afterwards.
    ``args``: more command-line switches (e.g. ``--host-resolver-rules=MAP name 127.0.0.1``
    so a page named for a real host name is served from loopback)."""
    home = nss_home(ca_file)
    try:
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(
                executable_path=CHROMIUM,
                headless=True,
                env={**os.environ, "HOME": str(home)},
                args=["--no-first-run", "--disable-extensions", *args],
            )
            try:
                yield browser
            finally:
                await browser.close()
    finally:
        shutil.rmtree(home, ignore_errors=True)
