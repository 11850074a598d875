"""files.write_atomic: the one way securemail writes operator files."""

import os
import stat

import pytest

from securemail.files import PRIVATE, write_atomic
from securemail.gateway.inbound.users import add_user, load_users
from securemail.tls import write_self_signed


def test_replaces_atomically_and_keeps_mode(tmp_path):
    dest = tmp_path / "list.csv"
    dest.write_text("old")
    dest.chmod(0o640)
    write_atomic(dest, b"new")
    assert dest.read_bytes() == b"new"
    assert stat.S_IMODE(dest.stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["list.csv"]  # no temp file left


def test_private_mode_is_set_even_over_a_public_file(tmp_path):
    key = tmp_path / "key.pem"
    key.write_text("public placeholder")
    key.chmod(0o644)
    write_atomic(key, b"secret", mode=PRIVATE)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_refuses_to_overwrite_when_asked(tmp_path):
    dest = tmp_path / "sel.pem"
    dest.write_text("keep")
    with pytest.raises(FileExistsError):
        write_atomic(dest, b"new", replace=False)
    assert dest.read_text() == "keep"


def test_user_add_does_not_follow_a_planted_symlink(tmp_path):
    """The old code wrote through ``.users.toml.tmp``: a symlink there redirected it."""
    victim = tmp_path / "victim.txt"
    victim.write_text("do not touch")
    users = tmp_path / "users.toml"
    (tmp_path / ".users.toml.tmp").symlink_to(victim)
    add_user(users, "alice", "correct horse battery staple")
    assert victim.read_text() == "do not touch"
    assert "alice" in load_users(users)
    assert stat.S_IMODE(users.stat().st_mode) == 0o600
    assert not users.is_symlink()


def test_symlink_at_destination_is_replaced_not_followed(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("do not touch")
    dest = tmp_path / "users.toml"
    dest.symlink_to(victim)
    write_atomic(dest, b"x", mode=PRIVATE)
    assert victim.read_text() == "do not touch" and not dest.is_symlink()


def test_selfsigned_key_is_private_from_the_start(tmp_path):
    cert, key = tmp_path / "tls" / "cert.pem", tmp_path / "tls" / "key.pem"
    key.parent.mkdir()
    key.write_text("old")
    key.chmod(0o644)
    write_self_signed(cert, key, "mail.example.nhs.uk")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" in key.read_bytes()
    assert os.access(cert, os.R_OK)
