"""checkdmarc over the domains on stdin, as the checker benchmark measures it (in a process
of its own, so its CPU and peak RSS are counted the way securemail's are).

    python bench/checkdmarc_run.py default|shared HOST:PORT TIMEOUT < domains

``default`` is ``checkdmarc.check_domains`` as its users call it, with ``check_mx_tls``
on (securemail probes TLS too): DNSSEC, SOA, NS, MTA-STS, MX and STARTTLS, SPF, DMARC,
TLS-RPT, BIMI. It has no switch to narrow that, so ``shared`` calls its public
per-mechanism functions for what both tools check (``check_mx`` with TLS, ``check_spf``,
``check_dmarc``), in the order ``check_domains`` calls them. All DNS goes to the
benchmark's server (a dnspython resolver and, for the DNSSEC check, which takes no
resolver, the same server as ``nameservers``), timeout as given and no retries. Prints
one JSON line: how many results, and how many found each record valid.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from typing import Any

import checkdmarc
import dns.nameserver
import dns.resolver


def main() -> None:
    if len(sys.argv) != 4 or sys.argv[1] not in ("default", "shared"):
        sys.exit("usage: checkdmarc_run.py default|shared HOST:PORT TIMEOUT < domains")
    mode, server, timeout = sys.argv[1], sys.argv[2], float(sys.argv[3])
    host, port = server.rsplit(":", 1)
    nameserver = dns.nameserver.Do53Nameserver(host, int(port))
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [nameserver]
    resolver.timeout = resolver.lifetime = timeout
    dns_args: dict[str, Any] = {
        "nameservers": [nameserver], "resolver": resolver, "timeout": timeout, "retries": 0,
    }  # fmt: skip
    domains = [line.strip() for line in sys.stdin if line.strip()]
    results: list[dict[str, Any]] = []
    if mode == "default" and domains:
        found = checkdmarc.check_domains(domains, check_mx_tls=True, **dns_args)
        results = found if isinstance(found, list) else [found]  # type: ignore[list-item]
    elif mode == "shared":
        for domain in domains:
            results.append(
                {
                    "mx": checkdmarc.check_mx(domain, check_mx_tls=True, **dns_args),
                    "spf": checkdmarc.check_spf(domain, **dns_args),
                    "dmarc": checkdmarc.check_dmarc(domain, **dns_args),
                }
            )
    tally: Counter[str] = Counter(results=len(results))
    for result in results:
        mx = result["mx"]
        tally["mx_hosts"] += bool(mx.get("hosts"))
        tally["starttls"] += any(h.get("starttls") for h in mx.get("hosts", []))
        tally["spf_valid"] += bool(result["spf"].get("valid"))
        tally["dmarc_valid"] += bool(result["dmarc"].get("valid"))
        if "mta_sts" in result:
            tally["mta_sts_valid"] += bool(result["mta_sts"].get("valid"))
    print(json.dumps(tally), flush=True)


if __name__ == "__main__":
    main()
