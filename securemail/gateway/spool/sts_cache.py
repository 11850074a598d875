"""The MTA-STS policy cache in the SQLite spool (the ``mta_sts`` table of schema 4).

RFC 8461 §5.1 makes the cache part of the protection, not an optimisation: a policy
once fetched stays in force until its ``max_age`` ends, whatever DNS or HTTPS say
meanwhile, so an attacker who blocks the policy host after the first contact cannot
switch it off. Kept in the spool, it survives restarts and every process delivering
from the same spool shares one fetch per policy.

Each function runs on the spool's writer thread inside its batch's transaction
(``sqlite.py`` delegates to them, as it does to ``history.py``).
"""

from __future__ import annotations

import sqlite3

from securemail.gateway.spool import store as s


def get(conn: sqlite3.Connection, domain: str) -> s.StsPolicyRecord | None:
    row = conn.execute(
        "SELECT domain, policy_id, policy, fetched, expires FROM mta_sts WHERE domain = ?",
        (domain,),
    ).fetchone()
    return None if row is None else s.StsPolicyRecord(*row)


def put(conn: sqlite3.Connection, record: s.StsPolicyRecord) -> None:
    """Insert or replace ``record``; a row fetched later than it is kept (two gateways
    sharing a spool may refresh one domain at once: the newer fetch wins)."""
    conn.execute(
        "INSERT INTO mta_sts (domain, policy_id, policy, fetched, expires)"
        " VALUES (?, ?, ?, ?, ?) ON CONFLICT (domain) DO UPDATE SET"
        " policy_id = excluded.policy_id, policy = excluded.policy,"
        " fetched = excluded.fetched, expires = excluded.expires"
        " WHERE excluded.fetched >= mta_sts.fetched",
        (record.domain, record.policy_id, record.policy, record.fetched, record.expires),
    )
