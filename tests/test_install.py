"""A regular (non-editable) install runs the apps: the wheel carries ``conf/`` as ``lightning_pol/conf``, and
``python -m lightning_pol.train`` then ``python -m lightning_pol.verify`` run from it alone, in a bare directory.

The wheel is built from a copy of the checkout's ``pyproject.toml``, ``README.md``, ``lightning_pol/`` and ``conf/``,
so a build leaves the shared checkout's ``build/`` and ``*.egg-info`` alone (and no stale ``build/lib`` file ships).
Pip runs offline (``--no-index``, ``--no-build-isolation``: setuptools is in the venv).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
#: Put first on the children's path: drops the meta-path finder of an editable install of lightning-pol in this venv
#: (it would otherwise serve, from the checkout, any module that the wheel lacks), so a child sees the wheel alone.
SITECUSTOMIZE = """import sys
sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]
"""


def run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run(args, check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{args} exited {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    for name in ("lightning_pol", "conf"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    run([*PIP, "wheel", str(src), "--no-deps", "--no-build-isolation", "--no-index", "-w", str(tmp / "dist")], cwd=tmp)
    (built,) = (tmp / "dist").glob("lightning_pol-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """The wheel installed (not editable) into its own directory, and the environment a child sees it alone in."""
    tmp = tmp_path_factory.mktemp("install")
    site, hooks = tmp / "site", tmp / "hooks"
    run([*PIP, "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)], cwd=tmp)
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "HYDRA"))}
    env["PYTHONPATH"] = os.pathsep.join([str(hooks), str(site)])
    return site, env


def test_the_wheel_holds_every_module_and_every_config(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {p.relative_to(REPO).as_posix() for p in (REPO / "lightning_pol").rglob("*.py") if "__pycache__" not in p.parts}
    configs = {"lightning_pol/" + p.relative_to(REPO).as_posix() for p in (REPO / "conf").rglob("*.yaml")}
    assert "lightning_pol/conf/verify.yaml" in configs and "lightning_pol/conf/hydra/launcher/local.yaml" in configs
    assert not modules - names, "modules missing from the wheel: list their package in pyproject.toml's packages"
    assert not configs - names, "configs missing from the wheel: see pyproject.toml's package-data"


def test_train_and_verify_run_from_the_installed_wheel_in_any_directory(installed, tmp_path):
    site, env = installed
    cwd = tmp_path / "elsewhere"  # neither the checkout nor site: no conf/ and no lightning_pol/ here
    cwd.mkdir()

    seen = run([sys.executable, "-c", "import lightning_pol, lightning_pol.apps as a; print(lightning_pol.__file__); print(a.CONF_DIR)"],
               cwd, env).stdout.split()
    assert [Path(p).is_relative_to(site) for p in seen] == [True, True], seen
    assert Path(seen[1]) == site / "lightning_pol" / "conf"

    run_dir = cwd / "train"
    trained = run([sys.executable, "-m", "lightning_pol.train", "trainer.max_steps=16", "pol.every_n_steps=8",
                   "trainer.enable_progress_bar=false", f"hydra.run.dir={run_dir}"], cwd, env)
    proof = run_dir / "proof"
    assert f"proof: {proof}" in trained.stdout

    report = cwd / "report" / "verification.json"
    run([sys.executable, "-m", "lightning_pol.verify", f"proof_dir={proof}", "verifier.q=0", f"report={report}"], cwd, env)
    verdict = json.loads(report.read_text())
    assert verdict["valid"] is True, verdict

    # each app composed its config from the wheel's lightning_pol/conf (hydra's record of its config sources)
    (verify_hydra,) = (cwd / "outputs" / "verify").glob("*/*/.hydra/hydra.yaml")  # conf/verify.yaml's relative run dir
    for record in (run_dir / ".hydra" / "hydra.yaml", verify_hydra):
        sources = OmegaConf.load(record).hydra.runtime.config_sources
        (main,) = [(s.schema, s.path) for s in sources if s.provider == "main"]
        assert main == ("file", str(site / "lightning_pol" / "conf")), main
