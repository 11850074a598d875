"""Config: defaults, the template, env overrides, and one clear error per mistake."""

from pathlib import Path

import pytest

from securemail.config import Config, default_config_text, load_config
from securemail.core.rules import Audience
from securemail.errors import ConfigError


def write(tmp_path, text):
    path = tmp_path / "securemail.toml"
    path.write_text(text)
    return path


def test_template_loads_to_the_defaults(tmp_path):
    cfg = load_config(write(tmp_path, default_config_text()), environ={})
    defaults = Config()
    assert cfg.organisation == defaults.organisation
    assert cfg.delivery == defaults.delivery
    assert cfg.listen == defaults.listen
    assert cfg.check == defaults.check
    assert cfg.spool == defaults.spool and cfg.spool.audit_days == 400
    # config init turns the portal on (issue 13); the code's defaults keep it off.
    assert (
        cfg.policy.unknown_sensitive_action == "portal" != defaults.policy.unknown_sensitive_action
    )
    assert cfg.portal.enabled and not defaults.portal.enabled
    assert cfg.portal.key_file == tmp_path / "var/portal.key"
    assert (cfg.portal.retention_days, cfg.portal.max_tries) == (30, 5)
    assert cfg.policy.unscannable == "sensitive" == defaults.policy.unscannable
    assert cfg.tls.cert == tmp_path / "var/tls/cert.pem"  # relative to the file
    assert cfg.tls.ca_file is None
    assert cfg.policy.accredited_list == tmp_path / "var/accredited.csv"
    assert cfg.inbound == defaults.inbound and cfg.inbound.require_tls_from == "secure"


def test_portal_action_needs_the_portal(tmp_path):
    path = write(tmp_path, '[policy]\nunknown_sensitive_action = "portal"\n')
    with pytest.raises(ConfigError, match=r"securemail.toml:2: .*\[portal\] enabled = true"):
        load_config(path, environ={})
    path.write_text('[portal]\nbase_url = "http://portal.example"\n')
    with pytest.raises(ConfigError, match=r"portal\.base_url: expected an https:// URL"):
        load_config(path, environ={})


def test_values_are_typed_and_normalised(tmp_path):
    cfg = load_config(
        write(
            tmp_path,
            """
[organisation]
audience = "government"
domains = ["Example.NHS.uk."]
[dns]
nameservers = ["127.0.0.1:5353", "::1"]
[policy]
secure_domains = ["Partner.ORG", "*.Council.Example"]
""",
        ),
        environ={},
    )
    assert cfg.organisation.audience is Audience.GOVERNMENT
    assert cfg.organisation.domains == ("example.nhs.uk",)
    assert cfg.dns.nameservers == ("127.0.0.1:5353", "::1")
    assert cfg.policy.secure_domains == ("partner.org", "*.council.example")


def test_environment_overrides(tmp_path):
    path = write(tmp_path, "[delivery]\nport = 25\n")
    cfg = load_config(
        path,
        environ={
            "SECUREMAIL_DELIVERY_PORT": "2526",
            "SECUREMAIL_DNS_NAMESERVERS": "127.0.0.1:5353, 127.0.0.2",
            "SECUREMAIL_ORGANISATION_AUDIENCE": "government",
        },
    )
    assert cfg.delivery.port == 2526
    assert cfg.dns.nameservers == ("127.0.0.1:5353", "127.0.0.2")
    assert cfg.organisation.audience is Audience.GOVERNMENT


ERRORS = [
    ("[delivery]\nport = 0\n", "securemail.toml:2: delivery.port: must be between 1 and 65535"),
    ("[delivery]\nport = \"25\"\n", "delivery.port: expected a whole number, got a string"),
    ("[dns]\nnameserver = []\n", "securemail.toml:2: dns.nameserver: unknown key (did you mean nameservers?)"),
    ("[nope]\nx = 1\n", "securemail.toml:1: unknown section [nope]"),
    ("[organisation]\naudience = \"nhs\"\n", "expected one of government, health-and-care"),
    ("[policy]\nunknown_sensitive_action = \"drop\"\n", "expected one of hold, reject, portal"),
    ("[policy]\nunscannable = \"deliver\"\n", "expected one of sensitive, ignore"),
    ("[policy]\nsecure_domains = [\"a@b.org\"]\n", "policy.secure_domains"),
    ("[relay]\nnetworks = [\"10.0.0.0/33\"]\n", "relay.networks"),
    ("[tls]\nmin_version = \"1.1\"\n", "expected one of 1.2, 1.3"),
    ("[listen]\ninbound = \"localhost\"\n", "expected HOST:PORT"),
    ("[listen]\ncpu_budget = 0\n", "securemail.toml:2: listen.cpu_budget: must be between 1 and 3600"),
    ("[dns]\nnameservers = [\"dns.example\"]\n", "expected IP or IP:PORT"),
    ("[delivery\n", "securemail.toml"),
    ("[listen]\nmax_connections = 0\n", "listen.max_connections: must be between 1 and"),
    ("[listen]\nmax_connections_per_ip = 0\n", "listen.max_connections_per_ip: must be between"),
    ("[listen]\nmax_data_in_flight = 10\n", "listen.max_data_in_flight: must be 0 or between"),
    ("[listen]\ngreet_pause = -1\n", "listen.greet_pause: must be between 0 and 60"),
    ("[spool]\naudit_days = 0\n", "securemail.toml:2: spool.audit_days: must be between 1 and 36500"),
    ("[spool]\naudit_days = 1.5\n", "spool.audit_days: expected a whole number"),
    ("[inbound]\nrequire_tls_from = \"all\"\n", 'securemail.toml:2: inbound.require_tls_from: expected "secure", "none" or a list of domain patterns'),
    ("[inbound]\nrequire_tls_from = \"partner.org\"\n", 'in the environment, a list has a comma: "partner.org,"'),
    ("[inbound]\nrequire_tls_from = true\n", "inbound.require_tls_from: expected a string or a list of strings, got a boolean"),
    ("[inbound]\nrequire_tls_from = [\"a@b.org\"]\n", "inbound.require_tls_from: 'a@b.org'"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "message"), ERRORS)
def test_errors_name_file_line_and_key(tmp_path, text, message):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), environ={})
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_require_tls_from_a_word_or_domain_patterns(tmp_path):
    """Patterns are cleaned as ``[policy] secure_domains`` are (one checker): case, a
    final dot and Unicode labels become the ASCII form the classifier compares."""
    text = '[inbound]\nrequire_tls_from = ["Partner.ORG.", "*.bücher.example"]\n'
    cfg = load_config(write(tmp_path, text), environ={})
    assert cfg.inbound.require_tls_from == ("partner.org", "*.xn--bcher-kva.example")
    text = '[inbound]\nrequire_tls_from = "none"\n'
    assert load_config(write(tmp_path, text), environ={}).inbound.require_tls_from == "none"
    # A public suffix only asks more senders for TLS: allowed here, unlike secure_domains.
    text = '[inbound]\nrequire_tls_from = ["*.co.uk"]\n'
    assert load_config(write(tmp_path, text), environ={}).inbound.require_tls_from == ("*.co.uk",)
    env = "SECUREMAIL_INBOUND_REQUIRE_TLS_FROM"
    assert load_config(None, environ={env: "none"}).inbound.require_tls_from == "none"
    listed = load_config(None, environ={env: "a.org, *.B.org"}).inbound.require_tls_from
    assert listed == ("a.org", "*.b.org")
    assert load_config(None, environ={env: "a.org,"}).inbound.require_tls_from == ("a.org",)


def test_listen_limits_defaults_and_data_in_flight(tmp_path):
    listen = load_config(write(tmp_path, ""), environ={}).listen
    assert (listen.max_connections, listen.max_connections_per_ip) == (1000, 50)
    assert listen.greet_pause == 0.3
    assert listen.data_in_flight == 4 * listen.max_message_size  # 0: derived
    text = "[listen]\nmax_message_size = 2048\nmax_data_in_flight = 4096\ngreet_pause = 0\n"
    listen = load_config(write(tmp_path, text), environ={}).listen
    assert (listen.data_in_flight, listen.greet_pause) == (4096, 0.0)


def test_bad_environment_value_names_the_variable(tmp_path):
    with pytest.raises(ConfigError, match=r"\$SECUREMAIL_DELIVERY_PORT: delivery.port"):
        load_config(write(tmp_path, ""), environ={"SECUREMAIL_DELIVERY_PORT": "http"})


def test_missing_file_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(Path(tmp_path / "absent.toml"), environ={})


def test_no_file_means_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = load_config(environ={})
    assert cfg.source is None
    assert cfg.delivery.port == 25


def test_misspelt_variables_are_warnings_not_errors(tmp_path):
    environ = {
        "SECUREMAIL_DELIVERY_PROT": "26",
        "SECUREMAIL_DELIVERY_PORT": "2525",
        "SECUREMAIL_DEBUG": "1",  # read by the CLI, not a setting
    }
    cfg = load_config(write(tmp_path, ""), environ=environ)
    assert cfg.delivery.port == 2525
    assert cfg.warnings == (
        "$SECUREMAIL_DELIVERY_PROT: not a securemail setting, ignored "
        "(did you mean SECUREMAIL_DELIVERY_PORT?)",
    )


def test_narrow_values_next_to_dangerous_ones_still_load(tmp_path):
    text = (
        '[organisation]\ndomains = ["trust.nhs.uk", "trust.nhs.net"]\n'
        '[relay]\nnetworks = ["10.0.0.0/8", "::1/128"]\n'
        '[policy]\nsecure_domains = ["*.partner.nhs.uk", "partner.co.uk"]\n'
        "[listen]\nmax_message_size = 4096\nmax_data_in_flight = 4096\n"
    )
    cfg = load_config(write(tmp_path, text), environ={})
    assert cfg.relay.networks == ("10.0.0.0/8", "::1/128")
    assert cfg.policy.secure_domains == ("*.partner.nhs.uk", "partner.co.uk")
    assert cfg.listen.data_in_flight == 4096
