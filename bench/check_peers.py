"""The servers the checker's TLS and HTTPS checks talk to, for the checker benchmark.

One process (``python bench/check_peers.py SEED PREWARM_DOMAINS``), one event loop, two
listeners on 127.0.0.1: an SMTP server that offers STARTTLS (the MX hosts: the checker
connects to whatever address DNS gave, 127.0.0.1, on ``[check] smtp_port``) and an HTTPS
server that answers ``GET /.well-known/mta-sts.txt`` for ``Host: mta-sts.dNNNNNN.example``
with that domain's policy (mode enforce, its own MX hosts, from ``check_zones``), on
``[check] https_port``. Both present a certificate for exactly the name the client sent
in SNI, issued by the test CA (``harness.pki``) and cached, so every MX host and policy
host verifies as it would on the internet.

Issuing costs about 2 ms a name (one shared P-256 leaf key, one signature, and ``ssl``
loads certificates from files only), which would land in the middle of a measured run:
the names of the first PREWARM_DOMAINS live domains (the TLS workloads') are issued
before the process reports ready, any other name on first use. The SMTP dialogue is the
least a prober needs: greeting, EHLO, STARTTLS, QUIT; servers accept TLS 1.2 and 1.3
only, so the checker's TLS 1.0/1.1 probes are refused as a well-run server refuses them.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import ssl
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from check_zones import PROVIDERS, domain_index, healthy_domains, mta_sts_policy, spec  # noqa: E402
from harness.pki import TestPKI  # noqa: E402
from helper_process import peak_rss_mb, serve_control  # noqa: E402

CACHED_NAMES = 8192  # server contexts kept; probes of one host come close together
IDLE_TIMEOUT = 30.0
_EHLO = b"250-bench.example\r\n250-PIPELINING\r\n250-STARTTLS\r\n250 8BITMIME\r\n"
_EHLO_TLS = b"250-bench.example\r\n250-PIPELINING\r\n250 8BITMIME\r\n"
_WELL_KNOWN = b"/.well-known/mta-sts.txt"


class CertificateMint:
    """Server contexts presenting a certificate for one name, issued on first use."""

    def __init__(self, pki: TestPKI, cached: int = CACHED_NAMES) -> None:
        self._pki = pki  # its directory lives as long as the PKI object
        self._cached = cached
        self._ca_key = serialization.load_pem_private_key(pki.ca.private_key_pem.bytes(), None)
        self._ca_cert = x509.load_pem_x509_certificate(pki.ca.cert_pem.bytes())
        self._authority = x509.AuthorityKeyIdentifier.from_issuer_public_key(
            self._ca_key.public_key()  # type: ignore[arg-type]
        )
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._dir = Path(tempfile.mkdtemp(prefix="leaves-", dir=pki.dir))
        self._key_file = self._dir / "leaf.key"
        self._key_file.write_bytes(
            self._key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        self._contexts: OrderedDict[str, ssl.SSLContext] = OrderedDict()
        self._lock = threading.Lock()
        self.minted = 0
        self.mint_cpu = 0.0

    def context(self, name: str) -> ssl.SSLContext:
        name = name.lower()
        with self._lock:  # handshakes on the HTTPS and SMTP listeners share the cache
            ctx = self._contexts.get(name)
            if ctx is not None:
                self._contexts.move_to_end(name)
                return ctx
        ctx = _server_context()
        self._load(ctx, name)
        with self._lock:
            self._contexts[name] = ctx
            if len(self._contexts) > self._cached:
                self._contexts.popitem(last=False)
        return ctx

    def listener_context(self, default_name: str) -> ssl.SSLContext:
        """A listener's context: ``default_name``'s certificate, then the SNI name's."""
        ctx = _server_context()
        self._load(ctx, default_name)
        ctx.sni_callback = self._on_sni
        return ctx

    def _on_sni(self, conn: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        if name:
            conn.context = self.context(name)

    def _load(self, ctx: ssl.SSLContext, name: str) -> None:
        """Issue a certificate for ``name`` and load it (ssl loads chains from files only)."""
        start = time.thread_time()
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self._ca_cert.subject)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=365))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(self._authority, critical=False)
            .sign(self._ca_key, hashes.SHA256())  # type: ignore[arg-type]
        )
        with tempfile.NamedTemporaryFile(dir=self._dir, suffix=".pem") as chain:
            chain.write(cert.public_bytes(serialization.Encoding.PEM))
            chain.flush()
            ctx.load_cert_chain(chain.name, self._key_file)
        with self._lock:
            self.minted += 1
            self.mint_cpu += time.thread_time() - start


def _server_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


class Peers:
    """The SMTP (STARTTLS) and HTTPS (MTA-STS policy) listeners, and what they served."""

    def __init__(self, mint: CertificateMint, seed: int) -> None:
        self.mint = mint
        self.seed = seed
        self.smtp_context = mint.listener_context("mx.bench.example")
        self.https_context = mint.listener_context("mta-sts.bench.example")
        self.smtp_port = self.https_port = 0
        self.sessions = self.tls_ok = self.tls_refused = 0
        self.policies = self.not_found = self.errors = 0

    async def start(self) -> None:
        smtp = await asyncio.start_server(self._smtp, "127.0.0.1", 0, backlog=1024)
        https = await asyncio.start_server(
            self._https, "127.0.0.1", 0, ssl=self.https_context, backlog=1024
        )
        self.smtp_port = smtp.sockets[0].getsockname()[1]
        self.https_port = https.sockets[0].getsockname()[1]

    def on_loop_error(self, _loop: asyncio.AbstractEventLoop, _context: dict[str, object]) -> None:
        """A failed HTTPS handshake surfaces here, not in the handler: count it."""
        self.errors += 1

    def stats(self) -> dict[str, object]:
        return {
            "cpu": time.process_time(), "sessions": self.sessions, "tls_ok": self.tls_ok,
            "tls_refused": self.tls_refused, "policies": self.policies,
            "not_found": self.not_found, "errors": self.errors, "minted": self.mint.minted,
            "mint_cpu": self.mint.mint_cpu, "rss_mb": peak_rss_mb(),
        }  # fmt: skip

    async def _smtp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.sessions += 1
        tls = False
        try:
            writer.write(b"220 bench.example ESMTP\r\n")
            while line := await asyncio.wait_for(reader.readline(), IDLE_TIMEOUT):
                verb = line[:4].upper()
                if verb in (b"EHLO", b"HELO"):
                    writer.write(_EHLO_TLS if tls else _EHLO)
                elif verb == b"STAR" and not tls:
                    writer.write(b"220 2.0.0 Ready to start TLS\r\n")
                    await writer.drain()
                    try:
                        await writer.start_tls(self.smtp_context)
                    except (ssl.SSLError, OSError):
                        self.tls_refused += 1  # the checker's TLS 1.0/1.1 probes
                        return
                    tls = True
                    self.tls_ok += 1
                elif verb == b"QUIT":
                    writer.write(b"221 2.0.0 Bye\r\n")
                    await writer.drain()
                    return
                elif verb in (b"NOOP", b"RSET"):
                    writer.write(b"250 2.0.0 OK\r\n")
                else:
                    writer.write(b"502 5.5.2 Not implemented here\r\n")
        except (OSError, TimeoutError, ssl.SSLError, asyncio.IncompleteReadError):
            return
        finally:
            writer.transport.abort()

    async def _https(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IDLE_TIMEOUT)
            request, *headers = head.split(b"\r\n")
            method, path, _version = request.split(b" ", 2)
            host = next((h[5:].strip() for h in headers if h[:5].lower() == b"host:"), b"")
            name = host.decode("ascii", "replace").rsplit(":", 1)[0].lower()
            index = domain_index(name) if name.startswith("mta-sts.") else None
            if method == b"GET" and path == _WELL_KNOWN and index is not None:
                body = mta_sts_policy(spec(index, self.seed)).encode()
                status, self.policies = b"200 OK", self.policies + 1
            else:
                body, status, self.not_found = b"not found\n", b"404 Not Found", self.not_found + 1
            writer.write(
                b"HTTP/1.1 " + status + b"\r\nContent-Type: text/plain\r\nContent-Length: "
                + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body
            )  # fmt: skip
            await writer.drain()
        except (OSError, TimeoutError, ssl.SSLError, ValueError, asyncio.IncompleteReadError):
            self.errors += 1
        finally:
            with contextlib.suppress(OSError, RuntimeError):
                writer.close()


def names_for(domains: int, seed: int) -> list[str]:
    """Every name a check of the first ``domains`` live domains sends in SNI."""
    names = [f"mx{n}.provider{p}.example" for p in range(PROVIDERS) for n in (1, 2)]
    for name in healthy_domains(domains, seed):
        index = domain_index(name)
        names += [f"mta-sts.{name}", *spec(index or 0, seed).mx_hosts]
    return list(dict.fromkeys(names))


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit("usage: check_peers.py SEED PREWARM_DOMAINS")
    seed, prewarm = int(sys.argv[1]), int(sys.argv[2])
    start = time.perf_counter()
    pki = TestPKI()
    names = names_for(prewarm, seed)
    mint = CertificateMint(pki, max(CACHED_NAMES, len(names)))
    for name in names:
        mint.context(name)
    prewarmed = time.perf_counter() - start
    peers = Peers(mint, seed)
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)  # clients hanging up: expected
    loop = _fast_loop()
    loop.set_exception_handler(peers.on_loop_error)
    loop.run_until_complete(peers.start())
    threading.Thread(target=loop.run_forever, name="peers", daemon=True).start()
    ready = {"smtp_port": peers.smtp_port, "https_port": peers.https_port}
    ready |= {"ca_file": str(pki.ca_file), "prewarmed": len(names), "prewarm_s": prewarmed}
    ready |= {"loop": type(loop).__module__.split(".")[0]}
    serve_control(ready, peers.stats)
    pki.close()


def _fast_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed: its TLS is compiled, asyncio's is Python (about half the CPU
    per handshake here), and the peers must cost little next to the checker."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


if __name__ == "__main__":
    main()
