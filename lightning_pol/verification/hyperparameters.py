"""The hyperparameter check: the optimizers and schedules a proof's checkpoints hold are the ones its module declares."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch

from lightning_pol.errors import PoLError, one_line
from lightning_pol.format.classes import import_path, resolve_import_path
from lightning_pol.runtime.optimizer_hparams import close as _close
from lightning_pol.runtime.optimizer_hparams import group_hparams as _group_hparams
from lightning_pol.verification.distances import identical
from lightning_pol.verification.replay import PoLVerifierModule, prover_code
from lightning_pol.verification.report import HyperparametersCheck, Report

State = Callable[[int], dict[str, Any]]

def check_hyperparameters(verifier: PoLVerifierModule, steps: list[int], state: State, report: Report) -> None:
    """W_0's optimizers and schedulers must be what configure_optimizers declares, and each checkpoint's
    learning rate, momentum, weight decay and betas what the declared schedule gives at its step."""
    problems: list[str] = []
    simulated = False
    try:
        declared = verifier.declared_optimizers()
        w0 = state(0)
        if len(declared["optimizers"]) != len(w0["optimizers"]):
            problems.append("W_0 does not hold the optimizers configure_optimizers declares")
        for i, (d, s) in enumerate(zip(declared["optimizers"], w0["optimizers"])):
            if not _close(_group_hparams(d), _group_hparams(s)):
                problems.append(f"W_0's optimizer {i} hyperparameters {_group_hparams(s)} differ from the declared {_group_hparams(d)}")
        if verifier.manifest.callbacks:  # replayed callbacks may swap them before W_0 (SWA): replay checks them
            pass
        elif len(declared["lr_schedulers"]) != len(w0["lr_schedulers"]):
            problems.append("W_0 does not hold the schedulers configure_optimizers declares")
        else:
            for i, (d, s) in enumerate(zip(declared["lr_schedulers"], w0["lr_schedulers"])):
                if not identical(_plain(d), _plain(s)):
                    problems.append(f"W_0's scheduler {i} state differs from the declared one")
        if not problems:
            simulated = _simulate_schedule(verifier, declared, steps, state, problems)
    except PoLError as e:
        problems.append(f"could not check hyperparameters: {one_line(e)}")
    report.checks["hyperparameters"] = HyperparametersCheck(
        not problems,
        (("declared schedule matches every " + ("full checkpoint" if verifier.manifest.tiered else "checkpoint")) if simulated
         else "W_0 matches the declared optimizers") if not problems else problems[0],
        schedule_simulated=simulated, problems=problems[:10],
    )
    report.reasons.extend(problems[:2])


def _plain(obj: Any) -> Any:
    """Scheduler states with tensors turned into lists (decoded and live states store some values differently)."""
    if isinstance(obj, Mapping):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    return obj


def _simulate_schedule(verifier: PoLVerifierModule, declared: dict[str, Any], steps: list[int], state: State,
                       problems: list[str]) -> bool:
    """Step the declared schedulers alone (no training) and compare with every checkpoint's optimizer groups."""
    configs = verifier.training.get("lr_schedulers") or []
    opt_configs = verifier.training.get("optimizers") or []
    if verifier.manifest.callbacks:  # they change the schedule (SWA) and the groups (fine-tuning): replay checks it
        return False
    if len(declared["optimizers"]) != 1 or len(opt_configs) != 1:
        return False
    if any(c.get("frequency") != 1 or c.get("interval") not in ("step", "epoch") for c in configs):
        return False
    cls = resolve_import_path(opt_configs[0]["class"])  # an Optimizer: the class gate made sure
    if not issubclass(cls, torch.optim.Optimizer):
        return False
    groups = declared["optimizers"][0]["param_groups"]
    with prover_code("the declared optimizer"):
        opt = cls([{"params": [torch.zeros(1, requires_grad=True) for _ in g["params"]]} for g in groups])
        opt.load_state_dict(declared["optimizers"][0])
    scheds = []
    for c, sd in zip(configs, declared["lr_schedulers"]):
        scls = resolve_import_path(c["class"])
        if not issubclass(scls, torch.optim.lr_scheduler.LRScheduler):  # a custom scheduler: not simulated
            return False
        if "ReduceLROnPlateau" in import_path(scls) or "lr_lambdas" in sd or "_schedulers" in sd:
            return False
        with prover_code(f"the declared LR scheduler {c['class']}"):
            sched = scls.__new__(scls)
            sched.optimizer = opt
            sched.load_state_dict(sd)
        scheds.append((c["interval"], sched))
    final = verifier.manifest.final_step
    assert final is not None  # the proof passed integrity
    max_steps = verifier.training.get("max_steps", -1)
    checkpoints = set(steps)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for t in range(1, final + 1):
            s = t - 1
            last_of_epoch = s == final - 1 or verifier.step_epoch(s + 1) != verifier.step_epoch(s)
            if s == final - 1 and isinstance(max_steps, int) and max_steps == final:
                last_of_epoch = False  # stopped by max_steps mid-epoch: no epoch-end scheduler step
            with prover_code("the declared LR schedulers"):
                for interval, sched in scheds:
                    if interval == "step" or last_of_epoch:
                        sched.step()
            if t in checkpoints:
                expected = _group_hparams(opt.state_dict())
                recorded = state(t)["optimizers"]
                got = _group_hparams(recorded[0]) if recorded else []
                if not _close(expected, got):
                    problems.append(f"checkpoint {t} has optimizer hyperparameters {got}, the declared schedule gives {expected}")
                    if len(problems) >= 3:
                        break
    return True
