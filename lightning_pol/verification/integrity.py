"""The integrity check: digests, layout, checkpoint steps and the index log, before any checkpoint is parsed."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from lightning_pol.format.index_log import IndexLog
from lightning_pol.format.reader import ProofReader
from lightning_pol.format.strict_json import ProofFormatError
from lightning_pol.verification.report import IntegrityCheck


@dataclass
class Integrity:
    """What the integrity check found: ``problems`` (empty when it passes), unlisted files, and the index log."""

    problems: list[str]
    unlisted: list[str]
    index_log: IndexLog | None

    def check(self) -> IntegrityCheck:
        # Files the manifest does not list are not part of the proof; they are reported, and nothing reads them.
        return IntegrityCheck(not self.problems, "all files match the manifest" if not self.problems else self.problems[0],
                              self.problems, self.unlisted)


def check_integrity(reader: ProofReader) -> Integrity:
    """Digests, layout, checkpoint steps and the index log: everything checked before any checkpoint is parsed.

    Public so that the hostile-proof fuzz campaign (tools/fuzz) runs exactly this code.
    """
    m = reader.manifest
    found = reader.verify_files()
    unlisted = [p.removeprefix("unlisted file: ") for p in found if p.startswith("unlisted file")]
    problems = [p for p in found if not p.startswith("unlisted file")]
    steps = [c.step for c in reader.checkpoints]
    final = m.final_step
    if not m.complete:
        problems.append("the proof is not complete (training did not finish writing it)")
    if not steps or steps[0] != 0:
        problems.append("there is no checkpoint at step 0")
    if final is None or not steps or steps[-1] != final:
        problems.append(f"the last checkpoint is not at the final step {final}")
    k = m.every_n_steps
    if final is not None and steps and not _checkpoints_at(steps, final, k):
        problems.append(f"checkpoints are missing: the proof needs one at 0, every k={k} steps and at {final}")
    if m.tiered and not problems:  # full exactly where due: one way to write each tiered proof
        wrong = [c for c in reader.checkpoints if c.full != (c.step == final or m.full_state_due(c.step))]
        if wrong:
            problems.append(f"a tiered proof stores step 0, every K={m.full_every_n_steps} steps and the final step {final} in full "
                            f"and the others as digests, and step {wrong[0].step} is {'full' if wrong[0].full else 'digest-only'}")
    index_log = None
    if not problems:
        try:  # a checkpoint that does not parse is caught where it is first loaded (in the content checks)
            index_log = reader.index_log()
            if index_log.steps != final:
                problems.append(f"the index log holds {index_log.steps} steps, the proof claims {final}")
        except ProofFormatError as e:
            problems.append(str(e))
    return Integrity(problems, unlisted, index_log)


def _checkpoints_at(steps: list[int], final: int, k: int) -> bool:
    """``steps`` is exactly 0, k, 2k, ... below ``final``, then ``final``, compared without building that list:
    ``final`` and ``k`` come from the manifest, and range(0, 10**12, 1) as a set is a memory bomb."""
    below = -(-final // k)  # len(range(0, final, k)), which overflows for a final step past 2**63
    return len(steps) == below + 1 and all(a == b for a, b in zip(steps, itertools.chain(range(0, final, k), [final])))
