"""The start-up log says what the gateway runs with: file, spool, certificate, keys, policy."""

import logging
import re


async def test_startup_names_config_spool_certificate_keys_and_policy(gateway_factory, caplog):
    caplog.set_level(logging.INFO, logger="securemail.gateway")
    gateway = await gateway_factory()
    logged = [r.getMessage() for r in caplog.records if r.name == "securemail.gateway"]
    cfg = gateway.config
    assert f"config {cfg.source}" in logged
    assert any(m.startswith("spool ") and m.endswith(".db") for m in logged)
    cert = next(m for m in logged if m.startswith(f"certificate {cfg.tls.cert}: "))
    assert re.search(r"CN=[^,]+.*, expires \d{4}-\d\d-\d\dT", cert)
    assert any(m.startswith("DKIM keys: ") for m in logged)
    policy = next(m for m in logged if m.startswith("policy: "))
    assert f"audience {cfg.organisation.audience.value}" in policy
    assert f"unknown recipient: {cfg.policy.unknown_sensitive_action}" in policy
    assert "forced TLS inbound: from secure domains (SCCI1596)" in logged
    facts = gateway.startup_facts()
    assert not any(warning for fact, warning in facts if fact.startswith("certificate"))
    assert [fact for fact, _ in facts] == logged[: len(facts)]  # one Lifecycle each, first


async def test_an_expired_certificate_is_a_warning(gateway_factory):
    gateway = await gateway_factory()
    gateway.clock = lambda: 33e9  # the year 3015: past the test certificate's expiry
    facts = dict(gateway.startup_facts())
    (cert,) = [fact for fact in facts if fact.startswith("certificate")]
    assert ", EXPIRED " in cert and facts[cert] is True
