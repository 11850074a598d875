"""Inbound verification throughput: securemail vs dkimpy, same messages, same run.

    .venv/bin/python bench/auth_bench.py [--messages 2000] [--size 10240]

N messages signed (RSA-2048, relaxed/relaxed) by a domain whose DKIM key, SPF and
DMARC records a loopback DNS server answers. Measured in this process, one after the
other:

* securemail ``verify_dkim`` (async, key lookups through the cached resolver);
* the peer: dkimpy's ``dkim.verify`` (the reference Python DKIM library, used by many
  milters), with its key lookups answered by the same DNS server;
* securemail's full inbound check, ``authenticate`` (SPF + DKIM + DMARC + ARC), which
  is what the gateway runs on every inbound message.

Each run must verify every message (counted); the ratio is securemail ÷ dkimpy.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

import dkim
import dns.message
import dns.query
import dns.rdatatype

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from harness.dnsserver import DnsServer  # noqa: E402

from securemail.dns import Resolver  # noqa: E402
from securemail.gateway.inbound.auth import authenticate  # noqa: E402
from securemail.mech.dkim import DkimSigner, SigningKey, generate_key, verify_dkim  # noqa: E402
from securemail.mech.results import Result  # noqa: E402

DOMAIN = "trust.nhs.net"


def messages(n: int, size: int, signer: DkimSigner) -> list[bytes]:
    body = ("Clinical letter line of text for the benchmark.\r\n" * (size // 50 + 1))[:size]
    out = []
    for i in range(n):
        data = (
            f"From: Dr Jones <jones@{DOMAIN}>\r\nTo: jo@example.nhs.uk\r\n"
            f"Subject: referral {i}\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\n"
            f"Message-ID: <{i}.bench@{DOMAIN}>\r\n\r\n{body}\r\n"
        ).encode()
        out.append((signer.sign(data, DOMAIN) or b"") + data)
    return out


async def securemail_verify(msgs: list[bytes], resolver: Resolver) -> tuple[float, int]:
    start = time.perf_counter()
    passed = 0
    for chunk in range(0, len(msgs), 64):
        batch = await asyncio.gather(*(verify_dkim(m, resolver) for m in msgs[chunk : chunk + 64]))
        passed += sum(1 for verdicts in batch if verdicts and verdicts[0].result is Result.PASS)
    return time.perf_counter() - start, passed


async def securemail_authenticate(msgs: list[bytes], resolver: Resolver) -> tuple[float, int]:
    start = time.perf_counter()
    passed = 0
    for chunk in range(0, len(msgs), 64):
        batch = await asyncio.gather(
            *(
                authenticate(m, ip="192.0.2.7", helo="mx.trust.nhs.net",
                             mail_from=f"jones@{DOMAIN}", resolver=resolver)
                for m in msgs[chunk : chunk + 64]
            )
        )  # fmt: skip
        passed += sum(1 for v in batch if v.dmarc is not None and v.dmarc.result is Result.PASS)
    return time.perf_counter() - start, passed


def dkimpy_verify(msgs: list[bytes], server: DnsServer) -> tuple[float, int]:
    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        query = dns.message.make_query(name.decode().rstrip("."), dns.rdatatype.TXT)
        answer = dns.query.udp(query, server.host, port=server.port, timeout=timeout)
        return b"".join(b"".join(r.strings) for rrset in answer.answer for r in rrset)

    start = time.perf_counter()
    passed = sum(1 for m in msgs if dkim.verify(m, dnsfunc=dnsfunc))
    return time.perf_counter() - start, passed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--size", type=int, default=10240)
    args = parser.parse_args()
    pem, record = generate_key("rsa", 2048)
    signer = DkimSigner({DOMAIN: SigningKey(DOMAIN, "s1", "rsa-sha256", pem)})
    msgs = messages(args.messages, args.size, signer)
    zones = {
        f"s1._domainkey.{DOMAIN}": {"TXT": [record]},
        DOMAIN: {"TXT": ["v=spf1 ip4:192.0.2.0/24 -all"]},
        f"_dmarc.{DOMAIN}": {"TXT": ["v=DMARC1; p=reject"]},
        "nhs.net": {"TXT": ["v=spf1 -all"]},
    }
    with DnsServer(zones) as server:
        resolver = Resolver([server.nameserver], timeout=5)
        results = {
            "securemail verify_dkim": asyncio.run(securemail_verify(msgs, resolver)),
            "dkimpy dkim.verify": dkimpy_verify(msgs, server),
            "securemail authenticate (SPF+DKIM+DMARC+ARC)": asyncio.run(
                securemail_authenticate(msgs, Resolver([server.nameserver], timeout=5))
            ),
        }
    print(f"{args.messages} messages of {args.size} bytes, RSA-2048 signatures, DNS on loopback")
    for name, (seconds, passed) in results.items():
        if passed != args.messages:
            sys.exit(f"{name}: only {passed} of {args.messages} verified")
        print(f"  {name:46} {args.messages / seconds:8.0f} msgs/s  ({passed} pass)")
    ours = args.messages / results["securemail verify_dkim"][0]
    peer = args.messages / results["dkimpy dkim.verify"][0]
    print(f"ratio securemail verify_dkim ÷ dkimpy dkim.verify: {ours / peer:.2f}")


if __name__ == "__main__":
    main()
