"""A DNS answer that did not come is never a finding (issue 14: under load, healthy
domains whose lookups timed out were graded ``fail``).

Every name a full check of a healthy domain asks about is made to fail in turn, by
SERVFAIL and by silence (a timeout), and the check must then say "could not check"
(``error``) somewhere and fail nothing. One run does it all at once: domain ``c<j>``
gets the fault on the ``j``-th name, so the faults never meet.
"""

from __future__ import annotations

import pytest

from securemail.check.model import Status
from securemail.check.runner import Checker

pytestmark = pytest.mark.timeout(120)


async def _names_asked(bulk_world, index: int) -> list[str]:
    """The names a full check of domain ``index`` asks about, in the order first asked."""
    before = len(bulk_world.dns.queries)
    report = await Checker(bulk_world.resolver(), bulk_world.options()).check(
        bulk_world.name(index)
    )
    assert report.verdict is Status.PASS, [f for f in report.findings if f.status > Status.PASS]
    asked = [n for n, _type in bulk_world.dns.queries[before:] if n not in bulk_world.shared_names]
    return list(dict.fromkeys(asked))


def _for_domain(asked: str, index: int) -> str:
    """Domain 0's name ``asked`` as domain ``index`` has it."""
    return asked.replace("c0.", f"c{index}.").replace("reports-c0.", f"reports-c{index}.")


def _failed(report: object) -> list[str]:
    return [f"{f.check}: {f.message}" for f in report.findings if f.status is Status.FAIL]  # type: ignore[attr-defined]


@pytest.mark.parametrize("bulk_world", [False], indirect=True)
@pytest.mark.parametrize("mode", ["servfail", "timeout"])
async def test_no_lookup_failure_is_ever_a_fail(bulk_world, mode: str) -> None:
    asked = await _names_asked(bulk_world, 0)
    assert len(asked) > 20, asked  # MX, addresses, SPF and its include, DKIM... all there
    assert len(asked) < len(bulk_world.domains), "more names than domains to fault them in"
    faulted = {}
    for index, asked_name in enumerate(asked, start=1):
        domain = bulk_world.name(index)
        faulted[domain] = _for_domain(asked_name, index)
        bulk_world.dns.behave(faulted[domain], mode)
    checker = Checker(bulk_world.resolver(timeout=0.5), bulk_world.options())
    reports = {r.domain: r async for r in checker.check_many(faulted, concurrency=len(faulted))}
    assert set(reports) == set(faulted)
    for domain, report in reports.items():
        assert not _failed(report), (faulted[domain], _failed(report))
        assert report.verdict is Status.ERROR, (faulted[domain], report.findings)


@pytest.mark.parametrize("bulk_world", [False], indirect=True)
@pytest.mark.parametrize("shared", ["1.0.0.127.in-addr.arpa", "ptr.sweep.test"])
async def test_reverse_dns_failure_is_not_a_fail(bulk_world, shared: str) -> None:
    """The names every domain's MX shares (its address's PTR and the name it points
    to), faulted one at a time for every domain."""
    assert shared in bulk_world.shared_names
    bulk_world.dns.behave(shared, "timeout")
    checker = Checker(bulk_world.resolver(timeout=0.5), bulk_world.options())
    async for report in checker.check_many(bulk_world.domains[:3]):
        assert not _failed(report)
        assert report.verdict is Status.ERROR
        codes = {f.check for f in report.findings if f.status is Status.ERROR}
        assert codes == {"mx.dns_error"}, report.findings
