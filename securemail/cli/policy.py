"""``securemail policy explain``: the gateway's per-recipient decision, for a message on disk.

The decision itself is ``core.policy.Policy.decide`` with the policy
``loaders.policy_from_config`` builds, the same object and call the gateway uses; the
transport decision is the delivery chain's own ``prepare`` (``gateway/outbound``: the
``tls_policy`` map, and with ``--lookup`` the MTA-STS link looking the policy up live,
as delivery would, but without the gateway's cache). This module only reads the message
and shows the results. Without ``--lookup`` nothing is asked of the network.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from securemail.cli.classify import AccreditedOpt, AudienceOpt, build_classifier, status_text
from securemail.cli.common import ConfigOpt, JsonOpt, out, print_json, say, text
from securemail.config import Config, load_config
from securemail.core.addresses import split_address_list
from securemail.core.message import HeaderBlock, HeaderLimitError, read_headers
from securemail.core.policy import Action, Decision, headline
from securemail.core.sensitivity import scan_message
from securemail.core.transport import TransportDecision, TransportFacts, tls_required_no
from securemail.errors import InputError
from securemail.loaders import policy_from_config

if TYPE_CHECKING:
    from securemail.gateway.outbound.mta_sts import StsView

MAX_MESSAGE_BYTES = 64 * 1024 * 1024

app = typer.Typer(
    rich_markup_mode=None,  # "[section] key" in help texts is text, not markup
    help="Decide what happens to a message, per recipient.",
)


@app.command("explain")
def policy_explain(
    message: Annotated[Path, typer.Argument(help="The message (.eml, RFC 5322); '-' for stdin.")],
    rcpt: Annotated[
        list[str] | None,
        typer.Option(
            "--rcpt", "-r", help="Recipient (repeatable); default: To, Cc and Bcc headers."
        ),
    ] = None,
    audience: AudienceOpt = None,
    accredited: AccreditedOpt = None,
    requiretls: Annotated[
        bool,
        typer.Option(
            "--requiretls", help="As if it came with MAIL FROM ... REQUIRETLS (RFC 8689)."
        ),
    ] = False,
    lookup: Annotated[
        bool,
        typer.Option(
            "--lookup",
            help="Look up each destination's MTA-STS policy now (DNS and HTTPS, as "
            "delivery does); without it the transport decision leaves MTA-STS out.",
        ),
    ] = False,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Show the sensitivity found in a message, the decision for each recipient, and
    the transport decision its delivery would be made under (the TLS it needs, and why)."""
    cfg = load_config(config)
    raw = _read_message(message)
    block = _header_block(raw)
    recipients = rcpt or _header_recipients(block)
    if not recipients:
        raise InputError(f"{message}: no recipients in To, Cc or Bcc; give --rcpt ADDRESS")
    classifier = build_classifier(cfg, audience, accredited)
    sensitivity = scan_message(raw)
    policy = policy_from_config(cfg)
    decisions = [policy.decide(classifier.classify(r), sensitivity) for r in recipients]
    relax = tls_required_no([f.text for f in block.get_all("tls-required")])
    made, views = asyncio.run(_transport(cfg, decisions, requiretls, relax, lookup))
    if json_out:
        print_json(
            {
                "message": str(message),
                "sensitivity": sensitivity.to_json(),
                "requiretls": requiretls,
                "tls_required_no": relax,
                "decisions": [
                    {**d.to_json(), "transport": _transport_json(made.get(d))} for d in decisions
                ],
                "mta_sts": {domain: v.to_json() for domain, v in views.items()} if lookup else None,
            }
        )
        return
    label = ("not sensitive", "green")
    if sensitivity.sensitive:
        label = ("sensitive", "bold red")
    elif sensitivity.unscannable:  # what that means is policy's call: see the decisions
        label = ("not fully scanned", "bold yellow")
    say(message, ": ", label, ": ", sensitivity.summary())
    _print_decisions(decisions)
    _print_transport(decisions, made, views if lookup else None, (requiretls, relax))


async def _transport(
    cfg: Config, decisions: list[Decision], requiretls: bool, relax: bool, lookup: bool
) -> tuple[dict[Decision, TransportDecision], dict[str, StsView]]:
    """Each deliverable recipient's transport decision, made by the delivery chain, and
    the MTA-STS policy each destination was found to have (``lookup`` only)."""
    from securemail.dns import Resolver
    from securemail.gateway.events import MemorySink
    from securemail.gateway.outbound.mta_sts import MtaSts, StsPolicies
    from securemail.gateway.outbound.policy import DeliveryPolicy, Refusal, default_policy
    from securemail.gateway.outbound.tls_policy import PolicyMap, TlsPolicyMap

    quiet = MemorySink()  # what the links would log is in each view's note instead
    links: list[DeliveryPolicy] = []
    sts = None
    if lookup:
        sts = StsPolicies(
            Resolver.from_config(cfg.dns),
            https_port=cfg.delivery.https_port,
            ca_file=cfg.tls.ca_file,
            events=quiet,
        )
        links.append(MtaSts(sts, skip=cfg.organisation.domains, events=quiet))
    if cfg.delivery.tls_policy:
        links.append(PolicyMap(TlsPolicyMap.parse(cfg.delivery.tls_policy), quiet))
    chain = default_policy(*links)
    made: dict[Decision, TransportDecision] = {}
    views: dict[str, StsView] = {}
    for d in decisions:
        if d.action is Action.REJECT:
            continue
        domain = d.recipient.rpartition("@")[2].lower()
        facts = TransportFacts(
            recipient=d.tls,
            why=headline(d.reason) if d.tls.forced else "",
            requiretls=requiretls,
            tls_required_no=relax,
        )
        decision = await chain.prepare(domain, facts)
        if not isinstance(decision, Refusal):
            made[d] = decision
        if sts is not None and domain not in cfg.organisation.domains:
            views[domain] = await sts.current(domain)  # in memory since prepare
    return made, views


def _transport_json(decision: TransportDecision | None) -> dict[str, object] | None:
    return None if decision is None else {"label": decision.label, **decision.to_json()}


def _read_message(path: Path) -> bytes:
    if str(path) == "-":
        return sys.stdin.buffer.read(MAX_MESSAGE_BYTES + 1)[:MAX_MESSAGE_BYTES]
    try:
        if path.stat().st_size > MAX_MESSAGE_BYTES:
            raise InputError(f"{path}: larger than {MAX_MESSAGE_BYTES // 2**20} MiB")
        return path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, not a message file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror}") from None


def _header_block(raw: bytes) -> HeaderBlock:
    """The header section as the gateway's one header reader sees it."""
    try:
        return read_headers(raw)
    except HeaderLimitError as exc:
        raise InputError(f"cannot read the message's header section: {exc}") from None


def _header_recipients(block: HeaderBlock) -> list[str]:
    """To, Cc and Bcc."""
    found: list[str] = []
    for name in ("to", "cc", "bcc"):
        for field in block.get_all(name):
            found.extend(split_address_list(field.text))
    return found


def _print_decisions(decisions: list[Decision]) -> None:
    table = Table()
    for column in ("recipient", "status", "action", "tls", "reason"):
        table.add_column(column, overflow="fold", ratio=1 if column == "reason" else None)
    for d in decisions:
        table.add_row(
            text(d.recipient),
            status_text(d.status),
            text(d.action.value),
            text(d.tls.label if d.action is not Action.REJECT else "-"),
            text(d.reason),
        )
    out.print(table)


def _print_transport(
    decisions: list[Decision],
    made: dict[Decision, TransportDecision],
    views: dict[str, StsView] | None,
    asked: tuple[bool, bool],
) -> None:
    flags = [name for name, on in zip(("REQUIRETLS", "TLS-Required: No"), asked, strict=True) if on]
    say("transport" + (f" (the sender asked: {', '.join(flags)})" if flags else "") + ":")
    for d in decisions:
        decision = made.get(d)
        if decision is None:
            say(f"  {d.recipient}: nothing is sent")
            continue
        say(f"  {d.recipient}: {decision.label}")
        say(f"      level {decision.level.label}, set by {decision.source.value}")
        for reason in decision.reasons:
            say(f"      - {reason}")
    if views is None:
        say("MTA-STS: not looked up (--lookup asks DNS and the policy host, as delivery does)")
        return
    for domain, view in views.items():
        policy = view.policy
        found = "no policy"
        if policy is not None:
            found = f"{policy.mode}, id={view.policy_id}, mx {', '.join(policy.mx)}"
            found += f", max_age {policy.max_age}"
        say(f"MTA-STS {domain}: {found} ({view.note})")
