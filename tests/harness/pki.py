"""A throwaway test PKI: one trusted CA (trustme) and helpers for server certificates.

Everything is written to a private temporary directory that lives as long as the
`TestPKI` object (or until `close()`), so file paths can be handed to real servers
such as Postfix (`smtpd_tls_chain_files = key, chain`).
"""

from __future__ import annotations

import itertools
import shutil
import smtplib
import ssl
import tempfile
import weakref
from datetime import datetime
from pathlib import Path

import trustme


class TestPKI:
    """A test CA. Certificates from `server_cert` chain to `ca_file`; `self_signed` ones do not."""

    __test__ = False  # not a pytest test class

    def __init__(self) -> None:
        self.ca = trustme.CA()
        # A second CA whose certificate is never written anywhere we trust.
        self._untrusted_ca = trustme.CA()
        self.dir = Path(tempfile.mkdtemp(prefix="securemail-pki-"))
        # Postfix reads the key as root before dropping privileges; 0o755 on the
        # directory lets unprivileged helpers read the (public) CA and cert files.
        self.dir.chmod(0o755)
        self._finalizer = weakref.finalize(self, shutil.rmtree, self.dir, True)
        self._counter = itertools.count(1)
        self.ca_file = self.dir / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self.ca_file.chmod(0o644)

    def close(self) -> None:
        """Remove the temporary directory (also done automatically when garbage collected)."""
        self._finalizer()

    def _write(self, leaf: trustme.LeafCert, stem: str) -> tuple[Path, Path]:
        n = next(self._counter)
        chain = self.dir / f"{stem}-{n}.crt"
        key = self.dir / f"{stem}-{n}.key"
        with chain.open("wb") as f:
            for blob in leaf.cert_chain_pems:
                f.write(blob.bytes())
        leaf.private_key_pem.write_to_path(str(key))
        chain.chmod(0o644)
        key.chmod(0o600)
        return chain, key

    def server_cert(
        self,
        *names: str,
        not_after: datetime | None = None,
        not_before: datetime | None = None,
    ) -> tuple[Path, Path]:
        """Issue a certificate for `names` (DNS names or IP addresses) signed by the test CA.

        Returns `(cert_chain_pem, key_pem)` paths. The key is ECDSA P-256.
        """
        if not names:
            raise ValueError("server_cert needs at least one name")
        leaf = self.ca.issue_cert(
            *names, common_name=names[0], not_before=not_before, not_after=not_after
        )
        return self._write(leaf, _stem(names[0]))

    def self_signed(self, *names: str) -> tuple[Path, Path]:
        """A certificate for `names` that does NOT chain to `ca_file` (signed by an untrusted CA)."""
        if not names:
            raise ValueError("self_signed needs at least one name")
        leaf = self._untrusted_ca.issue_cert(*names, common_name=names[0])
        return self._write(leaf, "untrusted-" + _stem(names[0]))

    def server_context(
        self,
        *names: str,
        trusted: bool = True,
        not_after: datetime | None = None,
        not_before: datetime | None = None,
    ) -> ssl.SSLContext:
        """A server-side context (TLS 1.2+) presenting a certificate for `names`.

        `trusted=False` uses a certificate from `self_signed` instead of the test CA.
        """
        if trusted:
            chain, key = self.server_cert(*names, not_after=not_after, not_before=not_before)
        else:
            chain, key = self.self_signed(*names)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(chain, key)
        return ctx

    def client_context(self, *, check_hostname: bool = True) -> ssl.SSLContext:
        """A client context that trusts only the test CA (verification required)."""
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        ctx.check_hostname = check_hostname
        return ctx


class NamedSMTP(smtplib.SMTP):
    """`smtplib.SMTP` that verifies the server certificate against `tls_name`.

    smtplib passes the host it connected to as `server_hostname`; tests connect to
    127.0.0.1 but the certificate names the MX host, so override it.
    """

    def __init__(self, tls_name: str, host: str = "", port: int = 0, **kw: object) -> None:
        self.tls_name = tls_name
        super().__init__(host, port, **kw)  # type: ignore[arg-type]

    def connect(
        self, host: str = "localhost", port: int = 0, source_address: object = None
    ) -> tuple[int, bytes]:
        reply = super().connect(host, port, source_address)  # type: ignore[arg-type]
        self._host = self.tls_name
        return reply


def _stem(name: str) -> str:
    return "".join(c if c.isalnum() or c in ".-" else "_" for c in name)[:40] or "cert"
