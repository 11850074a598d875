"""Who ``securemail serve`` runs as: ``[service] user``, and the one-way switch to it.

Like Postfix's master(8): started as root, ``serve`` binds its listeners (ports 25 and
587 are below 1024), then gives root up for good, before it opens the spool, reads a
key, a list or the users file, or starts a CPU worker. So every file the gateway creates
belongs to the service user, nothing that parses mail from the internet runs as root,
and a reload (SIGHUP) reads exactly what a start reads, as the same user.

The switch is setgroups, setgid, setuid, in that order (each step needs the privilege
the next one gives up), and is then verified rather than assumed: real, effective and
saved ids are the user's, the groups are the user's, no capability is left, and
``setuid(0)`` fails. Anything else stops the gateway (``PrivilegeError``).

Before binding, ``config_checks`` asks the kernel, as the user (``acting_as``: the
effective ids only, put back afterwards, like Postfix's ``set_eugid``), whether it can
open the files the gateway will, so a mistake is one line naming the file and the user
rather than a traceback after the switch.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from securemail.errors import ConfigError, SecuremailError


class PrivilegeError(SecuremailError):
    """Root could not be given up, or could be taken back: the gateway must not run."""


@dataclass(frozen=True, slots=True)
class ServiceUser:
    """The account ``serve`` switches to, as the system knows it."""

    name: str
    uid: int
    gid: int  # primary group after the switch ([service] group, else the user's own)
    groups: tuple[int, ...]  # every group after the switch (getgrouplist), sorted

    def __str__(self) -> str:
        return f"user {self.name} (uid {self.uid})"


class Switch(Enum):
    """What ``serve`` does about its identity once its listeners are bound."""

    DROP = "drop"  # root, with a service user: switch to it for good
    NONE = "none"  # already the service user, or not root and no user set
    KEEP_ROOT = "keep-root"  # root with no service user: runs on as root (warned)


def lookup_service_user(user: str, group: str = "") -> ServiceUser | None:
    """``[service] user`` (and ``group``) as this system knows them; None when unset.

    Raises ``ConfigError`` (``service.user: …``) for a user or group that does not exist,
    or that is root: switching to root would drop nothing while reading as if it did.
    """
    if not user:
        return None
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise ConfigError(f"service.user: no such user {user!r} on this system") from None
    if entry.pw_uid == 0:
        raise ConfigError(
            f"service.user: {user!r} is root (uid 0): name an unprivileged user "
            "(e.g. one made with useradd --system), or leave it empty"
        )
    gid = entry.pw_gid
    if group:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise ConfigError(f"service.group: no such group {group!r} on this system") from None
    if gid == 0:
        raise ConfigError(f"service.group: the group of {user!r} would be root (gid 0)")
    groups = tuple(sorted(set(os.getgrouplist(entry.pw_name, gid))))
    return ServiceUser(entry.pw_name, entry.pw_uid, gid, groups)


def plan_switch(user: ServiceUser | None, euid: int, egid: int) -> Switch:
    """What to do, started with ``euid``/``egid``: a pure decision, so every case is
    tested without being root. Raises ``ConfigError`` when a user is set that this
    process is neither root nor already (nothing could switch to it)."""
    if euid == 0:
        return Switch.DROP if user is not None else Switch.KEEP_ROOT
    if user is None or (euid, egid) == (user.uid, user.gid):
        return Switch.NONE
    raise ConfigError(
        f"service.user: cannot switch to {user} (gid {user.gid}): serve was started as "
        f"{describe_uid(euid)} (gid {egid}), not as root; start it as root or as {user.name}"
    )


@contextlib.contextmanager
def acting_as(user: ServiceUser) -> Iterator[None]:
    """Root only: ``user``'s effective ids and groups for the duration, then root's again.

    The real and saved uid stay 0, which is what lets the exit take root back; so this
    is for asking the kernel what ``user`` may do (``os.access(..., effective_ids=True)``,
    ``open``), never for running anything on its behalf.
    """
    groups, egid = os.getgroups(), os.getegid()
    os.setgroups(list(user.groups))
    try:
        os.setegid(user.gid)
        try:
            os.seteuid(user.uid)
            try:
                yield
            finally:
                os.seteuid(0)
        finally:
            os.setegid(egid)
    finally:
        os.setgroups(groups)


def drop_privileges(user: ServiceUser) -> None:
    """Become ``user`` for good, then prove it; ``PrivilegeError`` if either fails."""
    try:
        os.setgroups(list(user.groups))
        os.setgid(user.gid)
        os.setuid(user.uid)
    except OSError as exc:
        raise PrivilegeError(f"cannot switch to {user}: {exc.strerror or exc}") from None
    if problem := _still_privileged(user):
        raise PrivilegeError(f"switched to {user}, but {problem}; refusing to run")


def _still_privileged(user: ServiceUser) -> str:
    """What is left of root after the switch ("" when nothing is)."""
    if os.getresuid() != (user.uid,) * 3:
        return f"the real, effective and saved uids are {os.getresuid()}"
    if os.getresgid() != (user.gid,) * 3:
        return f"the real, effective and saved gids are {os.getresgid()}"
    if set(os.getgroups()) - set(user.groups):
        return f"the groups are {sorted(os.getgroups())}, not {list(user.groups)}"
    if capabilities := _capabilities():
        return f"capabilities remain ({capabilities})"
    try:
        os.setuid(0)
    except PermissionError:
        return ""
    return "setuid(0) succeeded: root could be taken back"


def _capabilities() -> str:
    """Non-empty permitted or effective capability sets, from /proc ("" when none, or
    when /proc cannot tell us: the uid checks and setuid(0) still stand)."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return ""
    held = [
        line.replace("\t", " ")
        for line in status.splitlines()
        if line.startswith(("CapPrm:", "CapEff:")) and int(line.split()[1], 16)
    ]
    return ", ".join(held)


def describe_uid(uid: int) -> str:
    """``user securemail (uid 998)``, or ``uid 4242`` for a uid without a name."""
    try:
        return f"user {pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def first_unprivileged_port() -> int:
    """The lowest port anyone may bind (Linux ``ip_unprivileged_port_start``; else 1024)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
    except (OSError, ValueError):
        return 1024
