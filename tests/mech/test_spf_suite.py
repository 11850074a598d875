"""check_host() against the OpenSPF RFC 7208 test suite (pyspf's ``rfc7208-tests.yml``).

The suite is read from the shared conformance directory only (never copied into the
project). Where it is absent the loader and driver are still proved on a sample in the
same format; CI sets SECUREMAIL_REQUIRE_SPF_SUITE so a missing suite fails there.
"""

import os
from pathlib import Path

from mech.spf_suite import Scenario, SuiteTest, load_documents, run_scenario, scenarios

SUITE = Path("/work/shared/conformance/rfc7208-tests.yml")
REQUIRE = "SECUREMAIL_REQUIRE_SPF_SUITE"

SAMPLE = r"""# the suite's own shapes: comments, ---, block scalars, flow lists, quoted keys
---
description: Sample
tests:
  mx-limit:
    description: >-
      there MUST be a limit of no more than 10 MX looked up
      and checked.
    spec: 4.6.4/2
    helo: mail.example.com
    host: 1.2.3.5
    mailfrom: foo@e4.example.com
    result: [permerror, fail]
  spaces:
    helo: mail.example.com
    host: 1.2.3.4
    mailfrom: test@e1a.example.com
    result: pass
  timeout:
    description: SPF record present, but TXT
      lookup times out.
    helo: mail.example.com
    host: 1.2.3.4
    mailfrom: foo@txttimeout.example.net
    result: temperror
  joined:
    helo: mail.example.com
    host: 192.0.2.5
    mailfrom: foo@null.example.com
    explanation: DEFAULT
    result: pass
zonedata:
  e4.example.com:
    - SPF: v=spf1 mx
    - MX: [0, mail.example.com]
    - MX: [1, mail.example.com]
    - MX: [2, mail.example.com]
    - MX: [3, mail.example.com]
    - MX: [4, mail.example.com]
    - MX: [5, mail.example.com]
    - MX: [6, mail.example.com]
    - MX: [7, mail.example.com]
    - MX: [8, mail.example.com]
    - MX: [9, mail.example.com]
    - MX: [10, e4.example.com]
  mail.example.com:
    - A: 1.2.3.4
    - TXT: 'it''s not SPF'
  e1a.example.com:
    - SPF: "v=spf1 a:macro%%percent%_%_space%-url-space.example.com -all"
  "macro%percent  space%20url-space.example.com":
    - A: 1.2.3.4
  txttimeout.example.net:
    - SPF:  v=spf1 -all
    - TXT:  NONE
    - TIMEOUT
  null.example.com:
    - SPF: [ "v=spf1 ip4:", "192.0.2.5 -all" ]
"""


def test_loader_reads_the_suite_format():
    (document,) = load_documents(SAMPLE)
    assert document["tests"]["mx-limit"]["description"] == (
        "there MUST be a limit of no more than 10 MX looked up and checked."
    )
    assert document["tests"]["mx-limit"]["result"] == ["permerror", "fail"]
    assert document["zonedata"]["e4.example.com"][1] == {"MX": ["0", "mail.example.com"]}
    assert document["zonedata"]["txttimeout.example.net"] == [
        {"SPF": "v=spf1 -all"},
        {"TXT": "NONE"},
        "TIMEOUT",
    ]
    assert document["zonedata"]["null.example.com"] == [{"SPF": ["v=spf1 ip4:", "192.0.2.5 -all"]}]
    assert document["zonedata"]["mail.example.com"][1] == {"TXT": "it's not SPF"}
    assert "macro%percent  space%20url-space.example.com" in document["zonedata"]
    (scenario,) = scenarios(SAMPLE)
    assert scenario.tests[0] == SuiteTest(
        "mx-limit", "1.2.3.5", "foo@e4.example.com", "mail.example.com",
        ("permerror", "fail"), None,
    )  # fmt: skip


async def test_driver_runs_a_sample_scenario():
    (scenario,) = scenarios(SAMPLE)
    assert await run_scenario(scenario) == []


async def test_driver_reports_a_wrong_result():
    wrong = SuiteTest(
        "wrong", "1.2.3.4", "foo@txttimeout.example.net", "h.example", ("pass",), None
    )
    scenario = Scenario("wrong", [wrong], {"txttimeout.example.net": [{"TXT": "v=spf1 -all"}]})
    (failure,) = await run_scenario(scenario)
    assert failure.startswith("wrong: fail not in ('pass',)")


async def test_rfc7208_suite():
    """Every scenario of the suite passes (203 tests in its 2014.04 release)."""
    if not SUITE.exists():
        assert not os.environ.get(REQUIRE), f"{SUITE} is missing and {REQUIRE} is set"
        return
    found = scenarios(SUITE.read_text(encoding="utf-8"))
    assert sum(len(s.tests) for s in found) >= 200, "the suite file looks truncated"
    failures = [f"{s.description}: {f}" for s in found for f in await run_scenario(s)]
    assert failures == []
