"""``tls.FollowingContext``: a listener fixed to one context serves whichever certificate
it was last given (the portal's HTTPS listener across a reload), with the hardening of
``server_context`` kept. Real handshakes over loopback with a trustme CA."""

from __future__ import annotations

import socket
import ssl
import threading

import pytest
import trustme

from securemail.tls import FollowingContext, server_context


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


def _context(ca: trustme.CA, tmp_path, name: str, min_version: str = "1.2") -> ssl.SSLContext:
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert.private_key_pem.write_to_path(str(tmp_path / f"{name}.key"))
    cert.cert_chain_pems[0].write_to_path(str(tmp_path / f"{name}.pem"))
    return server_context(tmp_path / f"{name}.pem", tmp_path / f"{name}.key", min_version)


def _handshake(front: ssl.SSLContext, client: ssl.SSLContext, sni: str | None) -> dict:
    """One connection: the certificate the client saw (or the SSLError it got)."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with front.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)
        except (ssl.SSLError, OSError):
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with (
            socket.create_connection(listener.getsockname()) as raw,
            client.wrap_socket(raw, server_hostname=sni) as tls,
        ):
            seen = tls.getpeercert()
            tls.send(b"x")
            return {"serial": seen["serialNumber"], "version": tls.version()}
    finally:
        thread.join(5)
        listener.close()


def test_each_new_connection_gets_the_certificate_last_given(ca, tmp_path) -> None:
    first, second = _context(ca, tmp_path, "first"), _context(ca, tmp_path, "second")
    following = FollowingContext(first)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    before = _handshake(following.context, client, "localhost")
    following.use(second)
    after = _handshake(following.context, client, "localhost")
    client.check_hostname = False  # an address, no server name sent: still handed over
    no_sni = _handshake(following.context, client, None)
    assert before["serial"] != after["serial"] == no_sni["serial"]


def test_the_hardening_and_the_lowest_version_hold(ca, tmp_path) -> None:
    following = FollowingContext(_context(ca, tmp_path, "tls13", min_version="1.3"))
    client = ssl.create_default_context()
    ca.configure_trust(client)
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLError):
        _handshake(following.context, client, "localhost")
    following.use(_context(ca, tmp_path, "tls12"))
    assert _handshake(following.context, client, "localhost")["version"] == "TLSv1.2"
    client.set_ciphers("ECDHE-ECDSA-AES128-SHA256")  # CBC: not on the NCSC list
    with pytest.raises(ssl.SSLError):
        _handshake(following.context, client, "localhost")
