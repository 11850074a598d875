"""Classify generated addresses through the CLI's streaming path; compare with Postfix.

    .venv/bin/python bench/classify_bench.py [--sizes 100000,1000000] [--seed 1]

For each size N it writes N generated addresses to a file, then runs

* securemail: ``securemail classify --json - < addresses`` (full parse, IDNA, guidance
  tables, accredited list, JSON lines out), and
* the peer: Postfix's own table lookup, ``postmap -q - pcre:guidance.pcre < addresses``,
  with the health-and-care guidance table written as a PCRE access table (how a Postfix
  site would express it; it does no address validation),

and prints addresses/s for both, the ratio, and securemail's peak RSS (from wait4), so
memory can be seen to stay flat as N grows. Output is counted, not trusted: each run must
emit one line per input line.
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GNU_TIME = "/usr/bin/time"
SECUREMAIL = ROOT / ".venv" / "bin" / "securemail"

PCRE_TABLE = r"""
/@([^@.]+\.)*nhs\.net$/               secure nhs-net
/@([^@.]+\.)*secure\.nhs\.uk$/        secure secure-nhs-uk
/@([^@.]+\.)*nhs\.uk$/                unknown nhs-uk
/@([^@.]+\.)*gov\.uk$/                secure gov-uk
/@([^@.]+\.)*cjsm\.net$/              secure cjsm-net
/@([^@.]+\.)*pnn\.police\.uk$/        secure pnn-police-uk
/@([^@.]+\.)*mod\.uk$/                secure mod-uk
/@([^@.]+\.)*parliament\.uk$/         secure parliament-uk
/./                                   unknown other
"""

FIRST = ["jo", "sam", "alex", "chris", "pat", "lee", "kim", "ash", "jan", "max"]
LAST = ["smith", "jones", "taylor", "brown", "williams", "wilson", "evans", "patel"]


def generate(n: int, seed: int) -> Iterator[str]:
    """A realistic mix: mostly NHS/government, a long tail of other domains, some junk."""
    rng = random.Random(seed)
    trusts = [f"trust{i}" for i in range(2000)]
    councils = [f"council{i}" for i in range(500)]
    tail = [f"company{i}.co.uk" for i in range(50000)]
    for _ in range(n):
        local = f"{rng.choice(FIRST)}.{rng.choice(LAST)}{rng.randrange(100)}"
        roll = rng.random()
        if roll < 0.35:
            addr = f"{local}@nhs.net"
        elif roll < 0.45:
            addr = f"{local}@{rng.choice(trusts)}.secure.nhs.uk"
        elif roll < 0.60:
            addr = f"{local}@{rng.choice(trusts)}.nhs.uk"
        elif roll < 0.70:
            addr = f"{local}@{rng.choice(councils)}.gov.uk"
        elif roll < 0.90:
            addr = f"{local}@{rng.choice(tail)}"
        elif roll < 0.94:
            addr = f"{local.title()} <{local}@NHS.NET>"
        elif roll < 0.97:
            addr = f"{local}@nhs.net@{rng.choice(tail)}"
        else:
            addr = f"{local}@bücher{rng.randrange(1000)}.example"
        yield addr


def run(cmd: list[str], stdin: Path, stdout: Path, rss_file: Path) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of one command.

    RSS comes from GNU time, not from this process's wait4(): Linux carries ru_maxrss
    across exec, so a child forked from this (large) process would report our size.
    """
    with stdin.open("rb") as src, stdout.open("wb") as dst:
        start = time.perf_counter()
        proc = subprocess.run(
            [GNU_TIME, "-f", "%M", "-o", str(rss_file), *cmd],
            stdin=src,
            stdout=dst,
            stderr=subprocess.PIPE,
            check=False,
        )
        elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{cmd[0]} failed: {proc.stderr.decode(errors='replace')}")
    return elapsed, int(rss_file.read_text().split()[-1])


def count_lines(path: Path) -> int:
    with path.open("rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    postmap = shutil.which("postmap") or "/usr/sbin/postmap"
    if not Path(postmap).exists():
        sys.exit("postmap not found: run 'make bench' (it installs postfix and postfix-pcre)")
    with tempfile.TemporaryDirectory(prefix="classify-bench-") as tmp:
        work = Path(tmp)
        table = work / "guidance.pcre"
        table.write_text(PCRE_TABLE)
        postfix_etc = work / "etc"
        postfix_etc.mkdir()
        (postfix_etc / "main.cf").write_text("compatibility_level = 3.6\n")
        env_cfg = work / "securemail.toml"
        env_cfg.write_text("")
        print(f"{'N':>10} {'securemail/s':>13} {'per min':>12} {'peak RSS':>9} "
              f"{'postmap/s':>11} {'ratio':>6}")  # fmt: skip
        for n in (int(s) for s in args.sizes.split(",")):
            addresses = work / f"addresses-{n}.txt"
            with addresses.open("w") as f:
                for address in generate(n, args.seed):
                    f.write(address + "\n")
            out = work / "out.jsonl"
            sm_time, sm_rss = run(
                [str(SECUREMAIL), "classify", "--config", str(env_cfg), "--json", "-"],
                addresses,
                out,
                work / "rss",
            )
            if (got := count_lines(out)) != n:
                sys.exit(f"securemail printed {got} lines for {n} addresses")
            pm_time, _ = run(
                [postmap, "-c", str(postfix_etc), "-q", "-", f"pcre:{table}"],
                addresses,
                out,
                work / "rss",
            )
            if (got := count_lines(out)) != n:
                sys.exit(f"postmap printed {got} lines for {n} addresses")
            sm_rate, pm_rate = n / sm_time, n / pm_time
            print(
                f"{n:>10,} {sm_rate:>13,.0f} {sm_rate * 60:>12,.0f} {sm_rss / 1024:>7.1f}MB "
                f"{pm_rate:>11,.0f} {sm_rate / pm_rate:>6.2f}"
            )
    print("ratio = securemail addresses/s ÷ postmap addresses/s (same input, same run)")


if __name__ == "__main__":
    main()
