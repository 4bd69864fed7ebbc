"""The plateau check: the monitored values a proof records for its plateau schedulers, which the replay feeds them."""

from __future__ import annotations

from lightning_pol.verification.replay import PoLVerifierModule
from lightning_pol.verification.report import PlateauCheck, Report


def check_plateau(verifier: PoLVerifierModule, report: Report) -> None:
    """Record the plateau check when the proof declares a monitoring scheduler or records monitored values.

    Each value must name a declared scheduler that monitors that metric and a step of the proof (1 to the
    final step: a value is consumed after an optimizer step). The replay checks the schedulers its own
    ``configure_optimizers`` builds again, and refuses a value for one Lightning would not step with a metric.
    """
    values = verifier.manifest.monitored
    configs = verifier.training.get("lr_schedulers") or []
    if not values and not any(isinstance(c, dict) and c.get("monitor") for c in configs):
        return
    final = verifier.manifest.final_step or 0
    problems = []
    for v in values:
        where = f"the recorded {v.monitor!r} at step {v.step}"
        if not 1 <= v.step <= final:
            problems.append(f"{where} is outside the proof's steps 1..{final}")
        elif v.scheduler >= len(configs) or not isinstance(configs[v.scheduler], dict) or configs[v.scheduler].get("monitor") != v.monitor:
            problems.append(f"{where} names LR scheduler {v.scheduler}, which does not monitor {v.monitor!r}")
    monitors = sorted({v.monitor for v in values})
    summary = (problems[0] if problems else
               f"plateau schedulers fed the proof's {len(values)} recorded values of {', '.join(monitors) or 'their monitors'} (validation not re-run)")
    report.checks["plateau"] = PlateauCheck(not problems, summary, len(values), monitors, problems)
    report.reasons.extend(problems[:3])
