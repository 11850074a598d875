"""Parse and normalise recipient addresses, strictly enough that no trick looks secure.

The classifier's safety rests on one fact: the domain we classify is the domain the mail
would really go to. Every ambiguity an attacker could use to make those differ
(``x@nhs.net@evil.com``, quoted ``@``, source routes, comments, lookalike Unicode,
IP literals) is either resolved the way an MTA resolves it or refused as invalid.

Limits are RFC 5321 §4.5.3.1: local part 64 octets, domain 255 octets on the wire
(253 characters written out), whole path 256 octets including the angle brackets.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass

import idna

MAX_LOCAL_OCTETS = 64
MAX_DOMAIN_CHARS = 253
MAX_ADDRESS_OCTETS = 254
MAX_INPUT_CHARS = 1024
MAX_LABEL_CHARS = 63
PARSED_KEPT = 1024  # parse_address's answers kept (inputs ≤ MAX_INPUT_CHARS: ≤ ~2 MB)

# RFC 5322 atext, plus non-ASCII characters (RFC 6531 SMTPUTF8 local parts); lone
# surrogates (undecodable input bytes) are not characters and are refused.
_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u0080-\ud7ff\ue000-\U0010FFFF]+")
_LDH_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_IPV4 = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}")
# Characters that make the fast path unsafe: quoting, routing, grouping, comments.
_SPECIAL = re.compile(r'["<>(),;:\\\[\]\s]')
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_QUOTED_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)


class AddressError(ValueError):
    """The text is not one valid mailbox; ``str(err)`` says why, for a person."""


@dataclass(frozen=True, slots=True)
class Address:
    """One mailbox. ``domain`` is lower-case ASCII (IDNA A-labels), without a final dot."""

    local: str
    domain: str
    display_name: str = ""

    @property
    def addr_spec(self) -> str:
        return f"{self.local}@{self.domain}"

    @property
    def unicode_domain(self) -> str:
        """The domain as a person would read it (U-labels)."""
        if "xn--" not in self.domain:
            return self.domain
        return idna.decode(self.domain)


@functools.lru_cache(maxsize=PARSED_KEPT)
def parse_address(text: str) -> Address:
    """Parse ``local@domain`` or ``Display Name <local@domain>`` into an ``Address``.

    Raises ``AddressError`` for anything that is not exactly one routable mailbox.

    The answers for the last ``PARSED_KEPT`` texts are kept (an ``Address`` is frozen;
    a refusal is not kept, and is worked out again): the gateway reads each address of
    a message at least twice (MAIL FROM, its classification; RCPT TO, its
    classification; the header From, its classification), 8-15 µs of CPU each.
    """
    if len(text) > MAX_INPUT_CHARS:
        raise AddressError(f"input is longer than {MAX_INPUT_CHARS} characters")
    if _CONTROL.search(text):
        raise AddressError("contains control characters (line breaks or NUL)")
    if _SURROGATE.search(text):
        raise AddressError("contains bytes that are not valid UTF-8")
    text = text.strip()
    if "(" in text:
        text = _without_outer_comments(text)
    if not text:
        raise AddressError("empty address")
    if _SPECIAL.search(text) is None:
        # Fast path: a bare addr-spec with nothing to quote or route.
        return _parse_addr_spec(text, "")
    display, addr = _split_display_name(text)
    return _parse_addr_spec(addr, display)


def qualify_postmaster(text: str, domain: str) -> str:
    """``postmaster`` with no domain (any case) is ``postmaster@domain``; else ``text``.

    RFC 5321 §4.5.1: a server must accept ``RCPT TO:<Postmaster>`` without a domain, so
    the report of a broken sender's problem reaches someone; it means the postmaster of
    the server's own (first) domain.
    """
    return f"postmaster@{domain}" if text.strip().lower() == "postmaster" else text


def sender_routing(address: Address) -> bool:
    """Does the local part ask the next MTA to route on (``%``, ``!``, a quoted ``@``)?

    ``victim%gmail.test@us``, ``gmail.test!victim@us`` and ``"victim@gmail.test"@us``
    are delivered to gmail.test by an internal server with default settings (Postfix's
    percent hack, UUCP bang paths, a quoted address): accepted from anyone, they make us
    an open relay through it. Postfix refuses them from untrusted clients
    (``allow_untrusted_routing = no``); so do we.
    """
    local = address.local
    return "%" in local or "!" in local or (local.startswith('"') and "@" in local)


_HELO_NAME = re.compile(r"[\x20-\x7e]+")


def valid_helo_name(name: str) -> bool:
    """An EHLO/HELO name is accepted if it is printable ASCII, whatever it says.

    RFC 5321 §4.1.4: a server must not refuse a session because the name does not match
    the client; a name with control characters or non-ASCII bytes is not a name at all,
    and cannot be written into a ``Received`` header or a log line as it is.
    """
    return _HELO_NAME.fullmatch(name) is not None


def _without_outer_comments(text: str) -> str:
    """``text`` without RFC 5322 comments before or after the mailbox (CFWS).

    ``a@b (Alice)`` and ``(work) Alice <a@b>`` are valid mailboxes; the comment carries no
    address, so it is dropped. A comment *inside* the addr-spec (``a(x)@b``) is left for
    the strict parser to refuse, as is anything unbalanced: where a comment or a quoted
    string ends decides which ``@`` is real, so there is no guessing.
    """
    spans: list[tuple[int, int]] = []  # top-level comments outside quoted strings
    quoted = escaped = False
    depth = start = 0
    for i, ch in enumerate(text):
        if escaped:
            escaped = False
        elif ch == "\\" and (quoted or depth):
            escaped = True
        elif depth:
            depth += {"(": 1, ")": -1}.get(ch, 0)
            if depth == 0:
                spans.append((start, i + 1))
        elif quoted:
            quoted = ch != '"'
        elif ch == '"':
            quoted = True
        elif ch == "(":
            depth, start = 1, i
    if depth or quoted or escaped:
        return text
    lead, trail = 0, len(text)
    for s, e in spans:
        if text[lead:s].strip():
            break
        lead = e
    for s, e in reversed(spans):
        if s < lead or text[e:trail].strip():
            break
        trail = s
    return text[lead:trail].strip()


def split_address_list(text: str) -> list[str]:
    """Split a To/Cc/Bcc header value into one string per mailbox, for ``parse_address``.

    Commas and semicolons split only outside quotes and angle brackets; RFC 5322 group
    syntax (``Team: a@x, b@y;``) yields its members. Each piece is left for the strict
    parser to accept or refuse, so nothing here decides what is valid.
    """
    text = re.sub(r"\r?\n[ \t]+", " ", text)
    pieces: list[str] = []
    start = depth = 0
    quoted = escaped = False
    for i, ch in enumerate(text):
        if escaped:
            escaped = False
        elif quoted:
            escaped, quoted = ch == "\\", ch != '"'
        elif ch == '"':
            quoted = True
        elif ch == "<":
            depth += 1
        elif ch == ">":
            depth = max(depth - 1, 0)
        elif ch == ":" and depth == 0 and "@" not in text[start:i]:
            start = i + 1  # group name
        elif ch in ",;" and depth == 0:
            pieces.append(text[start:i])
            start = i + 1
    pieces.append(text[start:])
    return [piece.strip() for piece in pieces if piece.strip()]


def _unquoted(text: str) -> list[tuple[int, str]]:
    """Return (index, char) for each character outside quoted strings.

    Raises on an unterminated quote, because where it ends decides which ``@`` is real.
    """
    out: list[tuple[int, str]] = []
    quoted = escaped = False
    for i, ch in enumerate(text):
        if escaped:
            escaped = False
        elif quoted:
            if ch == "\\":
                escaped = True
            elif ch == '"':
                quoted = False
        elif ch == '"':
            quoted = True
        else:
            out.append((i, ch))
    if quoted or escaped:
        raise AddressError("unterminated quoted string")
    return out


def _split_display_name(text: str) -> tuple[str, str]:
    chars = _unquoted(text)
    specials = {ch for _, ch in chars}
    if "," in specials or ";" in specials:
        raise AddressError("several addresses in one (separated by ',' or ';'); give one per line")
    opens = [i for i, ch in chars if ch == "<"]
    closes = [i for i, ch in chars if ch == ">"]
    if not opens and not closes:
        return "", text
    if len(opens) != 1 or len(closes) != 1:
        raise AddressError("several '<...>' parts: looks like more than one address")
    start, end = opens[0], closes[0]
    if end < start or text[end + 1 :].strip():
        raise AddressError("text after the closing '>'")
    display = text[:start].strip()
    if len(display) >= 2 and display[0] == '"' and display[-1] == '"':
        display = display[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    inner = text[start + 1 : end]
    if inner != inner.strip():
        # RFC 5321's path is "<" mailbox ">": repairing "< jo@x >" would accept what the
        # MTA after us may read differently
        raise AddressError("space inside '<...>' around the address")
    return display, inner


def _parse_addr_spec(addr: str, display: str) -> Address:
    if not addr:
        raise AddressError("empty address")
    chars = _unquoted(addr)
    ats = [i for i, ch in chars if ch == "@"]
    if ats and addr[ats[-1] + 1 :].startswith("["):
        raise AddressError("IP-literal domains are not accepted: secure email needs a named domain")
    for _, ch in chars:
        if ch in "<>,;[]":
            raise AddressError(f"unexpected {ch!r} in address")
        if ch == ":":
            raise AddressError("source routes ('@a:user@b') are not accepted")
        if ch == "(" or ch == ")":
            raise AddressError("comments '(...)' are not accepted in addresses")
        if ch.isspace():
            raise AddressError("unquoted space in address")
    if not ats:
        raise AddressError("no '@' in address")
    if len(ats) > 1:
        raise AddressError(
            "more than one '@' outside quotes: mail would go to the last domain, "
            f"{addr[ats[-1] + 1 :]!r}, so this is refused as ambiguous"
        )
    at = ats[0]
    local, domain_text = addr[:at], addr[at + 1 :]
    if domain_text.endswith("."):
        # a mailbox's domain is never written fully qualified (RFC 5321 §4.1.2);
        # "jo@nhs.net." is refused, not quietly made into jo@nhs.net
        raise AddressError("domain ends with '.' (not allowed in an address)")
    _check_local(local)
    domain = normalise_domain(domain_text)
    if len(local.encode()) + 1 + len(domain) > MAX_ADDRESS_OCTETS:
        raise AddressError(f"address is longer than {MAX_ADDRESS_OCTETS} octets (RFC 5321)")
    return Address(local=local, domain=domain, display_name=display)


def _check_local(local: str) -> None:
    if not local:
        raise AddressError("empty local part (nothing before '@')")
    if len(local.encode()) > MAX_LOCAL_OCTETS:
        raise AddressError(f"local part is longer than {MAX_LOCAL_OCTETS} octets (RFC 5321)")
    if local.startswith('"'):
        if _QUOTED_STRING.fullmatch(local) is None:
            # exactly one quoted-string: '"a""b"' is two, which readers join differently
            raise AddressError("malformed quoted local part (one quoted string only)")
        return
    for atom in local.split("."):
        if not atom:
            raise AddressError("local part has an empty part ('..' or a leading/trailing '.')")
        if _ATOM.fullmatch(atom) is None:
            raise AddressError(f"local part contains characters not allowed unquoted: {local!r}")


def normalise_domain(text: str) -> str:
    """Return the lower-case ASCII form of a mail domain, or raise ``AddressError``.

    Non-ASCII input must already be in the canonical form UTS #46 maps it to (apart
    from letter case): full-width letters or ideographic full stops that *would* map
    onto ``nhs.net`` are refused rather than silently becoming ``nhs.net``, because a
    person reading the original cannot tell what it is.
    """
    if not text:
        raise AddressError("empty domain (nothing after '@')")
    if text.startswith("["):
        raise AddressError("IP-literal domains are not accepted: secure email needs a named domain")
    if text.endswith("."):
        text = text[:-1]
    domain = text.lower() if text.isascii() else _to_ascii(text)
    if not domain:
        raise AddressError("empty domain")
    if len(domain) > MAX_DOMAIN_CHARS:
        raise AddressError(f"domain is longer than {MAX_DOMAIN_CHARS} characters (RFC 1035)")
    labels = domain.split(".")
    if len(labels) < 2:
        raise AddressError(f"domain {domain!r} has no dot: not a routable internet domain")
    if _IPV4.fullmatch(domain) or labels[-1].isdigit():
        raise AddressError(f"domain {domain!r} is an IP address, not a named domain")
    for label in labels:
        _check_label(label, domain)
    return domain


def _to_ascii(text: str) -> str:
    try:
        mapped = idna.uts46_remap(text, std3_rules=True, transitional=False)
        ascii_domain = idna.encode(mapped, uts46=False).decode("ascii")
    except (idna.IDNAError, UnicodeError) as exc:
        raise AddressError(f"not a valid internationalised domain name: {exc}") from exc
    if mapped != unicodedata.normalize("NFC", text.lower()):
        raise AddressError(
            f"domain is not written in canonical form; it would be read as {mapped!r}: "
            "write that instead"
        )
    return ascii_domain


def _check_label(label: str, domain: str) -> None:
    if not label:
        raise AddressError(f"domain {domain!r} has an empty label ('..')")
    if len(label) > MAX_LABEL_CHARS:
        raise AddressError(f"a label of {domain!r} is longer than {MAX_LABEL_CHARS} characters")
    if _LDH_LABEL.fullmatch(label) is None:
        raise AddressError(
            f"domain {domain!r} is not a valid host name (letters, digits and inner hyphens only)"
        )
    if label[2:4] == "--":
        if not label.startswith("xn--"):
            raise AddressError(f"label {label!r} uses the reserved '--' form")
        try:
            idna.decode(label)
        except (idna.IDNAError, UnicodeError) as exc:
            raise AddressError(f"label {label!r} is not valid IDNA: {exc}") from exc


# Latin lookalikes from other scripts (Unicode confusables, the ones seen in phishing).
_CONFUSABLES = str.maketrans(
    {
        "а": "a", "е": "e", "о": "o", "р": "p", "с": "c", "у": "y", "х": "x", "і": "i",
        "ј": "j", "ѕ": "s", "һ": "h", "ԁ": "d", "ӏ": "l", "ԛ": "q", "ԝ": "w", "к": "k",
        "м": "m", "т": "t", "в": "b", "н": "h", "п": "n", "г": "r", "ո": "n", "ս": "u",
        "α": "a", "ο": "o", "ρ": "p", "ν": "v", "τ": "t", "ι": "i", "κ": "k", "ε": "e",
        "υ": "u", "χ": "x", "η": "n", "ɡ": "g", "ı": "i", "ℓ": "l", "ⅼ": "l",
    }
)  # fmt: skip


def skeleton(unicode_domain: str) -> str:
    """Fold cross-script lookalikes to Latin, so ``nhs.nеt`` (Cyrillic е) reads ``nhs.net``.

    Used only to *warn* that a domain imitates a listed one; it never makes a domain
    secure.
    """
    folded = unicodedata.normalize("NFKD", unicode_domain.lower()).translate(_CONFUSABLES)
    return "".join(ch for ch in folded if not unicodedata.combining(ch))
