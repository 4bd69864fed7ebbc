"""The fuzz worker: runs one mutant at a time through the verifier's input path and reports what happened.

A separate process, so that the campaign can time a case out (a hang), kill
it, and measure a case's peak memory on its own (Linux: the peak RSS is reset
before every case through ``/proc/self/clear_refs``). Its address space is
capped a few GiB above what it needs, so an allocation from a hostile size
fails as a MemoryError (reported) instead of taking the machine down.

Protocol: one JSON request per line on stdin, one JSON reply per line on the
original stdout (fd 1 is pointed at /dev/null, so nothing else can write
there). Modes:

``fast``
    What :func:`~lightning_pol.verify_proof` runs before any code of
    the proof's classes: ``ProofReader`` (exit 2 on error), the integrity
    check (exit 1), the code check (exit 1 under the default ``verifier.code=match``; found and hashed, never
    imported; the case goes on, as under ``verifier.code=report``), the class gate of :class:`~lightning_pol.PoLVerifierModule` (exit 2),
    then every checkpoint and the leaves are parsed (exit 1, as the content
    checks would). A mutant that passes all of it is ``wellformed``.
``full``
    The CLI's own function, :func:`lightning_pol.apps.verify.verify_with`, with
    every segment replayed and the whole dataset hashed: the real verdict.
``selftest``
    Sleeps ``sleep`` seconds and touches ``allocate_mb`` MB: how the tests
    show that a hang and a memory blow-up are detected.

Anything but a PoLError (fast) or anything that escapes ``verify_with``
(full) is reported with its traceback: a finding.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import resource
import sys
import time
import traceback
from pathlib import Path
from typing import Any

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kib(key: str) -> int:
    match = re.search(rf"^{key}:\s+(\d+)", _STATUS.read_text(), re.M)
    return int(match.group(1)) if match else 0


def reset_peak() -> bool:
    """Reset the peak RSS (VmHWM) to the current RSS; False where the kernel does not allow it."""
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    if _STATUS.exists():
        return _status_kib("VmHWM") / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    return _status_kib("VmRSS") / 1024 if _STATUS.exists() else peak_rss_mb()


def cap_address_space(headroom_gib: float) -> None:
    """Cap virtual memory at what is mapped now plus ``headroom_gib``."""
    if not _STATUS.exists():
        return
    limit = _status_kib("VmSize") * 1024 + int(headroom_gib * (1 << 30))
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.RLIM_INFINITY))


class Outcome(Exception):
    """How a fast case ended: ``exit`` 1 or 2, or None for a well-formed mutant; ``stage`` where."""

    def __init__(self, exit_code: int | None, stage: str, reason: str) -> None:
        super().__init__(reason)
        self.exit_code, self.stage, self.reason = exit_code, stage, reason


def fast_check(proof: Path) -> dict[str, Any]:
    """The verifier's input path, stage by stage, with the exit code each failure leads to."""
    from lightning_pol.errors import PoLError
    from lightning_pol.format.reader import ProofReader
    from lightning_pol.verification.code_check import check_code
    from lightning_pol.verification.integrity import check_integrity
    from lightning_pol.verification.replay import PoLVerifierModule

    imported: dict[str, list[str]] = {}
    code_failed: str | None = None

    def stage(name: str, exit_code: int | None, fn: Any) -> Any:
        before = set(sys.modules)
        try:
            return fn()
        except PoLError as e:
            raise Outcome(exit_code, name, str(e)) from None
        finally:
            new = sorted(set(sys.modules) - before)
            if new:
                imported[name] = new

    try:
        reader = stage("reader", 2, lambda: ProofReader(proof))
        integrity = stage("integrity", 1, lambda: check_integrity(reader))
        if integrity.problems:
            raise Outcome(1, "integrity", integrity.problems[0])
        code = stage("code", 2, lambda: check_code(reader, "match"))  # raises (exit 2) for a class not installed here
        if code.passed is False:  # verify_with (code=match) stops here with exit 1 ...
            code_failed = code.summary
        # ... but under verifier.code=report the proof goes on to the gate: so does every mutant here
        stage("classes", 2, lambda: PoLVerifierModule(reader, index_log=integrity.index_log))
        for entry in reader.checkpoints:
            if entry.full:  # a tiered proof's digest-only entries have no state to parse
                stage("checkpoints", 1, lambda entry=entry: reader.load_checkpoint(entry))
        stage("leaves", 1, reader.leaves)
        result: dict[str, Any] = {"exit": None, "stage": "wellformed", "reason": ""}
    except Outcome as o:
        result = {"exit": o.exit_code, "stage": o.stage, "reason": o.reason}
    if code_failed is not None:  # what the default verifier answers, whatever the later stages (reached under report) said
        result = {"exit": 1, "stage": "code", "reason": code_failed}
    # Importing is running code: only the declared classes may be imported, and only in "classes".
    result["imported"] = {k: v for k, v in imported.items() if k != "classes"}
    result["imported_classes"] = imported.get("classes", [])
    return result


def full_check(proof: Path, out: Path) -> dict[str, Any]:
    """``verify_with``, the CLI's body, on the strictest settings: every segment, the whole dataset."""
    from omegaconf import OmegaConf

    from lightning_pol.apps import CONF_DIR
    from lightning_pol.apps.verify import verify_with
    from lightning_pol.verification.settings import VerifierSettings

    settings = VerifierSettings.from_config(OmegaConf.load(Path(CONF_DIR) / "verifier" / "default.yaml"))
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = verify_with(settings.replace(q=0, random=0, seed=0, full_data=True), proof, out / "verification.json")
    lines = err.getvalue().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    reason = errors[0] if errors else ""
    if code == 1 and (out / "verification.json").exists():
        reasons = json.loads((out / "verification.json").read_text()).get("reasons") or []
        reason = reasons[0] if reasons else "rejected"
    return {"exit": code, "stage": "verdict", "reason": reason, "error_lines": len(errors), "traceback_in_stderr": "Traceback" in err.getvalue()}


def handle(request: dict[str, Any]) -> dict[str, Any]:
    proof = Path(request["dir"])
    added = str(proof) if request.get("on_sys_path") else None
    if added:
        sys.path.insert(0, added)
    measured = reset_peak()
    base = rss_mb()
    start = time.perf_counter()
    try:
        if request["mode"] == "full":
            result = full_check(proof, Path(request["out"]))
        elif request["mode"] == "selftest":
            time.sleep(request.get("sleep", 0))
            block = bytearray(int(request.get("allocate_mb", 0)) << 20)
            block[:: 1 << 12] = b"x" * len(block[:: 1 << 12])
            del block
            result = {"exit": None, "stage": "selftest", "reason": ""}
        else:
            result = fast_check(proof)
    except BaseException as e:  # noqa: BLE001 - every escape is the finding this worker exists to report
        if isinstance(e, KeyboardInterrupt):
            raise
        result = {"exit": None, "stage": "crash", "reason": f"{type(e).__name__}: {e}".splitlines()[0][:500] if str(e) else type(e).__name__,
                  "traceback": traceback.format_exc()[-4000:]}
    finally:
        if added and added in sys.path:
            sys.path.remove(added)
    result["seconds"] = time.perf_counter() - start
    result["rss_base_mb"] = base
    result["rss_peak_mb"] = peak_rss_mb()
    result["rss_growth_mb"] = result["rss_peak_mb"] - base if measured else None
    result["id"] = request["id"]
    return result


def main() -> None:
    """Serve requests until stdin closes."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process
    import logging
    import warnings

    import torch

    import lightning_pol.apps.verify  # noqa: F401 - everything a case needs (the CLI's own verify_with too) before the first case

    warnings.simplefilter("ignore")
    logging.disable(logging.WARNING)
    torch.set_num_threads(1)
    headroom = float(os.environ.get("LIGHTNING_POL_FUZZ_HEADROOM_GIB", "3"))
    cap_address_space(headroom)
    proto.write(json.dumps({"ready": True, "pid": os.getpid(), "rss_mb": rss_mb()}) + "\n")
    for line in sys.stdin:
        if line.strip():
            proto.write(json.dumps(handle(json.loads(line)), default=str) + "\n")


if __name__ == "__main__":
    main()
