"""Who may send as whom: the one From address of a message, and which addresses a
signed-in user owns.

A submission user who can write any ``MAIL FROM`` or ``From:`` sends as anyone, and we
DKIM-sign it for our domain: the recipient sees ``ceo@nhs.net`` vouched for by us. So,
as Postfix's ``reject_sender_login_mismatch`` does, each user owns a list of addresses
and both the envelope sender (at MAIL) and the header From (at end of DATA) must be one
of them. The header From is the one a person reads and DMARC judges, so it is read the
way DMARC reads it (``header_from``, which ``mech.dmarc`` uses too): exactly one From
field holding exactly one mailbox, else refused.

Addresses are compared by ``address_key``: the domain as ``parse_address`` normalises it
(lower-case A-labels) and the local part lower-cased. RFC 5321 lets a local part be
case-sensitive, but our own mailboxes are not, and Postfix's lookup tables fold case
the same way; a different spelling of the same text therefore cannot slip past, and a
genuinely different mailbox (``alice+x``, a quoted local part) is simply not owned.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from securemail.core import replies
from securemail.core.addresses import Address, AddressError, parse_address, split_address_list
from securemail.core.message import HeaderBlock
from securemail.core.replies import SmtpReply


def address_key(address: Address) -> str:
    """The form two addresses are compared in (see the module docstring)."""
    return f"{address.local.lower()}@{address.domain}"


def default_addresses(login: str, domains: Sequence[str]) -> tuple[str, ...]:
    """What a user owns when nobody said otherwise: ``LOGIN@`` each of our domains.

    A login that is itself an address (``jo@example.nhs.uk``, as many sites use) owns
    just that address. A login that cannot form a valid address owns nothing, so the
    safe outcome of a strange name is "may not send", never "may send as anything".
    """
    candidates = [login] if "@" in login else [f"{login}@{domain}" for domain in domains]
    owned: list[str] = []
    for candidate in candidates:
        try:
            owned.append(parse_address(candidate).addr_spec)
        except AddressError:
            continue
    return tuple(owned)


@dataclass(frozen=True, slots=True)
class OwnedAddresses:
    """The addresses one signed-in user may send as (keys by ``address_key``)."""

    user: str
    keys: frozenset[str]

    @classmethod
    def of(cls, user: str, addresses: Iterable[str]) -> OwnedAddresses:
        """Build from stored text; an address that does not parse is owned by nobody."""
        keys = set()
        for text in addresses:
            try:
                keys.add(address_key(parse_address(text)))
            except AddressError:
                continue
        return cls(user, frozenset(keys))

    def owns(self, address: Address) -> bool:
        return address_key(address) in self.keys


def header_from(block: HeaderBlock) -> tuple[Address | None, str]:
    """The message's one From mailbox, or (None, the problem) — RFC 7489 §6.6.1's rule.

    Exactly one From field holding exactly one valid mailbox: several From fields or
    several addresses are the classic way to show a person one sender while another is
    authenticated, so "which one counts" is never guessed.
    """
    fields = block.get_all("from")
    if not fields:
        return None, "no From header"
    if len(fields) > 1:
        return None, "more than one From header"
    pieces = split_address_list(fields[0].text)
    if not pieces:
        return None, "From header has no address"
    if len(pieces) > 1:
        return None, "From header with several addresses"
    try:
        return parse_address(pieces[0]), ""
    except AddressError as exc:
        return None, f"From address not valid: {exc}"


def mail_from_refusal(owned: OwnedAddresses, sender: Address) -> SmtpReply | None:
    """None when the signed-in user owns the envelope sender, else the 553 to send."""
    if owned.owns(sender):
        return None
    return replies.sender_not_owned(owned.user).logged(
        f"MAIL FROM <{sender.addr_spec}> not owned by user {owned.user}"
    )


def header_from_refusal(owned: OwnedAddresses, block: HeaderBlock) -> SmtpReply | None:
    """None when the message's one From address is owned by the signed-in user."""
    address, problem = header_from(block)
    if address is None:
        return replies.header_from_refused(owned.user, problem).logged(problem)
    if owned.owns(address):
        return None
    return replies.header_from_refused(owned.user, "address not owned").logged(
        f"From <{address.addr_spec}> not owned by user {owned.user}"
    )
