"""The offload: a message's CPU-heavy steps run in worker processes, within its budget.

First a real ``Offload`` with its real worker processes (which message stays inline,
where a step runs, what crosses back, what the budget counts, what happens to a worker
over budget or dead); then the running gateway: the steps give the same answers in a
worker as inline, a large message goes through the workers to the internal server, and
each call site answers 451 when its step cannot be finished.
"""

import asyncio
import contextlib
import json
import logging
import os
import smtplib
import time
from functools import partial

import pytest
from harness.gatewaykit import ORG_DOMAIN, send_inbound, submit

from securemail.core.message import read_headers
from securemail.core.sensitivity import scan_message
from securemail.cpu import run_inline
from securemail.dns import Resolver
from securemail.gateway.events import log_formatter
from securemail.gateway.inbound.offload import (
    INLINE_MAX_BYTES,
    INLINE_MAX_DELIMITERS,
    INLINE_MAX_FIELDS,
    LOG_RECORDS_PER_STEP,
    BudgetExceeded,
    Offload,
    OffloadError,
    inline_ok,
)
from securemail.mech.arc import arc_seal, verify_arc
from securemail.mech.dkim import DkimSigner, SigningKey, generate_key, verify_dkim, write_key
from securemail.mech.results import Result

pytestmark = [pytest.mark.timeout(90), pytest.mark.slow]  # processes: CI lane

PARTNER = "partner.test"
LIGHT = b"From: a@partner.test\r\nSubject: hi\r\n\r\nhello\r\n"


def heavy(body_lines: int = 40, extra_headers: bytes = b"") -> bytes:
    """A message over ``INLINE_MAX_BYTES``, from partner.test to one of our users."""
    return (
        extra_headers
        + f"From: Pat <pat@{PARTNER}>\r\nTo: jo@{ORG_DOMAIN}\r\n"
        "Subject: referral\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\n"
        f"Message-ID: <{time.time_ns()}@{PARTNER}>\r\n\r\n".encode()
        + (b"Clinical letter, page after page. " * 29 + b"\r\n") * body_lines
    )


def runner(offload: Offload, data: bytes):
    return offload.runner(data, read_headers(data))


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
async def offload():
    pool = Offload(budget=10)
    yield pool
    await pool.close()


# --- which messages, where ------------------------------------------------------------------


def test_small_simple_messages_stay_inline():
    assert inline_ok(LIGHT, read_headers(LIGHT))
    assert Offload(budget=10).runner(LIGHT, read_headers(LIGHT)) is run_inline
    too_big = LIGHT + b"x" * INLINE_MAX_BYTES + b"\r\n"
    many_fields = b"X-A: 1\r\n" * (INLINE_MAX_FIELDS + 1) + b"\r\nhi\r\n"
    many_parts = LIGHT + b"--b\r\n\r\nx\r\n" * (INLINE_MAX_DELIMITERS + 1)
    for data in (too_big, many_fields, many_parts):
        assert not inline_ok(data, read_headers(data))
    assert len(heavy()) > INLINE_MAX_BYTES


async def test_a_step_runs_in_a_reused_worker_process(offload):
    run = runner(offload, heavy())
    pid = await run("pid", os.getpid)
    assert pid != os.getpid()
    assert await run("pid again", os.getpid) == pid


async def test_what_a_step_raises_is_raised_to_the_caller(offload):
    with pytest.raises(ValueError, match="invalid literal"):
        await runner(offload, heavy())("int", partial(int, "x"))


def in_worker(code: str):
    """A step running ``code`` (the worker runs ``python -P``: tests are not importable)."""
    return partial(exec, f"import logging\n{code}")


async def test_a_workers_records_are_logged_by_the_gateway_itself(offload, caplog):
    """What a library logs in a worker comes back as the record it was (logger, level,
    message, the worker's time, the traceback's text) and goes through the gateway's
    own handlers, so ``[log] format`` and syslog apply to it as to any other line."""
    caplog.set_level(logging.WARNING)
    before = time.time()
    run = runner(offload, heavy())
    await run("log", in_worker('logging.getLogger("pypdf").warning("bad %s in\\r\\nFAKE", "xref")'))
    await run("fail", in_worker("try:\n 1/0\nexcept ZeroDivisionError:\n logging.exception('x')"))
    warned, failed = caplog.records
    assert (warned.name, warned.levelname, warned.getMessage()) == (
        "pypdf",
        "WARNING",
        "bad xref in\r\nFAKE",
    )
    assert before <= warned.created <= time.time()
    line = log_formatter("text").format(warned)
    assert line.endswith(" WARNING pypdf: bad xref in\\x0d\\x0aFAKE") and "\n" not in line
    assert (failed.name, failed.levelname) == ("root", "ERROR")
    assert "ZeroDivisionError" in json.loads(log_formatter("json").format(failed))["exception"]


async def test_a_step_logs_at_most_its_share_then_one_line_says_how_many_more(offload, caplog):
    caplog.set_level(logging.WARNING)
    many = LOG_RECORDS_PER_STEP + 7
    await runner(offload, heavy())(
        "chatty", in_worker(f"for i in range({many}): logging.getLogger('pypdf').warning('r%d', i)")
    )
    lines = [r.getMessage() for r in caplog.records]
    assert lines[:LOG_RECORDS_PER_STEP] == [f"r{i}" for i in range(LOG_RECORDS_PER_STEP)]
    assert lines[LOG_RECORDS_PER_STEP:] == [
        f"a CPU step logged 7 more records, not shown (at most {LOG_RECORDS_PER_STEP} per step)"
    ]
    caplog.clear()  # the next step starts counting anew
    await runner(offload, heavy())("one", in_worker("logging.getLogger('pypdf').warning('r')"))
    assert [r.getMessage() for r in caplog.records] == ["r"]


async def test_a_worker_that_dies_is_an_offload_error_and_is_replaced(offload):
    run = runner(offload, heavy())
    with pytest.raises(OffloadError, match="exit status 3"):
        await run("exit", partial(os._exit, 3))
    assert await run("pid", os.getpid) != os.getpid()


# --- the budget ------------------------------------------------------------------------------


async def test_over_budget_the_worker_is_killed_and_the_message_has_no_time_left():
    pool = Offload(budget=1)
    try:
        run = runner(pool, heavy())
        pid = await run("pid", os.getpid)
        with pytest.raises(BudgetExceeded, match="nap did not finish within the 1 s CPU budget"):
            await run("nap", partial(time.sleep, 60))
        with pytest.raises(BudgetExceeded, match="next: the 1 s CPU budget is used up"):
            await run("next", os.getpid)
        assert await runner(pool, heavy())("new message", os.getpid) != pid
    finally:
        await pool.close()
    assert not alive(pid)


async def test_the_budget_counts_steps_not_the_waits_between_them():
    """DNS lookups come between a message's steps; overlapping steps count once."""
    pool = Offload(budget=2, workers=2)
    try:
        warm = runner(pool, heavy())
        await asyncio.gather(
            warm("a", partial(time.sleep, 0.1)), warm("b", partial(time.sleep, 0.1))
        )
        run = runner(pool, heavy())
        await asyncio.gather(
            run("dkim", partial(time.sleep, 0.8)), run("arc", partial(time.sleep, 0.8))
        )
        await asyncio.sleep(1.5)  # a DNS wait: not worker time
        await run("seal", partial(time.sleep, 0.3))
        with pytest.raises(BudgetExceeded, match="scan did not finish"):
            await run("scan", partial(time.sleep, 5))
    finally:
        await pool.close()


async def test_close_ends_every_worker():
    pool = Offload(budget=10, workers=2)
    run = runner(pool, heavy())
    nap = partial(time.sleep, 0.3)
    await asyncio.gather(run("a", nap), run("b", nap))  # two workers, both idle now
    pids = set(await asyncio.gather(run("a", os.getpid), run("b", os.getpid)))
    assert len(pids) == 2
    busy = asyncio.ensure_future(run("busy", partial(time.sleep, 60)))
    await asyncio.sleep(0.5)
    await pool.close()
    with contextlib.suppress(OffloadError):
        await busy
    assert not any(alive(pid) for pid in pids)


# --- the gateway's steps, in a worker --------------------------------------------------------


async def test_every_step_gives_the_same_answer_in_a_worker(offload, dns_server):
    pem, record = generate_key("rsa", 2048)
    dns_server.add(f"s1._domainkey.{PARTNER}", "TXT", record)
    key = SigningKey(PARTNER, "s1", "rsa-sha256", pem)
    signer = DkimSigner({PARTNER: key})
    data = heavy()
    data = signer.sign(data, PARTNER) + data
    results = f"mx.{PARTNER}; spf=pass smtp.mailfrom=pat@{PARTNER}; arc=none"
    now = int(time.time())  # fixed, so both seals are byte for byte comparable
    seal = partial(arc_seal, data, domain=PARTNER, selector="s1", private_pem=pem,
                   authserv_id=f"mx.{PARTNER}", auth_results=results, now=now)  # fmt: skip
    sealed = seal() + data
    resolver = Resolver([dns_server.nameserver], timeout=2)
    run = runner(offload, data)
    assert run is not run_inline
    assert await run("seal", seal) == seal()
    assert await run("sign", partial(signer.sign, data, PARTNER, now=1)) == signer.sign(
        data, PARTNER, now=1
    )
    assert await run("scan", partial(scan_message, data)) == scan_message(data)
    in_worker = await verify_dkim(data, resolver, run=run)
    assert in_worker == await verify_dkim(data, resolver)
    assert [v.result for v in in_worker] == [Result.PASS]
    chain = await verify_arc(sealed, resolver, run=runner(offload, sealed))
    assert chain == await verify_arc(sealed, resolver)
    assert chain.result is Result.PASS


# --- through the running gateway -------------------------------------------------------------


def partner_zone(dns_server):
    pem, record = generate_key("rsa", 2048)
    dns_server.add(f"s1._domainkey.{PARTNER}", "TXT", record)
    dns_server.add(PARTNER, "TXT", "v=spf1 ip4:127.0.0.1 -all")
    dns_server.add(f"_dmarc.{PARTNER}", "TXT", "v=DMARC1; p=none")
    return SigningKey(PARTNER, "s1", "rsa-sha256", pem)


async def gateway_with_key(gateway_factory, tmp_path):
    pem, _ = generate_key("rsa", 2048)
    write_key(tmp_path / "var" / "dkim", ORG_DOMAIN, "s1", pem)
    extra = f'[dkim]\nkey_dir = "{tmp_path / "var" / "dkim"}"\n'
    return await gateway_factory(extra=extra)


async def test_a_large_message_is_checked_in_workers_and_delivered(
    gateway_factory, dns_server, internal, tmp_path
):
    key = partner_zone(dns_server)
    gateway = await gateway_with_key(gateway_factory, tmp_path)
    data = heavy(body_lines=100)
    signed = DkimSigner({PARTNER: key}).sign(data, PARTNER) + data
    await asyncio.to_thread(send_inbound, gateway, f"pat@{PARTNER}", [f"jo@{ORG_DOMAIN}"], signed)
    received = (await asyncio.to_thread(internal.wait, 1))[0].data
    assert b"ARC-Seal: i=1" in received
    unfolded = received.replace(b"\r\n\t", b" ")
    assert b"dkim=pass" in unfolded and b"dmarc=pass" in unfolded


class RefuseStep(Offload):
    """An offload whose every runner runs steps inline, but cannot finish ``what``."""

    def __init__(self, what: str) -> None:
        super().__init__(budget=1)
        self.what = what

    def runner(self, data, block):
        async def run(what, fn):
            if what == self.what:
                raise BudgetExceeded(f"{what} did not finish within the 1 s CPU budget")
            return fn()

        return run


STEPS = ["DKIM verification", "ARC verification", "ARC sealing", "DKIM signing",
         "sensitivity scan"]  # fmt: skip


@pytest.mark.parametrize("step", STEPS)
async def test_a_step_not_finished_in_time_is_451_and_nothing_is_delivered(
    step, gateway_factory, dns_server, internal, tmp_path, pki
):
    key = partner_zone(dns_server)
    gateway = await gateway_with_key(gateway_factory, tmp_path)
    gateway.pipeline.offload = RefuseStep(step)
    data = heavy()
    if step == "DKIM verification":
        data = DkimSigner({PARTNER: key}).sign(data, PARTNER) + data
    if step == "ARC verification":
        results = f"mx.{PARTNER}; spf=pass smtp.mailfrom=pat@{PARTNER}; arc=none"
        data = arc_seal(data, domain=PARTNER, selector="s1", private_pem=key.private_pem,
                        authserv_id=f"mx.{PARTNER}", auth_results=results) + data  # fmt: skip
    if step == "DKIM signing":
        data = data.replace(f"pat@{PARTNER}".encode(), f"alice@{ORG_DOMAIN}".encode())
        send = partial(submit, gateway, pki, f"alice@{ORG_DOMAIN}", [f"jo@{ORG_DOMAIN}"], data)
    else:
        send = partial(send_inbound, gateway, f"pat@{PARTNER}", [f"jo@{ORG_DOMAIN}"], data)
    with pytest.raises(smtplib.SMTPDataError) as refused:
        await asyncio.to_thread(send)
    assert refused.value.smtp_code == 451
    assert (
        refused.value.smtp_error == b"4.3.0 Message could not be checked in time; try again later"
    )
    assert await gateway.spool.list_messages() == []
    assert internal.messages == []
