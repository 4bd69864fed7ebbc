"""``python -m tools.fuzz --cases 10000 --out runs/fuzz``: the hostile-proof campaign of issue 9.

Exit 0 when no mutant produced a finding, 1 otherwise; summary.md, summary.json
and cases.jsonl go to ``--out``, and every mutant with a finding is kept under
``--out/findings``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tools.fuzz.campaign import run_campaign
from tools.fuzz.mutations import CLASSES


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", type=int, default=10_000, help="mutants to generate (the classes take turns)")
    p.add_argument("--out", type=Path, default=Path("runs/fuzz"))
    p.add_argument("--seed", type=int, default=0, help="hypothesis seed: the same seed gives the same mutants")
    p.add_argument("--full", type=lambda v: None if v == "all" else int(v), default=40,
                   help="well-formed mutants to verify in full, taken from the classes in turn ('all': every one)")
    p.add_argument("--others", type=int, default=100, help="other mutants to verify in full, checking the predicted exit code")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds a fast case may take before it counts as a hang")
    p.add_argument("--full-timeout", type=float, default=300.0)
    p.add_argument("--rss-bound-mb", type=float, default=200.0, help="allowed peak-RSS growth of one fast case")
    p.add_argument("--proof", type=Path, default=None, help="reuse this honest proof (trained there if missing)")
    p.add_argument("--classes", nargs="*", choices=list(CLASSES), default=None)
    args = p.parse_args(argv)
    result = run_campaign(args.out, args.cases, seed=args.seed, full=args.full, others=args.others, timeout=args.timeout,
                          full_timeout=args.full_timeout, rss_bound_mb=args.rss_bound_mb, proof=args.proof,
                          classes=args.classes, progress=lambda msg: print(msg, file=sys.stderr, flush=True))
    print(result.summary_md())
    return 1 if result.findings or result.canary_files else 0


if __name__ == "__main__":
    sys.exit(main())
