"""Copy a user-project fixture (``tests/projects/<name>``) and run commands in the copy.

    proj = copy_project("hydra_template", tmp_path)
    r = run_project(["src/train.py", "trainer.max_epochs=3"], cwd=proj)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]

``cmd`` is the argument list after the interpreter: the venv's python
(``sys.executable``) is prepended, so ``["-m", "lightning_pol.verify", ...]`` works too.
The command runs with ``PYTHONPATH=<cwd>:<repo root>`` (the project's own packages,
``src.`` or ``digits_cli``, and this repository's ``lightning_pol``), ``PYTHONHASHSEED=0``
and ``HYDRA_FULL_ERROR=1``, output captured as text.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

PROJECTS = Path(__file__).resolve().parent
REPO_ROOT = PROJECTS.parents[1]
NAMES = ("hydra_template", "lightning_cli", "single_script")

_RUN_LEFTOVERS = {"data", "logs", "lightning_logs", "outputs", "proof", "main_runs.txt"}  # at the project's top level only


def _ignore(root: Path):
    def ignore(directory: str, names: list[str]) -> set[str]:
        skip = {n for n in names if n == "__pycache__" or n.endswith(".pyc")}
        if Path(directory) == root:
            skip |= _RUN_LEFTOVERS & set(names)
        return skip

    return ignore


def copy_project(name: str, dest: str | os.PathLike[str]) -> Path:
    """Copy the fixture project ``name`` to ``dest/name`` and return that folder.

    Leftovers of runs in the fixture itself (caches, ``data/``, ``logs/``) are not copied.
    """
    src = PROJECTS / name
    if name not in NAMES or not src.is_dir():
        raise ValueError(f"no project fixture {name!r}; there are {', '.join(NAMES)}")
    target = Path(dest) / name
    shutil.copytree(src, target, ignore=_ignore(src))
    return target


def run_project(
    cmd: list[str],
    cwd: str | os.PathLike[str],
    env_extra: dict[str, str] | None = None,
    timeout: float = 600,
) -> subprocess.CompletedProcess[str]:
    """Run ``python <cmd...>`` in ``cwd`` with the venv's interpreter; never raises on failure."""
    cwd = Path(cwd).resolve()
    env = dict(os.environ)
    env.pop("PROJECT_ROOT", None)  # the hydra template's train.py sets it from its own location
    env.update(
        PYTHONPATH=os.pathsep.join([str(cwd), str(REPO_ROOT)]),
        PYTHONHASHSEED="0",
        HYDRA_FULL_ERROR="1",
    )
    if env_extra:
        env.update(env_extra)
    return subprocess.run(
        [sys.executable, *map(str, cmd)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
