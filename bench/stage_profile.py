"""Per-message CPU of the gateway, split by stage, measured by sampling (``py-spy``).

    .venv/bin/python bench/stage_profile.py RAW --cpu SECONDS --msgs N [--verbose]

(re-reads a raw profile saved by ``relay_bench.py --stages``; the bench itself imports
this module.)

Why sampling: instrumenting the accept path would add code to production and change
what it measures. ``py-spy record --pid P --subprocesses --nonblocking`` reads the
stacks of the gateway and all its child processes (accept workers, CPU offload workers)
from outside, without pausing them.

**What a sample counts.** py-spy's default keeps only non-idle threads: state ``R`` in
``/proc/PID/task/TID/stat`` (running or runnable; not waiting for the GIL, a socket or
an fsync), so the samples are CPU, which is what we split. ``--gil`` would be wrong
here: the spool writer thread runs SQLite with the GIL released, and that is CPU the
gateway spends per message.

**One stage per sample.** Each frame is matched against ``RULES`` (module path,
function name); the first rule that matches a frame gives it a stage and a tier:

* ``LEAF`` stages (header parsing, the scan, classification, DKIM, logging, …) are
  opaque: the OUTERMOST leaf frame of a stack decides, so a helper a stage calls (the
  scan reading headers, DKIM signing reading the From domain with DMARC's reader)
  stays that stage's cost.
* ``CONTAINER`` stages (the SMTP session, the accept pipeline's own code, delivery, the
  spool writer's loop) hold leaves: the INNERMOST container frame decides when no leaf
  is on the stack.
* ``LOOP`` frames (asyncio, uvloop, ssl, sockets) decide only when nothing else does:
  uvloop's I/O, and the TLS record layer it drives, run in C below the event loop with
  no Python frame saying which connection they serve, so they are a row of their own
  ("event loop and TLS") rather than a guess. In the relay bench the inbound sessions
  are plain SMTP, so its TLS is delivery's.

A sample with no Python frame at all (a thread caught in C code between frames) is
counted as "no Python frame"; anything else matches no rule and is "other"
(``--verbose`` lists the frames, so the rules can be checked). Without pausing the
gateway, py-spy now and then reads a stack while it changes: ``--verbose`` shows a few
impossible ones (``reparse_input`` calling ``classify``), a percent or two of samples.
Sampling the gateway did not change its CPU per message measurably (2.10-2.18 ms with
``--stages``, 2.29 without, in the same quarter hour); py-spy's own CPU is printed.

**From samples to milliseconds.** stage ms/msg = (stage samples / all samples) × (CPU
time of the gateway processes over the same interval) / messages. The CPU time is read
from ``/proc``: ``tree_cpu`` sums, over the serve process and every descendant alive at
that moment, utime + stime + cutime + cstime. A child that exits and is reaped has its
own and its reaped children's times added to its parent's cutime/cstime by the kernel,
so the sum over the tree loses nothing when children come and go between the two
readings (a child that is still a zombie is read from its own entry until it is
reaped). ``/proc/PID/stat`` of a process covers all its threads, dead ones included.
"""

from __future__ import annotations

import argparse
import enum
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

SMTP = "SMTP and DATA"
HEADERS = "headers"
SCAN = "scan"
POLICY = "classify and policy"
AUTH = "inbound auth"
RECEIVED = "Received"
DKIM_SIGN = "DKIM sign"
SPOOL = "spool and commit"
LOGGING = "logging"
DELIVERY = "delivery"
LOOP = "event loop and TLS"
OTHER = "other"
NO_FRAME = "no Python frame"
STAGES = (SMTP, HEADERS, SCAN, POLICY, AUTH, RECEIVED, DKIM_SIGN, SPOOL, LOGGING, DELIVERY,
          LOOP, OTHER, NO_FRAME)  # fmt: skip
"""Every stage, in the order the table prints them."""

RATE = 250  # samples per second
TOP = 15  # frames shown per list in verbose mode


class Tier(enum.Enum):
    LEAF = "leaf"  # opaque: the outermost leaf frame of a stack decides
    CONTAINER = "container"  # the innermost container frame decides if there is no leaf
    LOOP = "loop"  # decides only when nothing else matched


@dataclass(frozen=True, slots=True)
class Frame:
    function: str  # as py-spy names it: "GatewaySMTP.smtp_DATA", "<listcomp>"
    path: str  # full file name (py-spy --full-filenames), "<frozen abc>", "<string>"
    line: int = 0

    def __str__(self) -> str:
        return f"{self.function} ({_short(self.path)}:{self.line})"


@dataclass(frozen=True, slots=True)
class Rule:
    stage: str
    tier: Tier
    path: str  # regex searched in the frame's path
    function: str = ""  # regex searched in the frame's function name; "" for any

    def matches(self, frame: Frame) -> bool:
        return bool(re.search(self.path, frame.path)) and (
            not self.function or bool(re.search(self.function, frame.function))
        )


def _sm(module: str) -> str:
    """The path regex of a securemail module or package (``gateway/spool/``)."""
    return "/securemail/" + re.escape(module) + ("" if module.endswith("/") else "$")


def _named(*names: str) -> str:
    """The function regex for these names (``Class.method`` or a function)."""
    return r"(^|\.)(" + "|".join(map(re.escape, names)) + r")$"


_ACCEPT = _sm("gateway/inbound/accept.py")
_SQLITE = _sm("gateway/spool/sqlite.py")
_STDLIB = r"/python3\.\d+/"
_SITE = r"/site-packages/"
L, C = Tier.LEAF, Tier.CONTAINER
_WRITER_LOOP = ("_run", "_serve", "_execute", "_outside_transaction", "_settle", "_call")
_FOR_DELIVERY = ("_claim", "_data", "_record", "_checkpoint", "_hand_off", "_flush",
                 "_next_due", "_counts", "claim_due", "message_data", "record", "hand_off",
                 "flush", "next_due", "counts")  # fmt: skip

RULES: tuple[Rule, ...] = (
    # Specific functions first: a module rule further down would claim them.
    Rule(RECEIVED, L, _sm("gateway/inbound/server.py"), _named("received_header")),
    Rule(HEADERS, L, _sm("gateway/inbound/auth.py"), _named("strip_own_headers", "trust_header")),
    Rule(DKIM_SIGN, L, _ACCEPT, _named("_dkim_sign")),
    Rule(AUTH, L, _ACCEPT, _named("_authenticate", "_arc_seal", "_from_outside")),
    Rule(SCAN, L, _ACCEPT, _named("_scan")),
    Rule(POLICY, L, _sm("gateway/app.py"), _named("Gateway.classify")),
    Rule(POLICY, L, _sm("gateway/inbound/offload.py"), _named("Offload.runner", "inline_ok")),
    Rule(LOGGING, L, _sm("gateway/inbound/offload.py"), r"^(_LogRecord|_ToGateway)\."),
    # The spool writer thread: its loop and transactions (COMMIT: the group commit) are
    # the spool's; what it does for the queue manager (claims, delivery outcomes, the
    # checkpoint after a sensitive message is erased) is delivery's.
    Rule(SPOOL, C, _SQLITE, _named(*(f"SqliteSpool.{name}" for name in _WRITER_LOOP))),
    Rule(DELIVERY, L, _SQLITE, _named(*_FOR_DELIVERY)),
    Rule(DELIVERY, L, _sm("gateway/spool/schema.py"), _named("remove_if_final")),
    Rule(SPOOL, L, _sm("gateway/spool/")),
    # Modules.
    Rule(DKIM_SIGN, L, _sm("mech/dkim/sign.py")),
    Rule(AUTH, L, _sm("gateway/inbound/auth.py")),
    Rule(AUTH, L, _sm("mech/spf/")),
    Rule(AUTH, L, _sm("mech/dkim/")),
    Rule(AUTH, L, _sm("mech/dmarc.py")),
    Rule(AUTH, L, _sm("mech/arc.py")),
    Rule(AUTH, L, _sm("mech/results.py")),
    Rule(AUTH, L, _sm("mech/psl.py")),
    Rule(AUTH, L, _SITE + r"(dkim|authres)/"),
    Rule(SCAN, L, _sm("core/sensitivity.py")),
    Rule(SCAN, L, _sm("core/extract.py")),
    Rule(HEADERS, L, _sm("core/message.py")),
    Rule(POLICY, L, _sm("core/classify.py")),
    Rule(POLICY, L, _sm("core/policy.py")),
    Rule(POLICY, L, _sm("core/inbound_tls.py")),
    Rule(POLICY, L, _sm("core/senders.py")),
    Rule(POLICY, L, _sm("core/transport.py")),
    Rule(POLICY, L, _sm("core/accredited.py")),
    Rule(POLICY, L, _sm("core/rules.py")),
    Rule(POLICY, L, _sm("gateway/inbound/networks.py")),
    Rule(LOGGING, L, _sm("gateway/events.py")),
    Rule(LOGGING, L, _sm("gateway/logs.py")),
    Rule(LOGGING, L, _STDLIB + r"logging/"),
    Rule(POLICY, C, _ACCEPT),  # the pipeline's own steps: the accept decisions
    Rule(DELIVERY, C, _sm("gateway/outbound/")),
    Rule(DELIVERY, C, _sm("gateway/queue/")),
    Rule(SMTP, C, _sm("gateway/inbound/server.py")),
    Rule(SMTP, C, _sm("gateway/inbound/data.py")),
    Rule(SMTP, C, _sm("gateway/inbound/smtp_init.py")),
    Rule(SMTP, C, _sm("gateway/inbound/listeners.py")),
    Rule(SMTP, C, _sm("gateway/inbound/capacity.py")),
    Rule(SMTP, C, _sm("gateway/inbound/limits.py")),
    Rule(SMTP, C, _sm("gateway/inbound/recipients.py")),
    Rule(SMTP, C, _sm("gateway/inbound/users.py")),
    Rule(SMTP, C, _SITE + r"aiosmtpd/"),
    Rule(LOOP, Tier.LOOP, _STDLIB + r"(asyncio/|ssl\.py$|selectors\.py$|socket\.py$)"),
    Rule(LOOP, Tier.LOOP, _SITE + r"uvloop/"),
)


# --- reading py-spy's raw output --------------------------------------------------------

_FRAME = re.compile(r"^(?P<function>.*) \((?P<path>.*?)(?::(?P<line>\d+))?\)$")
_COUNT = re.compile(r" (\d+)$")


def read_raw(text: str) -> Iterator[tuple[tuple[Frame, ...], int]]:
    """py-spy's ``--format raw`` (``frame;frame;… COUNT`` per line, root first) as
    (code frames root first, count). Process and thread entries are dropped. A command
    line with a newline in it (``python -c``) spans lines: they are joined."""
    pending = ""
    for line in text.splitlines():
        pending = f"{pending}\n{line}" if pending else line
        found = _COUNT.search(pending)
        if found is None:
            continue
        stack, pending = pending[: found.start()], ""
        frames = []
        for part in stack.split(";"):
            if part.startswith(("process ", "thread (")):
                continue
            if (match := _FRAME.match(part)) is not None:
                frames.append(Frame(match["function"], match["path"], int(match["line"] or 0)))
        yield tuple(frames), int(found.group(1))


# --- attribution --------------------------------------------------------------------------


def rule_for(frame: Frame, rules: Sequence[Rule] = RULES) -> Rule | None:
    """The first rule that matches ``frame``, if any."""
    return next((rule for rule in rules if rule.matches(frame)), None)


def decide(frames: Sequence[Frame], rules: Sequence[Rule] = RULES) -> tuple[str, Frame | None]:
    """The stage of one sample (frames root first) and the frame that decided it (the
    innermost frame when nothing matched; None when there is no frame)."""
    if not frames:
        return NO_FRAME, None
    container: tuple[str, Frame] | None = None
    loop: tuple[str, Frame] | None = None
    for frame in frames:
        rule = rule_for(frame, rules)
        if rule is None:
            continue
        if rule.tier is Tier.LEAF:
            return rule.stage, frame
        if rule.tier is Tier.CONTAINER:
            container = (rule.stage, frame)
        else:
            loop = (rule.stage, frame)
    return container or loop or (OTHER, frames[-1])


def attribute(frames: Sequence[Frame], rules: Sequence[Rule] = RULES) -> str:
    """The one stage a sample's CPU is charged to (see the module docstring)."""
    return decide(frames, rules)[0]


@dataclass
class Tally:
    """Samples per stage, with the deciding frames kept so the rules can be checked."""

    samples: Counter[str] = field(default_factory=Counter)
    frames: dict[str, Counter[str]] = field(default_factory=dict)  # stage -> "why ← where"

    @property
    def total(self) -> int:
        return sum(self.samples.values())

    def add(self, frames: Sequence[Frame], count: int, rules: Sequence[Rule] = RULES) -> None:
        stage, frame = decide(frames, rules)
        self.samples[stage] += count
        where = "-" if frame is None else str(frame)
        if frames and frames[-1] is not frame:
            where += f" \N{LEFTWARDS ARROW} {frames[-1]}"
        self.frames.setdefault(stage, Counter())[where] += count

    def merge(self, other: Tally) -> None:
        self.samples.update(other.samples)
        for stage, frames in other.frames.items():
            self.frames.setdefault(stage, Counter()).update(frames)


def tally(raw: str, rules: Sequence[Rule] = RULES) -> Tally:
    result = Tally()
    for frames, count in read_raw(raw):
        result.add(frames, count, rules)
    return result


def table(result: Tally, cpu_seconds: float, messages: int) -> list[str]:
    """The per-stage table: ms of gateway CPU per message, and each stage's share."""
    total = result.total
    per_msg = cpu_seconds * 1000 / messages if messages else float("nan")
    lines = [
        f"{'stage':<22} {'ms/msg':>7} {'share':>6}",
    ]
    for stage in STAGES:
        n = result.samples.get(stage, 0)
        if n or stage not in (OTHER, NO_FRAME):
            share = n / total if total else 0.0
            lines.append(f"{stage:<22} {share * per_msg:7.3f} {share:6.1%}")
    lines.append(f"{'total':<22} {per_msg:7.3f} {1 if total else 0:6.1%}")
    return lines


def verbose_lines(result: Tally, top: int = TOP) -> list[str]:
    """Each stage's most sampled frames: the frame whose rule decided, and after "←" the
    innermost frame when it is another one (for "other", only the innermost frame)."""
    lines = []
    for stage in STAGES:
        frames = result.frames.get(stage)
        if not frames:
            continue
        lines.append(f"{stage}: samples, deciding frame \N{LEFTWARDS ARROW} innermost frame")
        lines += [f"  {n:6d}  {frame}" for frame, n in frames.most_common(top)]
    return lines


def _short(path: str) -> str:
    """A path without the directories that say nothing (the tree, site-packages)."""
    for marker in ("/securemail/", "/site-packages/"):
        if marker in path:
            return path[path.index(marker) + 1 :]
    stdlib = re.search(_STDLIB, path)
    return path[stdlib.end() :] if stdlib else path


# --- CPU time of a process tree, from /proc ---------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat(pid: int) -> list[str] | None:
    """/proc/PID/stat's fields after the command name (which may hold spaces and
    parentheses): [0] is the state, [1] the parent's pid, [11:15] utime stime cutime
    cstime."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # gone
        return None
    return text[text.rindex(")") + 2 :].split()


def tree_pids(root: int) -> list[int]:
    """``root`` and every process descended from it, alive (or a zombie) right now."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat(int(entry.name))) is not None:
            parents.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += parents.get(pid, [])
    return found


def tree_cpu(root: int) -> float:
    """CPU seconds used so far by ``root``, its descendants and those of them already
    reaped (utime + stime + cutime + cstime over the tree: see the module docstring)."""
    ticks = 0
    for pid in tree_pids(root):
        fields = _stat(pid)
        if fields is not None:
            ticks += sum(int(value) for value in fields[11:15])
    return ticks / _TICK


# --- the sampler --------------------------------------------------------------------------


def find_py_spy() -> str | None:
    """py-spy beside this Python (the venv's), else on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


@dataclass
class Profile:
    """What one sampled interval gave: the tally and what the sampling itself cost."""

    tally: Tally
    sampler_cpu: float  # CPU seconds py-spy used (on the same cores as the gateway)
    seconds: float  # how long it sampled
    raw: Path


class Sampler:
    """``py-spy record`` on a process tree, from ``start`` until ``stop``."""

    def __init__(self, py_spy: str, pid: int, output: Path, rate: int = RATE) -> None:
        self.output = output
        self.log = output.with_suffix(".log")
        command = [py_spy, "record", "--pid", str(pid), "--subprocesses", "--rate", str(rate),
                   "--format", "raw", "--output", str(output), "--nonblocking",
                   "--full-filenames", "--threads"]  # fmt: skip
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        self.started = time.monotonic()
        deadline = self.started + 10
        while "Sampling process" not in self.log.read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                self.proc.wait()
                raise RuntimeError(f"py-spy did not start: {self._said()}")
            time.sleep(0.02)

    def stop(self) -> Profile:
        """Stop sampling (py-spy writes its file on SIGINT) and read the result."""
        seconds = time.monotonic() - self.started
        fields = _stat(self.proc.pid)
        cpu = sum(int(v) for v in fields[11:13]) / _TICK if fields else 0.0
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if not self.output.exists():
            raise RuntimeError(f"py-spy wrote no profile: {self._said()}")
        return Profile(tally(self.output.read_text(errors="replace")), cpu, seconds, self.output)

    def _said(self) -> str:
        lines = self.log.read_text(errors="replace").strip().splitlines()
        return lines[-1] if lines else f"exit status {self.proc.returncode}"


def report(profiles: Sequence[Profile], cpu_seconds: float, messages: int,
           *, verbose: bool = False) -> list[str]:  # fmt: skip
    """The table for one or more sampled runs, with what the sampling cost."""
    result = Tally()
    for profile in profiles:
        result.merge(profile.tally)
    sampled = sum(p.seconds for p in profiles)
    sampler = sum(p.sampler_cpu for p in profiles)
    lines = [
        f"securemail CPU per message by stage: {cpu_seconds:.2f} s of gateway CPU "
        f"(serve and its children) for {messages} messages, {result.total} samples at "
        f"{RATE}/s",
        *table(result, cpu_seconds, messages),
        f"sampling cost: py-spy used {sampler:.2f} s of CPU over {sampled:.1f} s "
        f"({sampler / sampled if sampled else 0:.0%} of one core) on the cores the gateway "
        f"shares; --nonblocking, so the gateway is never paused; raw profiles: "
        + ", ".join(str(p.raw) for p in profiles),
    ]
    if verbose:
        lines += verbose_lines(result)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("raw", type=Path, nargs="+", help="py-spy --format raw output")
    parser.add_argument("--cpu", type=float, required=True, help="gateway CPU seconds")
    parser.add_argument("--msgs", type=int, required=True)
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    result = Tally()
    for path in args.raw:
        result.merge(tally(path.read_text(errors="replace")))
    print("\n".join(table(result, args.cpu, args.msgs)))
    if args.verbose:
        print("\n".join(verbose_lines(result)))


if __name__ == "__main__":
    main()
