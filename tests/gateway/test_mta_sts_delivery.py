"""MTA-STS on delivery (RFC 8461), against real peers: DNS, an HTTPS policy host, STARTTLS.

Every case is the Deliverer the gateway runs, with its MTA-STS link and a real spool as
the policy cache, delivering to a real sink: the loopback DNS server publishes the MX,
the ``_mta-sts`` record and the policy host; the HTTPS server (trustme CA) serves the
policy and counts the requests; the sink records every byte it received in the clear.
"""

import asyncio
import datetime as dt
import json
import logging

import pytest
from harness.cli import run_cli
from harness.gatewaykit import ORG_DOMAIN, eventually, message, submit, write_config
from harness.httpsserver import HttpsServer, Route
from harness.smtpsink import SinkServer
from harness.strip_proxy import StripTLSProxy

from securemail.core.levels import TlsFailure, TlsLevel
from securemail.core.transport import TransportFacts
from securemail.dns import Resolver
from securemail.gateway.events import (
    DeliveryAttempt,
    Fanout,
    LogSink,
    MemorySink,
    MtaStsFailure,
    MtaStsFetched,
)
from securemail.gateway.outbound.deliver import Deliverer, Item
from securemail.gateway.outbound.mta_sts import StsPolicies
from securemail.gateway.spool import NewMessage, NewRecipient, RcptStatus, SqliteSpool
from securemail.mech.mta_sts import MAX_POLICY_BYTES, WELL_KNOWN
from securemail.tls import opportunistic_client_context, verified_client_context

pytestmark = pytest.mark.timeout(60)

DOMAIN = "partner.example"  # not on any guidance table: only MTA-STS can force TLS here
MX = f"mx.{DOMAIN}"
POLICY_HOST = f"mta-sts.{DOMAIN}"
BODY = b"Subject: letter\r\n\r\nconfidential clinical letter body\r\n"
ORDINARY = TransportFacts(TlsLevel.OPPORTUNISTIC)
PAST = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)


def policy_text(mode="enforce", mx=(MX,), max_age=86400):
    lines = ["version: STSv1", f"mode: {mode}", *(f"mx: {m}" for m in mx), f"max_age: {max_age}"]
    return "\r\n".join(lines) + "\r\n"


def publish(dns_server, policy_id):
    dns_server.remove(f"_mta-sts.{DOMAIN}", "TXT")
    dns_server.add(f"_mta-sts.{DOMAIN}", "TXT", f"v=STSv1; id={policy_id}")


class World:
    """The destination: its DNS, its policy host, and the clock the cache reads."""

    def __init__(self, dns_server, pki, spool, events):
        self.dns, self.pki, self.spool, self.events = dns_server, pki, spool, events
        self.now = [1_800_000_000.0]
        dns_server.add(DOMAIN, "MX", f"10 {MX}.")
        dns_server.add(MX, "A", "127.0.0.1")
        dns_server.add(POLICY_HOST, "A", "127.0.0.1")
        self.https = HttpsServer(pki.server_context(POLICY_HOST), {})
        self.https.start()

    def serve(self, route_or_text, policy_id="20261130"):
        route = route_or_text if isinstance(route_or_text, Route) else Route(body=route_or_text)
        self.https.routes[WELL_KNOWN] = route
        publish(self.dns, policy_id)

    @property
    def fetches(self):
        return sum(path == WELL_KNOWN for path, _ in self.https.requests)

    @property
    def txt_lookups(self):
        return sum(name.startswith("_mta-sts.") for name, _ in self.dns.queries)

    def policies(self, spool=None):
        return StsPolicies(
            Resolver([self.dns.nameserver], timeout=5, cache=False),
            store=spool or self.spool,
            https_port=self.https.port,
            ca_file=self.pki.ca_file,
            timeout=5.0,
            clock=lambda: self.now[0],
            events=self.events,
        )

    def deliverer(self, port, sts):
        return Deliverer(
            Resolver([self.dns.nameserver], timeout=5),
            helo="mail.example.nhs.uk",
            port=port,
            verified=verified_client_context(self.pki.ca_file),
            opportunistic=opportunistic_client_context(),
            sts=sts,
            events=self.events,
        )

    async def deliver(self, port, sts, facts=ORDINARY, n=1):
        d = self.deliverer(port, sts)
        items = [Item(f"Q{i}", "jo@example.nhs.uk", (f"a{i}@{DOMAIN}",), BODY) for i in range(n)]
        try:
            return await d.deliver(DOMAIN, facts, items)
        finally:
            await d.close()


@pytest.fixture
def events():
    return MemorySink()


@pytest.fixture
def world(dns_server, pki, spool, events):
    w = World(dns_server, pki, spool, events)
    yield w
    w.https.stop()


# --- enforce -------------------------------------------------------------------------


async def test_enforce_delivers_over_verified_tls_to_a_matching_mx(world, pki, events):
    world.serve(policy_text(mx=(f"*.{DOMAIN}",)))
    with SinkServer(hostname=MX, tls_context=pki.server_context(MX)) as sink:
        [result] = await world.deliver(sink.port, world.policies())
        [received] = sink.wait(1)
    assert result.delivered and result.tls_failure is None
    assert result.verified_by == f"mta-sts:*.{DOMAIN}"
    assert result.transport == "tls=required (MTA-STS enforce, id=20261130)"
    assert received.tls_version in ("TLSv1.2", "TLSv1.3")
    [attempt] = events.of(DeliveryAttempt)
    assert attempt.transport == result.transport and attempt.verified
    [fetched] = events.of(MtaStsFetched)
    assert (fetched.domain, fetched.policy_id, fetched.mode) == (DOMAIN, "20261130", "enforce")


def _expired(pki):
    return pki.server_context(MX, not_before=PAST - dt.timedelta(days=30), not_after=PAST)


REFUSED = {
    "certificate for the wrong name": (
        lambda pki: pki.server_context("mx.other.example"), (MX,),
        TlsFailure.CERTIFICATE_HOST_MISMATCH, "mismatch"),
    "expired certificate": (_expired, (MX,), TlsFailure.CERTIFICATE_EXPIRED, "expired"),
    "MX not in the policy": (
        lambda pki: pki.server_context(MX), (f"mx1.{DOMAIN}",), TlsFailure.VALIDATION_FAILURE,
        f"MX host {MX} does not match the MTA-STS policy of {DOMAIN}"),
}  # fmt: skip


@pytest.mark.parametrize("case", REFUSED)
async def test_enforce_defers_and_sends_nothing(case, world, pki):
    context, patterns, failure, why = REFUSED[case]
    world.serve(policy_text(mx=patterns))
    with SinkServer(hostname=MX, tls_context=context(pki)) as sink:
        [result] = await world.deliver(sink.port, world.policies())
        if failure is TlsFailure.VALIDATION_FAILURE:
            assert sink.sessions == []  # refused before connecting
    assert (result.delivered, result.permanent, result.tls_failure) == (False, False, failure)
    assert why in result.detail
    assert result.transport == "tls=required (MTA-STS enforce, id=20261130)"
    assert sink.messages == [] and b"MAIL FROM" not in bytes(sink.plaintext)


async def test_enforce_defers_when_starttls_is_stripped(world, pki):
    world.serve(policy_text())
    with (
        SinkServer(hostname=MX, tls_context=pki.server_context(MX)) as sink,
        StripTLSProxy(sink.host, sink.port) as proxy,
    ):
        [result] = await world.deliver(proxy.port, world.policies())
        assert proxy.stripped >= 1
    assert (result.delivered, result.permanent) == (False, False)
    assert result.tls_failure is TlsFailure.STARTTLS_NOT_SUPPORTED
    assert "did not offer STARTTLS" in result.detail
    assert b"MAIL FROM" not in bytes(proxy.from_client) and sink.messages == []


# --- testing ---------------------------------------------------------------------------


async def test_testing_delivers_as_before_and_records_what_enforce_would_refuse(
    world, pki, events, caplog
):
    world.serve(policy_text(mode="testing", mx=(f"mx1.{DOMAIN}",)))
    both = Fanout([events, LogSink()])
    world.events = both
    with (
        caplog.at_level(logging.WARNING, logger="securemail.delivery"),
        SinkServer(hostname=MX, tls_context=pki.server_context("mx.other.example")) as sink,
    ):
        [result] = await world.deliver(sink.port, world.policies())
        [received] = sink.wait(1)
    assert (
        result.delivered and result.transport == "tls=opportunistic (MTA-STS testing, id=20261130)"
    )
    assert received.tls_version is not None  # opportunistic TLS, as before
    failures = {(f.failure, f.mode, f.mx, f.policy_id) for f in events.of(MtaStsFailure)}
    assert failures == {
        (TlsFailure.VALIDATION_FAILURE, "testing", MX, "20261130"),  # MX not in the policy
        (TlsFailure.CERTIFICATE_HOST_MISMATCH, "testing", MX, "20261130"),  # wrong name
    }
    lines = [r.getMessage() for r in caplog.records if "mta-sts failure" in r.getMessage()]
    assert any("failure=certificate-host-mismatch mode=testing" in line for line in lines)


# --- the cache: one fetch per policy, across messages and restarts -----------------------


async def test_one_fetch_per_policy_id_across_messages_restarts_and_id_changes(
    world, pki, tmp_path
):
    world.serve(policy_text())
    sts = world.policies()
    with SinkServer(hostname=MX, tls_context=pki.server_context(MX)) as sink:
        for _ in range(3):  # a burst: memory answers, not DNS, not HTTPS
            results = await world.deliver(sink.port, sts, n=5)
            assert all(r.delivered for r in results)
        assert (world.fetches, world.txt_lookups) == (1, 1)
        for _ in range(3):  # later: the TXT record is read again, the id is the same
            world.now[0] += 61
            await world.deliver(sink.port, sts)
        assert (world.fetches, world.txt_lookups) == (1, 4)

        # A restart: a new spool connection, a new cache in memory, the same file.
        await world.spool.close()
        reopened = SqliteSpool(tmp_path / "spool.db", synchronous="NORMAL")
        await reopened.open()
        try:
            restarted = world.policies(reopened)
            [result] = await world.deliver(sink.port, restarted)
            assert world.fetches == 1
            assert result.transport == "tls=required (MTA-STS enforce, id=20261130)"

            # The domain publishes a new policy (testing now) under a new id: fetched once.
            world.serve(policy_text(mode="testing"), policy_id="20261201")
            world.now[0] += 61
            [result] = await world.deliver(sink.port, restarted, n=1)
            await world.deliver(sink.port, restarted, n=3)
            assert world.fetches == 2
            assert result.transport == "tls=opportunistic (MTA-STS testing, id=20261201)"
            record = await reopened.sts_get(DOMAIN)
            assert (record.policy_id, record.expires) == ("20261201", world.now[0] + 86400)
        finally:
            await reopened.close()


async def test_concurrent_deliveries_share_one_lookup(world, pki):
    world.serve(policy_text())
    sts = world.policies()
    with SinkServer(hostname=MX, tls_context=pki.server_context(MX)) as sink:
        batches = await asyncio.gather(*(world.deliver(sink.port, sts) for _ in range(5)))
    assert all(r.delivered for batch in batches for r in batch)
    assert (world.fetches, world.txt_lookups) == (1, 1)


# --- failed refreshes: the cached policy stays in force ----------------------------------

BROKEN = {
    "HTTPS down": (None, TlsFailure.STS_POLICY_FETCH_ERROR, "connect"),
    "malformed": (Route(body="version: STSv1\r\nmode: strict\r\n"),
                  TlsFailure.STS_POLICY_INVALID, "mode must be enforce, testing or none"),
    "oversized": (Route(body="x" * (MAX_POLICY_BYTES + 1)),
                  TlsFailure.STS_POLICY_FETCH_ERROR, f"limit {MAX_POLICY_BYTES}"),
    "redirect": (Route(302, location="https://elsewhere.example/policy"),
                 TlsFailure.STS_POLICY_FETCH_ERROR, "redirect"),
}  # fmt: skip


@pytest.mark.parametrize("case", BROKEN)
async def test_a_failed_refresh_keeps_the_cached_policy_enforced(case, world, pki, events):
    route, failure, why = BROKEN[case]
    world.serve(policy_text())
    sts = world.policies()
    with SinkServer(hostname=MX, tls_context=pki.server_context(MX)) as good:
        [first] = await world.deliver(good.port, sts)
    assert first.delivered
    if route is None:
        world.https.stop()
    else:
        world.https.routes[WELL_KNOWN] = route
    publish(world.dns, "20261201")  # a new id: the cached policy must be refreshed
    world.now[0] += 61
    with SinkServer(hostname=MX, tls_context=pki.server_context("mx.other.example")) as bad:
        [result] = await world.deliver(bad.port, sts)
        assert bad.messages == [] and b"MAIL FROM" not in bytes(bad.plaintext)
    assert result.tls_failure is TlsFailure.CERTIFICATE_HOST_MISMATCH and not result.delivered
    assert result.transport == "tls=required (MTA-STS enforce, id=20261130)"  # the cached one
    [failed] = events.of(MtaStsFailure)
    assert (failed.failure, failed.policy_id, failed.kept) == (failure, "20261201", "20261130")
    assert why in failed.detail


@pytest.mark.parametrize("case", [c for c in BROKEN if c != "HTTPS down"] + ["untrusted"])
async def test_no_usable_policy_and_no_cache_means_none_applies(case, world, pki, caplog):
    route, failure, why = BROKEN.get(
        case, (Route(body=policy_text()), TlsFailure.STS_WEBPKI_INVALID, "certificate")
    )
    if case == "untrusted":
        world.https.stop()
        world.https = HttpsServer(pki.server_context(POLICY_HOST, trusted=False), {})
        world.https.start()
    world.serve(route)
    world.events = LogSink()
    with (
        caplog.at_level(logging.WARNING, logger="securemail.delivery"),
        SinkServer(hostname=MX) as plain,
    ):  # no STARTTLS at all: only an enforced policy would stop this
        [result] = await world.deliver(plain.port, world.policies())
        plain.wait(1)
    assert result.delivered and result.transport == "tls=opportunistic"
    [line] = [r.getMessage() for r in caplog.records if "mta-sts failure" in r.getMessage()]
    assert f"domain={DOMAIN} failure={failure.value}" in line and "kept=-" in line
    assert why in line


async def test_dns_failure_uses_the_cache_else_no_policy(world, pki, dns_server):
    world.serve(policy_text())
    sts = world.policies()
    with SinkServer(hostname=MX, tls_context=pki.server_context(MX)) as sink:
        await world.deliver(sink.port, sts)
    dns_server.behave(f"_mta-sts.{DOMAIN}", "servfail")
    world.now[0] += 61
    with SinkServer(hostname=MX) as plain:
        [cached] = await world.deliver(plain.port, sts)
        [fresh] = await world.deliver(plain.port, world.policies(spool=_NoStore()))
    assert not cached.delivered and cached.tls_failure is TlsFailure.STARTTLS_NOT_SUPPORTED
    assert cached.transport == "tls=required (MTA-STS enforce, id=20261130)"
    assert fresh.delivered and fresh.transport == "tls=opportunistic"  # RFC 8461 §5


class _NoStore:
    """A cache that has never seen the domain (another gateway, a new spool)."""

    async def sts_get(self, domain):
        return None

    async def sts_put(self, record):
        pass


# --- TLS-Required: No -------------------------------------------------------------------


async def test_tls_required_no_relaxes_mta_sts_only_for_ordinary_mail(world, pki):
    world.serve(policy_text())
    sts = world.policies()
    relaxed = TransportFacts(TlsLevel.OPPORTUNISTIC, tls_required_no=True)
    secure = TransportFacts(TlsLevel.VERIFIED, why="secure recipient", tls_required_no=True)
    with SinkServer(hostname=MX, tls_context=pki.server_context("mx.other.example")) as sink:
        [ordinary] = await world.deliver(sink.port, sts, relaxed)
        [forced] = await world.deliver(sink.port, sts, secure)
        sink.wait(1)
    assert ordinary.delivered
    assert ordinary.transport == ("tls=opportunistic (MTA-STS enforce ignored: TLS-Required: No)")
    assert not forced.delivered and forced.tls_failure is TlsFailure.CERTIFICATE_HOST_MISMATCH
    assert forced.transport == "tls=required (secure recipient; MTA-STS enforce, id=20261130)"


# --- the whole gateway: its log, its queue, the sender's notice ----------------------------


def _log(caplog, text):
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


async def test_the_gateway_enforces_says_so_and_tells_the_sender(
    gateway_factory, dns_server, pki, internal, caplog, tmp_path
):
    """An ordinary recipient whose domain enforces MTA-STS, and an MX presenting a
    certificate for another name: deferred (never sent), the label in the log and in
    ``queue show``, and the delay notice forced TLS gives. ``TLS-Required: No`` on an
    ordinary message lifts it; on a secure recipient's it does not."""
    caplog.set_level(logging.INFO, logger="securemail")
    dns_server.add(DOMAIN, "MX", f"10 {MX}.")
    dns_server.add(MX, "A", "127.0.0.1")
    dns_server.add(POLICY_HOST, "A", "127.0.0.1")
    publish(dns_server, "20261130")
    label = "tls=required (MTA-STS enforce, id=20261130)"
    with (
        HttpsServer(pki.server_context(POLICY_HOST), {WELL_KNOWN: Route(body=policy_text())})
        as https,
        SinkServer(hostname=MX, tls_context=pki.server_context("mx.other.example")) as sink,
    ):  # fmt: skip
        gateway = await gateway_factory(
            sink.port, delivery_extra=f"https_port = {https.port}\ntls_failure_notify_after = 0"
        )
        alice = f"alice@{ORG_DOMAIN}"
        await asyncio.to_thread(submit, gateway, pki, alice, [f"a@{DOMAIN}"], message())
        [notice] = await asyncio.to_thread(internal.wait, 1)
        await eventually(lambda: _log(caplog, f"transport={label!r}"))
        line = _log(caplog, "deferred id=")[0]
        assert "failure=certificate-host-mismatch" in line and line.endswith(f"transport={label!r}")
        [queue_id] = [m.queue_id for m in await gateway.spool.list_messages(domain=DOMAIN)]
        shown = await asyncio.to_thread(
            run_cli, "queue", "show", queue_id, "-c", str(tmp_path / "securemail.toml"),
            cwd=tmp_path, columns=200,
        )  # fmt: skip
        assert f"last: {label}; TLS handshake with {MX}" in shown.stdout.decode()

        def stored(rcpt, tls, reason):
            return NewMessage(alice, (NewRecipient(rcpt, DOMAIN, RcptStatus.QUEUED, tls, reason),),
                              BODY, tls_required_no=True)  # fmt: skip

        await gateway.spool.store(stored(f"b@{DOMAIN}", TlsLevel.OPPORTUNISTIC, "not sensitive"))
        await gateway.spool.store(stored(f"c@{DOMAIN}", TlsLevel.VERIFIED, "secure recipient: x"))
        gateway.queue.wake()
        [received] = await asyncio.to_thread(sink.wait, 1)
        relaxed = "tls=opportunistic (MTA-STS enforce ignored: TLS-Required: No)"
        sent = f"result=sent reply='250 2.0.0 OK: stored' transport={relaxed!r}"
        await eventually(
            lambda: (
                _log(caplog, f"rcpt=<c@{DOMAIN}> tls_failure=yes")
                and _log(caplog, f"rcpt=<b@{DOMAIN}>")
            )
        )
        assert _log(caplog, f"rcpt=<b@{DOMAIN}>")[0].endswith(sent)
        [secure] = _log(caplog, f"rcpt=<c@{DOMAIN}> tls_failure=yes")[:1]
        assert secure.endswith(
            "transport='tls=required (secure recipient; MTA-STS enforce, id=20261130)'"
        )
    assert received.rcpt_tos == [f"b@{DOMAIN}"]  # a@ and c@ never reached the sink
    assert b"Action: delayed" in notice.data and b"certificate" in notice.data
    assert b"nothing was sent in the clear" in notice.data


# --- policy explain: the same chain, looked up live ---------------------------------------


async def test_policy_explain_shows_the_transport_decision_and_the_policy(
    dns_server, pki, tmp_path
):
    dns_server.add(DOMAIN, "MX", f"10 {MX}.")
    dns_server.add(POLICY_HOST, "A", "127.0.0.1")
    publish(dns_server, "20261130")
    eml = tmp_path / "letter.eml"
    headers = f"From: alice@{ORG_DOMAIN}\r\nTo: a@{DOMAIN}, gp@nhs.net\r\nSubject: hi\r\n"
    with HttpsServer(
        pki.server_context(POLICY_HOST), {WELL_KNOWN: Route(body=policy_text())}
    ) as https:
        config = write_config(tmp_path, pki=pki, dns_server=dns_server, delivery_port=25,
                              internal_port=2526, delivery_extra=f"https_port = {https.port}")  # fmt: skip

        def explain(*args, data=headers):
            eml.write_bytes(data.encode() + b"\r\nA note.\r\n")
            proc = run_cli("policy", "explain", "-c", str(config), str(eml), *args, columns=120)
            assert proc.returncode == 0, proc.stderr
            return proc.stdout.decode()

        looked_up = json.loads(await asyncio.to_thread(explain, "--lookup", "--json"))
        text = await asyncio.to_thread(explain, "--lookup")
        offline = await asyncio.to_thread(explain)
        relaxed = json.loads(
            await asyncio.to_thread(
                explain, "--lookup", "--json", data=headers + "TLS-Required: No\r\n"
            )
        )
        fetches = len(https.requests)
    labels = {d["recipient"]: d["transport"]["label"] for d in looked_up["decisions"]}
    assert labels == {
        f"a@{DOMAIN}": "tls=required (MTA-STS enforce, id=20261130)",
        "gp@nhs.net": "tls=required (secure recipient)",
    }
    sts = looked_up["mta_sts"][DOMAIN]
    assert (sts["mode"], sts["id"], sts["mx"], sts["source"]) == (
        "enforce", "20261130", [MX], "fetched"
    )  # fmt: skip
    assert looked_up["mta_sts"]["nhs.net"]["mode"] is None
    assert f"a@{DOMAIN}: tls=required (MTA-STS enforce, id=20261130)" in text
    assert f"MTA-STS {DOMAIN}: enforce, id=20261130, mx {MX}, max_age 86400" in text
    assert "      - MTA-STS enforce, id=20261130" in text and "set by mta-sts" in text
    assert "MTA-STS: not looked up" in offline and "tls=opportunistic" in offline
    assert fetches == 3  # one per --lookup run: explain keeps no cache of its own
    relaxed_labels = {d["recipient"]: d["transport"]["label"] for d in relaxed["decisions"]}
    assert relaxed["tls_required_no"] is True
    assert relaxed_labels == {
        f"a@{DOMAIN}": "tls=opportunistic (MTA-STS enforce ignored: TLS-Required: No)",
        "gp@nhs.net": "tls=required (secure recipient)",  # never relaxed
    }
