"""The campaign: generate mutants with hypothesis, run each in the worker under a time and memory bound, judge.

A case is a *finding* when it ends in anything but a clean verdict: a
traceback (an exception that is not a PoLError), no answer within the time
bound (a hang: the worker is killed and restarted), a peak RSS more than the
bound above the case's starting RSS, a module imported while parsing, a file
in the canary directory (a payload ran), an exit-2 reason that is not one
line, or, in the full phase, a mutant accepted (exit 0) or an exit code other
than the one the fast path predicted.
"""

from __future__ import annotations

import json
import os
import random
import selectors
import shutil
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from tools.fuzz.honest import train_honest
from tools.fuzz.mutations import CLASSES, Env, Honest, Mutant

REPO = Path(__file__).resolve().parents[2]  # tools/fuzz/ -> the repository: the worker runs ``-m tools.fuzz.worker`` from it


class Worker:
    """A :mod:`tools.fuzz.worker` process; ``ask`` returns None when a case outlives its time bound."""

    def __init__(self, log: Path, headroom_gib: float = 3.0) -> None:
        self.log = log
        self.headroom_gib = headroom_gib
        self.restarts = 0
        self._start()

    def _start(self) -> None:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
                   LIGHTNING_POL_FUZZ_HEADROOM_GIB=str(self.headroom_gib), PYTHONHASHSEED="0")
        with open(self.log, "ab") as log:
            # cwd is the log's directory, never a mutant: a module in a proof must not be importable by accident.
            self.proc = subprocess.Popen([sys.executable, "-m", "tools.fuzz.worker"], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=log, cwd=self.log.parent, env=env, bufsize=0)
        self._buf = b""
        ready = self._read_line(180.0)
        if ready is None:
            raise RuntimeError(f"the fuzz worker did not start; see {self.log}")
        self.ready = ready

    def _read_line(self, timeout: float) -> dict[str, Any] | None:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            while b"\n" not in self._buf:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    return None
                chunk = os.read(self.proc.stdout.fileno(), 1 << 16)
                if not chunk:
                    return None
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def ask(self, request: dict[str, Any], timeout: float) -> dict[str, Any] | None:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write((json.dumps(request) + "\n").encode())
            reply = self._read_line(timeout)
        except (BrokenPipeError, OSError):
            reply = None
        if reply is None:  # a hang or a dead worker: kill it (only this process, by its pid) and start another
            self.restarts += 1
            self.proc.kill()
            self.proc.wait()
            self._start()
        return reply

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@dataclass
class Case:
    id: int
    cls: str
    desc: str
    exit: int | None = None
    stage: str = ""
    reason: str = ""
    seconds: float = 0.0
    rss_growth_mb: float | None = None
    rss_peak_mb: float = 0.0
    findings: list[str] = field(default_factory=list)
    full: dict[str, Any] | None = None
    on_sys_path: bool = False


@dataclass
class CampaignResult:
    cases: list[Case]
    wall_seconds: float
    honest: str
    settings: dict[str, Any]
    worker_restarts: int = 0
    canary_files: list[str] = field(default_factory=list)

    @property
    def findings(self) -> list[Case]:
        return [c for c in self.cases if c.findings]

    @property
    def full_cases(self) -> list[Case]:
        return [c for c in self.cases if c.full is not None]

    def by_class(self) -> dict[str, Counter[str]]:
        table: dict[str, Counter[str]] = defaultdict(Counter)
        for c in self.cases:
            table[c.cls]["cases"] += 1
            table[c.cls]["exit 2" if c.exit == 2 else "exit 1" if c.exit == 1 else "well-formed" if c.stage == "wellformed" else "other"] += 1
            if c.findings:
                table[c.cls]["findings"] += 1
            if c.full is not None:
                table[c.cls]["full"] += 1
                table[c.cls][f"full exit {c.full.get('exit')}"] += 1
        return dict(table)

    def stats(self) -> dict[str, Any]:
        fast = [c for c in self.cases if c.stage not in ("hang",)]
        full = [c.full for c in self.full_cases if c.full and c.full.get("stage") != "hang"]
        growth = [c.rss_growth_mb for c in fast if c.rss_growth_mb is not None]
        return {
            "cases": len(self.cases),
            "findings": len(self.findings),
            "exit_1": sum(c.exit == 1 for c in self.cases),
            "exit_2": sum(c.exit == 2 for c in self.cases),
            "wellformed": sum(c.stage == "wellformed" for c in self.cases),
            "stages": dict(Counter(c.stage for c in self.cases)),
            "max_seconds": max((c.seconds for c in fast), default=0.0),
            "max_rss_growth_mb": max(growth, default=0.0),
            "max_rss_peak_mb": max((c.rss_peak_mb for c in fast), default=0.0),
            "full_cases": len(full),
            "full_exits": dict(Counter(str(f.get("exit")) for f in full)),
            "full_max_seconds": max((f.get("seconds", 0.0) for f in full), default=0.0),
            "full_max_rss_growth_mb": max((f.get("rss_growth_mb") or 0.0 for f in full), default=0.0),
            "wall_seconds": self.wall_seconds,
            "worker_restarts": self.worker_restarts,
            "canary_files": self.canary_files,
        }

    def to_json(self) -> str:
        return json.dumps({"stats": self.stats(), "settings": self.settings, "by_class": self.by_class(),
                           "findings": [asdict(c) for c in self.findings]}, indent=1, default=str)

    def summary_md(self) -> str:
        s = self.stats()
        lines = [
            f"# Fuzz campaign: {s['cases']} mutants, {s['findings']} findings",
            "",
            f"Settings: {json.dumps(self.settings)}",
            "",
            "| class | cases | exit 2 | exit 1 | well-formed | full runs | full exit 1 | full exit 2 | findings |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for cls, t in sorted(self.by_class().items()):
            lines.append(f"| {cls} | {t['cases']} | {t['exit 2']} | {t['exit 1']} | {t['well-formed']} | {t['full']} | "
                         f"{t['full exit 1']} | {t['full exit 2']} | {t['findings']} |")
        lines += [
            "",
            f"Fast path: {s['exit_2']} exit 2, {s['exit_1']} exit 1, {s['wellformed']} well-formed; stages {s['stages']}.",
            f"Max per-case time {s['max_seconds']:.3f} s; max peak-RSS growth in a case {s['max_rss_growth_mb']:.1f} MB "
            f"(worker peak {s['max_rss_peak_mb']:.0f} MB).",
            f"Full verification: {s['full_cases']} mutants, exits {s['full_exits']}, max {s['full_max_seconds']:.1f} s, "
            f"max RSS growth {s['full_max_rss_growth_mb']:.1f} MB.",
            f"Wall time {s['wall_seconds']:.0f} s; worker restarts {s['worker_restarts']}; canary files {s['canary_files']}.",
        ]
        for c in self.findings[:50]:
            lines.append(f"- case {c.id} ({c.cls}) {c.desc}: {'; '.join(c.findings)}")
        return "\n".join(lines) + "\n"


def _judge_fast(case: Case, reply: dict[str, Any] | None, rss_bound_mb: float, timeout: float) -> None:
    if reply is None:
        case.stage, case.seconds = "hang", timeout
        case.findings.append(f"no verdict within {timeout:.0f} s (hang or worker death)")
        return
    case.exit, case.stage, case.reason = reply.get("exit"), reply.get("stage", ""), reply.get("reason", "")
    case.seconds, case.rss_growth_mb, case.rss_peak_mb = reply["seconds"], reply.get("rss_growth_mb"), reply.get("rss_peak_mb", 0.0)
    if case.stage == "crash":
        case.findings.append(f"traceback: {case.reason}")
        case.reason = reply.get("traceback", case.reason)
    if case.exit == 2 and (not case.reason or "\n" in case.reason or len(case.reason) > 1000):
        case.findings.append("exit 2 without a one-line reason (of at most 1,000 characters)")
    if reply.get("imported"):
        case.findings.append(f"modules imported while parsing: {reply['imported']}")
    if case.rss_growth_mb is not None and case.rss_growth_mb > rss_bound_mb:
        case.findings.append(f"peak RSS grew by {case.rss_growth_mb:.0f} MB (bound {rss_bound_mb:.0f})")


def _judge_full(case: Case, reply: dict[str, Any] | None, timeout: float, rss_bound_mb: float) -> None:
    if reply is None:
        case.full = {"stage": "hang", "exit": None}
        case.findings.append(f"full verification gave no verdict within {timeout:.0f} s")
        return
    case.full = {k: reply.get(k) for k in ("exit", "stage", "reason", "seconds", "rss_growth_mb", "error_lines", "traceback_in_stderr")}
    code = reply.get("exit")
    if reply.get("stage") == "crash":
        case.findings.append(f"full verification raised: {reply.get('reason')}")
        case.full["traceback"] = reply.get("traceback")
    elif code == 0:
        case.findings.append("full verification accepted the mutant (exit 0)")
    elif code == 2 and (reply.get("error_lines") != 1 or len(reply.get("reason") or "") > 1000):
        case.findings.append(f"exit 2 with {reply.get('error_lines')} 'error:' lines, the first {len(reply.get('reason') or '')} characters long")
    elif code not in (1, 2):
        case.findings.append(f"exit {code}: {reply.get('reason')}")
    if reply.get("traceback_in_stderr"):
        case.findings.append("a traceback on stderr")
    if case.exit is not None and code in (1, 2) and code != case.exit:
        case.findings.append(f"the fast path predicted exit {case.exit}, verify_with gave {code}")
    if (reply.get("rss_growth_mb") or 0.0) > rss_bound_mb:
        case.findings.append(f"full verification's peak RSS grew by {reply['rss_growth_mb']:.0f} MB (bound {rss_bound_mb:.0f})")


def run_campaign(
    out: Path,
    cases: int,
    seed: int = 0,
    full: int | None = 40,
    others: int = 100,
    timeout: float = 30.0,
    full_timeout: float = 300.0,
    rss_bound_mb: float = 200.0,
    full_rss_bound_mb: float = 1024.0,
    proof: Path | None = None,
    classes: list[str] | None = None,
    progress: Callable[[str], None] | None = None,
    verify_all: tuple[str, ...] = ("semantic", "tiers"),
) -> CampaignResult:
    """Run ``cases`` mutants (classes in turn) through the fast path, then ``full`` well-formed ones (None:
    every one) and ``others`` of the rest through full verification, and every mutant of the ``verify_all``
    classes (the well-formed lies, whose only verdict is the full one). Writes ``summary.json``, ``summary.md``
    and ``cases.jsonl`` into ``out``; mutants with findings are kept under ``out/findings``."""
    t0 = time.monotonic()
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    for sub in ("cases", "keep", "canary", "outside"):
        shutil.rmtree(out / sub, ignore_errors=True)
    honest_dir = train_honest(Path(proof).resolve() if proof else out / "honest" / "proof")
    env = Env(outside=out / "outside", canary=out / "canary")
    env.canary.mkdir()
    shutil.copytree(honest_dir, env.outside / "honest", symlinks=True)
    (env.outside / "fifo_proof").mkdir()
    os.mkfifo(env.outside / "fifo_proof" / "manifest.json")  # a parent path whose manifest would block a reader
    honest = Honest.load(honest_dir)
    names = list(classes or CLASSES)
    unknown = set(names) - set(CLASSES)
    if unknown:
        raise ValueError(f"unknown mutation classes {sorted(unknown)}; choose from {list(CLASSES)}")
    say = progress or (lambda msg: None)
    worker = Worker(out / "worker.log")
    record: list[Case] = []
    kept_wellformed: dict[str, list[Case]] = defaultdict(list)
    kept_others: list[Case] = []
    kept_all: list[Case] = []
    pick = random.Random(seed)
    seen_others = 0
    try:
        warm = [worker.ask({"id": -1, "dir": str(honest_dir), "mode": "fast"}, 120.0),
                worker.ask({"id": -2, "dir": str(honest_dir), "mode": "full", "out": str(out / "honest" / "verify")}, full_timeout)]
        if not warm[0] or warm[0].get("stage") != "wellformed" or not warm[1] or warm[1].get("exit") != 0:
            raise RuntimeError(f"the honest proof does not pass the fuzz worker's checks: {warm}")

        def one(cls: str, data: Any) -> None:
            nonlocal seen_others
            i = len(record)
            root = out / "cases" / f"{i:05d}"
            mutant = Mutant(honest, env, root)
            case = Case(i, cls, CLASSES[cls](data, mutant))
            case.on_sys_path = mutant.on_sys_path
            mutant.write()
            reply = worker.ask({"id": i, "dir": str(root), "mode": "fast", "on_sys_path": mutant.on_sys_path}, timeout)
            _judge_fast(case, reply, rss_bound_mb, timeout)
            ran = sorted(p.name for p in env.canary.iterdir())
            if ran:
                case.findings.append(f"code execution: {ran}")
                for p in env.canary.iterdir():
                    p.unlink()
            record.append(case)
            keep = None
            if case.findings:
                keep = out / "findings" / f"{i:05d}"
            elif cls in verify_all:
                kept_all.append(case)
                keep = out / "keep" / f"{i:05d}"
            elif case.stage == "wellformed" and (full is None or len(kept_wellformed[cls]) < full):
                kept_wellformed[cls].append(case)
                keep = out / "keep" / f"{i:05d}"
            elif case.stage != "wellformed" and others:
                seen_others += 1  # reservoir sample of the rest, for checking the fast path's predicted exit codes
                slot = len(kept_others) if len(kept_others) < others else pick.randrange(seen_others)
                if slot < others:
                    if slot < len(kept_others):
                        shutil.rmtree(out / "keep" / f"{kept_others[slot].id:05d}", ignore_errors=True)
                        kept_others[slot] = case
                    else:
                        kept_others.append(case)
                    keep = out / "keep" / f"{i:05d}"
            if keep is not None:
                keep.parent.mkdir(parents=True, exist_ok=True)
                shutil.rmtree(keep, ignore_errors=True)
                os.replace(root, keep)
            else:
                shutil.rmtree(root, ignore_errors=True)
            if (i + 1) % 500 == 0:
                say(f"{i + 1}/{cases} cases, {sum(bool(c.findings) for c in record)} findings, {time.monotonic() - t0:.0f} s")

        # One hypothesis run per class, so that every class gets its share of the cases.
        for k, cls in enumerate(names):
            quota = cases // len(names) + (1 if k < cases % len(names) else 0)
            _generate(lambda data, cls=cls: one(cls, data), lambda: len(record), len(record) + quota, seed * 1_000_003 + k * 1000)

        chosen = _round_robin(kept_wellformed, full if full is not None else len(record)) + kept_others + kept_all
        say(f"full verification of {len(chosen)} mutants")
        for case in chosen:
            root = out / "keep" / f"{case.id:05d}"
            reply = worker.ask({"id": case.id, "dir": str(root), "mode": "full", "out": str(root.parent / f"{case.id:05d}.verify"),
                                "on_sys_path": case.on_sys_path}, full_timeout)
            _judge_full(case, reply, full_timeout, full_rss_bound_mb)
            time.sleep(0.05)
            ran = sorted(p.name for p in env.canary.iterdir())
            if ran:
                case.findings.append(f"code execution during full verification: {ran}")
                for p in env.canary.iterdir():
                    p.unlink()
            if case.findings:
                (out / "findings").mkdir(exist_ok=True)
                shutil.copytree(root, out / "findings" / f"{case.id:05d}", symlinks=True, dirs_exist_ok=True)
    finally:
        worker.close()
    time.sleep(1.0)  # a payload started in the background would have written its marker by now
    result = CampaignResult(record, time.monotonic() - t0, str(honest_dir),
                            {"cases": cases, "seed": seed, "full": full, "others": others, "timeout_s": timeout,
                             "full_timeout_s": full_timeout, "rss_bound_mb": rss_bound_mb, "classes": names,
                             "verify_all": list(verify_all)},
                            worker.restarts, sorted(p.name for p in env.canary.iterdir()))
    with open(out / "cases.jsonl", "w") as f:
        for c in record:
            f.write(json.dumps(asdict(c), default=str) + "\n")
    (out / "summary.json").write_text(result.to_json())
    (out / "summary.md").write_text(result.summary_md())
    shutil.rmtree(out / "cases", ignore_errors=True)
    shutil.rmtree(out / "keep", ignore_errors=True)
    return result


def _generate(one: Callable[[Any], None], done: Callable[[], int], target: int, seed: int) -> None:
    """Call ``one`` with hypothesis data until ``done()`` reaches ``target`` (hypothesis may stop a run early)."""
    batch = 0
    while done() < target:
        @settings(max_examples=target - done(), database=None, deadline=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck), report_multiple_bugs=False)
        @hypothesis_seed(seed + batch)
        @given(st.data())
        def generate(data: Any) -> None:
            if done() < target:
                one(data)

        generate()
        batch += 1


def _round_robin(groups: dict[str, list[Case]], n: int) -> list[Case]:
    """Up to ``n`` cases, taking one from each group in turn so that every class is represented."""
    chosen: list[Case] = []
    queues = [list(v) for _, v in sorted(groups.items())]
    while len(chosen) < n and any(queues):
        for q in queues:
            if q and len(chosen) < n:
                chosen.append(q.pop(0))
    return chosen
