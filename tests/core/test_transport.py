"""The one transport decision, for every combination of its facts.

The oracle below states each rule of the module docstring separately, as a reader of
RFC 8461/8689 and SCCI1596 would check them; ``decide_transport`` folds them into one
pass. Every one of the 96 combinations must satisfy all of them.
"""

from __future__ import annotations

import itertools

import pytest

from securemail.core.levels import TlsLevel
from securemail.core.transport import (
    Source,
    StsMode,
    TransportFacts,
    decide_transport,
    tls_required_no,
)

COMBINATIONS = [
    TransportFacts(
        recipient=recipient,
        why="secure recipient" if recipient.forced else "",
        requiretls=requiretls,
        tls_required_no=tls_required_no,
        map_forces=map_forces,
        map_entry="nhs.net = secure" if map_forces is not None else "",
        sts_mode=sts_mode,
        sts_id="20261130" if sts_mode is not None else "",
    )
    for recipient, requiretls, tls_required_no, map_forces, sts_mode in itertools.product(
        (TlsLevel.OPPORTUNISTIC, TlsLevel.VERIFIED),
        (False, True),
        (False, True),
        (None, False, True),
        (None, StsMode.NONE, StsMode.TESTING, StsMode.ENFORCE),
    )
]


def _ids(facts: TransportFacts) -> str:
    return (
        f"{facts.recipient.label}-rt{int(facts.requiretls)}-no{int(facts.tls_required_no)}"
        f"-map{facts.map_forces}-sts{facts.sts_mode}"
    )


@pytest.mark.parametrize("facts", COMBINATIONS, ids=_ids)
def test_every_combination_obeys_every_rule(facts: TransportFacts) -> None:
    d = decide_transport(facts)
    relaxable = facts.tls_required_no and not facts.requiretls and not facts.recipient.forced
    enforce = facts.sts_mode is StsMode.ENFORCE and not relaxable
    # A rule only ever raises: the recipient's own level is a floor.
    assert d.level >= facts.recipient
    # Plain text is acceptable only when no rule forces TLS.
    forced = facts.recipient.forced or facts.requiretls or bool(facts.map_forces) or enforce
    assert d.level.forced is forced
    # MTA-STS enforce (not relaxed) is the only way to MTA_STS.
    assert (d.level is TlsLevel.MTA_STS) is enforce
    # TLS-Required: No never relaxes forced TLS, and is ignored with REQUIRETLS.
    assert d.relaxed is (relaxable and facts.sts_mode in (StsMode.ENFORCE, StsMode.TESTING))
    assert d.sts_testing is (facts.sts_mode is StsMode.TESTING and not relaxable)
    assert d.requiretls is facts.requiretls
    # The source is the strongest rule that raised the level.
    if enforce:
        assert d.source is Source.MTA_STS
    elif facts.recipient.forced:
        assert d.source is Source.RECIPIENT
    elif facts.requiretls:
        assert d.source is Source.REQUIRETLS
    elif facts.map_forces:
        assert d.source is Source.TLS_POLICY
    else:
        assert d.source is Source.OPPORTUNISTIC
    # The label says "required" exactly when plain text is never acceptable.
    assert d.label.startswith("tls=required (" if forced else "tls=opportunistic")


def test_labels_name_each_rule_for_the_log_and_queue_show() -> None:
    secure = TransportFacts(TlsLevel.VERIFIED, why="secure recipient")
    assert decide_transport(secure).label == "tls=required (secure recipient)"
    sts = TransportFacts(TlsLevel.OPPORTUNISTIC, sts_mode=StsMode.ENFORCE, sts_id="abc1")
    assert decide_transport(sts).label == "tls=required (MTA-STS enforce, id=abc1)"
    assert decide_transport(TransportFacts(TlsLevel.OPPORTUNISTIC)).label == "tls=opportunistic"
    both = TransportFacts(
        TlsLevel.VERIFIED, why="secure recipient", sts_mode=StsMode.ENFORCE, sts_id="x"
    )
    assert decide_transport(both).reasons == ("secure recipient", "MTA-STS enforce, id=x")


def test_tls_required_no_relaxes_mta_sts_for_ordinary_mail_only() -> None:
    ordinary = TransportFacts(
        TlsLevel.OPPORTUNISTIC, tls_required_no=True, sts_mode=StsMode.ENFORCE, sts_id="1"
    )
    d = decide_transport(ordinary)
    assert (d.level, d.relaxed) == (TlsLevel.OPPORTUNISTIC, True)
    assert "TLS-Required: No" in d.label
    sensitive = TransportFacts(
        TlsLevel.VERIFIED,
        why="sensitive message",
        tls_required_no=True,
        sts_mode=StsMode.ENFORCE,
        sts_id="1",
    )
    assert decide_transport(sensitive).level is TlsLevel.MTA_STS
    flagged = TransportFacts(
        TlsLevel.OPPORTUNISTIC, requiretls=True, tls_required_no=True, sts_mode=StsMode.ENFORCE
    )
    assert decide_transport(flagged).level is TlsLevel.MTA_STS


@pytest.mark.parametrize(
    ("values", "relaxes"),
    [
        (["No"], True),
        ([" no "], True),
        (["NO"], True),
        ([], False),  # no field
        (["No", "No"], False),  # RFC 8689 §5 defines one field: two ask nothing
        (["Yes"], False),
        (["No; please"], False),
        ([""], False),
    ],
)
def test_only_one_tls_required_no_field_relaxes(values, relaxes):
    assert tls_required_no(values) is relaxes
