"""The training script, found again: its classes loaded under a module name of their own, or the script run up to
``trainer.fit`` under a stand-in that stops there.

Both sides use :class:`TrainingScript`: the prover at fit start, to rehearse what the verifier will do (and to
record the script, :func:`script_record`), and the verifier after the code check (docs/proof-format.md, "The
training script"). The file is the one under the project root the verifier was pointed at, never one from the
proof; what it defines passes the class gate like any class a proof names.
"""

from __future__ import annotations

import ast
import contextlib
import copy
import importlib.util
import os
import re
import runpy
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

import lightning.pytorch as pl

from lightning_pol.format.classes import NotRecreatableError
from lightning_pol.format.script_record import SCRIPT_MODULE, ScriptRecord, module_file, names_script_class, safe_relative
from lightning_pol.runtime.recreation import gate_command_line


class HandedFit(NamedTuple):
    """What the script handed to ``trainer.fit``: the module, and the training DataLoader or the datamodule."""

    model: Any
    train_loader: Any
    datamodule: Any

    def checked(self, recorded: str, script: str) -> HandedFit:
        """These, if the module is a LightningModule of the class the proof names (``recorded``), by its import path
        (a class object cannot say it: a run imports the project's modules afresh, and the script's own are
        ``__main__``'s), and the training data one DataLoader, a datamodule or the module's own."""
        from torch.utils.data import DataLoader

        model, cls = self.model, type(self.model)
        if not isinstance(model, pl.LightningModule) or f"{cls.__module__}:{cls.__qualname__}" != recorded:
            raise NotRecreatableError(f"the training script {script} hands fit a {type(model).__qualname__}, not the proof's module {recorded}")
        if self.train_loader is not None and not isinstance(self.train_loader, DataLoader):
            raise NotRecreatableError(f"the training script {script} hands fit {type(self.train_loader).__name__} as training data, "
                                      f"not one DataLoader")
        return self


class _ReachedFit(BaseException):  # noqa: N818 - not an error: how the stand-in stops the script (past `except Exception`)
    def __init__(self, handed: HandedFit) -> None:
        super().__init__("trainer.fit reached")
        self.handed = handed


def the_running_script() -> tuple[Path, str | None] | None:
    """The file this process was started with and the module ``python -m`` ran (None: ``python FILE``); None when
    there is no file (an interactive session, a notebook, ``python -c``)."""
    main = sys.modules.get("__main__")
    file = getattr(main, "__file__", None)
    if not isinstance(file, str) or not file.endswith(".py") or not Path(file).is_file():
        return None
    spec = getattr(main, "__spec__", None)
    module = getattr(spec, "name", None)
    return Path(file).absolute(), (module if isinstance(module, str) and module != "__main__" else None)


def script_record(recipe: str, what: str) -> tuple[ScriptRecord, Path]:
    """The record of the script this process runs, relative to the project root (the working directory; the
    script's own directory when it lies outside it). Refuses ``what`` (``LightningModule LitClassifier``, ``the
    training DataLoader handed to fit``) where no script of the project is behind it."""
    from lightning_pol.runtime.installed_code import is_project_file

    found = the_running_script()
    if found is None:
        raise NotRecreatableError(
            f"{what} comes from a session with no script file (a notebook, python -c); save the code to a .py file "
            f"and run that, so the verifier can run it again"
        )
    if not is_project_file(found[0]):
        raise NotRecreatableError(f"{what} comes from a process that installed code started ({found[0].name} of "
                                  f"{found[1] or found[0].parent.name}), not a script of the project; train from a script of the project")
    file, module = found
    cwd = Path(os.getcwd()).absolute()
    rel = file.relative_to(cwd).as_posix() if file.is_relative_to(cwd) else file.name
    if module is not None and rel != module_file(module):
        raise NotRecreatableError(f"python -m {module} ran {file}, which is not {module_file(module)} under the working directory "
                                  f"{cwd}; run it from the project root")
    return ScriptRecord(rel, tuple(sys.argv[1:]), recipe, module), (cwd if file.is_relative_to(cwd) else file.parent)


def trains_when_imported(file: Path) -> bool:
    """Whether the script calls ``fit`` or LightningCLI at its top level (outside ``if __name__ == "__main__":``
    and outside functions), directly or through its own functions (``cli_main()``): loaded for its classes, it
    would train. (Loading also stops at ``trainer.fit``: :meth:`TrainingScript.load`.)"""
    try:
        tree = ast.parse(file.read_bytes(), str(file))
    except (SyntaxError, ValueError, OSError):
        return False
    functions = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    trainers = {"fit", "LightningCLI"}
    grew = True
    while grew:  # the script's functions that train, through the script's other functions
        found = {name for name, node in functions.items() if name not in trainers and _calls(node) & trainers}
        grew = bool(found)
        trainers |= found
    return any(_calls(node) & trainers for node in tree.body
               if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and not _main_guard(node))


def _calls(node: ast.AST) -> set[str]:
    """The names a node calls: ``trainer.fit(...)`` is ``fit``, ``main()`` is ``main``."""
    return {c.func.attr if isinstance(c.func, ast.Attribute) else getattr(c.func, "id", "")
            for c in ast.walk(node) if isinstance(c, ast.Call)}


def _main_guard(node: ast.stmt) -> bool:
    return isinstance(node, ast.If) and "__main__" in ast.unparse(node.test) and "__name__" in ast.unparse(node.test)


@contextlib.contextmanager
def on_sys_path(directory: Path) -> Iterator[None]:
    """``directory`` first on ``sys.path`` for the block, as Python puts a script's directory there."""
    saved = list(sys.path)
    sys.path.insert(0, str(directory))
    try:
        yield
    finally:
        sys.path[:] = saved


class TrainingScript:
    """The script a proof records, at ``root / record.path`` on this machine: a regular ``.py`` file of the project
    (inside ``root``, not installed code, outside the proof directory ``proof``), and for ``python -m`` the file its
    module names there."""

    def __init__(self, record: ScriptRecord, root: str | os.PathLike[str] | None, proof: str | os.PathLike[str] | None = None) -> None:
        from lightning_pol.runtime.installed_code import is_project_file  # it reads the script's imports with this class

        self.record = record
        self.root = Path(root if root is not None else os.getcwd()).resolve()
        if not safe_relative(record.path):  # a parsed manifest's always is (ScriptRecord.from_json), with its module's file
            raise NotRecreatableError(f"the proof's script path {record.path[:80]!r} does not stay inside the project root")
        self.file = (self.root / record.path).resolve()
        self.proof = None if proof is None else Path(proof).resolve()
        where = f"the training script {record.path} is not in the project root {self.root}"
        if not self.file.is_relative_to(self.root):
            raise NotRecreatableError(f"{where} (it leads outside it)")
        if not self.file.is_file():
            raise NotRecreatableError(f"{where}; verify from the project root, or give project_root=DIR")
        if self.proof is not None and self.file.is_relative_to(self.proof):
            raise NotRecreatableError(f"the training script {record.path} lies inside the proof directory; the verifier runs only the project's own")
        if not is_project_file(self.file):
            raise NotRecreatableError(f"the training script {record.path} is installed code, not a file of the project")
        self._module: ModuleType | None = None

    @property
    def module_name(self) -> str:
        """The name the script's classes are loaded under: its own for ``python -m``, else one that imports nothing else."""
        if self.record.module is not None:
            return self.record.module
        return "lightning_pol_script_" + re.sub(r"\W", "_", Path(self.record.path).stem, flags=re.ASCII)

    @property
    def directory(self) -> Path:
        """What Python put first on ``sys.path`` for the script: its directory, or the root for ``python -m``."""
        return self.root if self.record.module is not None else self.file.parent

    def import_path(self, path: str) -> str:
        """``__main__:QualName`` as an import path of the loaded script (loading it once); others unchanged."""
        if not names_script_class(path):
            return path
        self.load()
        return f"{self.module_name}:{path[len(SCRIPT_MODULE) + 1:]}"

    def load(self) -> ModuleType:
        """The script as a module of its own name, started as training started it (:meth:`_as_started`): its top level
        runs, its ``__main__`` block does not."""
        if self._module is not None:
            return self._module
        if trains_when_imported(self.file):
            raise NotRecreatableError(f"the training script {self.record.path} trains when imported (fit or LightningCLI outside "
                                      f"if __name__ == '__main__':); the verifier loads it only for its classes")
        name = self.module_name
        try:
            with self._as_started(fresh_modules=False):
                if self.record.module is not None:
                    module = importlib.import_module(name)  # its file is record.path under the root (checked when built)
                    if Path(str(module.__file__)).resolve() != self.file:
                        raise NotRecreatableError(f"python -m {name} does not find {self.record.path} under {self.root}")
                else:
                    spec = importlib.util.spec_from_file_location(name, self.file)
                    assert spec is not None and spec.loader is not None
                    module = importlib.util.module_from_spec(spec)
                    sys.modules[name] = module  # as an import would: dataclasses, pickling and type hints look it up
                    spec.loader.exec_module(module)
        except _ReachedFit:
            sys.modules.pop(name, None)
            raise NotRecreatableError(f"the training script {self.record.path} calls trainer.fit when imported (outside "
                                      f"if __name__ == '__main__':); the verifier loads it only for its classes") from None
        except (NotRecreatableError, KeyboardInterrupt):
            raise
        except BaseException as e:  # noqa: BLE001 - the project's script: what it raises (or exits with) is its own
            sys.modules.pop(name, None)
            raise NotRecreatableError(f"the training script {self.record.path} fails to load ({type(e).__name__}: {e})".splitlines()[0]) from None
        sys.path.insert(0, str(self.directory))  # kept, as Python keeps it: its functions may import its neighbours later
        self._module = module
        return module

    def run_to_fit(self) -> HandedFit:
        """Run the script as training did (``__main__``, its recorded arguments, :meth:`_as_started`) up to
        ``trainer.fit``, and return what it hands to it: ``Trainer.fit`` is a stand-in that stops it there."""
        try:
            with self._as_started(fresh_modules=True):
                if self.record.module is not None:
                    runpy.run_module(self.record.module, run_name="__main__", alter_sys=True)
                else:
                    runpy.run_path(str(self.file), run_name="__main__")
        except _ReachedFit as reached:
            return reached.handed
        except NotRecreatableError:
            raise
        except SystemExit as e:
            raise NotRecreatableError(f"the training script {self.record.path}, run as {self.record.command()}, exits "
                                      f"(code {str(e.code)[:60]!r}) before it calls trainer.fit") from None
        except KeyboardInterrupt:
            raise
        except BaseException as e:  # noqa: BLE001 - the project's script
            raise NotRecreatableError(f"the training script {self.record.path}, run as {self.record.command()}, fails before "
                                      f"trainer.fit ({type(e).__name__}: {e})".splitlines()[0]) from None
        raise NotRecreatableError(f"the training script {self.record.path}, run as {self.record.command()}, ends without calling trainer.fit")

    @contextlib.contextmanager
    def _as_started(self, fresh_modules: bool) -> Iterator[None]:
        """This process as ``python SCRIPT ARGS`` started it, for the block, and put back after: the recorded arguments
        (gated first), the working directory the project root, the script's directory first on ``sys.path`` and the
        proof directory off it, ``PL_GLOBAL_SEED`` and ``PL_SEED_WORKERS`` unset (``seed_everything()`` reads them),
        with ``fresh_modules`` the project's own modules imported afresh; ``Trainer.fit`` a stand-in that stops the
        script, and a Trainer it builds on the CPU (the verifier's machine need not have the prover's devices)."""
        saved_argv = list(sys.argv)
        saved_env = {k: os.environ.get(k) for k in _SEED_ENV}
        project = {n: m for n, m in sys.modules.items() if fresh_modules and self._projects(m)}
        for name in project:
            del sys.modules[name]
        try:
            with self._where_run():
                gate_command_line(self.record.argv, self.proof)  # what LightningCLI would import from them, found as the run finds it
                sys.argv[:] = [str(self.file), *self.record.argv]
                for key in _SEED_ENV:
                    os.environ.pop(key, None)
                with _stopped_at_fit():
                    yield
        finally:
            sys.argv[:] = saved_argv
            for key, value in saved_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            if fresh_modules:  # the run's copies go; what the process had imported comes back
                for name in [n for n, m in sys.modules.items() if self._projects(m)]:
                    del sys.modules[name]
                sys.modules.update(project)

    def check_arguments(self) -> None:
        """The recorded arguments through the gate (:func:`gate_command_line`), read from where the script runs."""
        with self._where_run():
            gate_command_line(self.record.argv, self.proof)

    @contextlib.contextmanager
    def _where_run(self) -> Iterator[None]:
        """The project root the working directory, the script's directory first on ``sys.path`` and the proof's off it."""
        saved_path, saved_cwd = list(sys.path), os.getcwd()
        try:
            sys.path[:] = [str(self.directory), *(p for p in saved_path if not self._in_proof(p))]
            os.chdir(self.root)
            yield
        finally:
            sys.path[:] = saved_path
            os.chdir(saved_cwd)

    def _projects(self, module: Any) -> bool:
        """Whether ``module`` is one of the project's own (a file under the project root or the script's directory)."""
        from lightning_pol.runtime.installed_code import is_project_file

        file = getattr(module, "__file__", None)
        if not isinstance(file, str) or getattr(module, "__name__", "") == "__main__":
            return False
        path = Path(file).resolve()
        return (path.is_relative_to(self.root) or path.is_relative_to(self.directory)) and is_project_file(path)

    def _in_proof(self, entry: Any) -> bool:
        return self.proof is not None and isinstance(entry, str) and Path(entry or os.getcwd()).resolve().is_relative_to(self.proof)


#: What ``seed_everything()`` without a seed reads: a run again must not find the prover's (or the verifier's) value.
_SEED_ENV = ("PL_GLOBAL_SEED", "PL_SEED_WORKERS")


@contextlib.contextmanager
def _stopped_at_fit() -> Iterator[None]:
    """``Trainer.fit`` a stand-in for the block, which stops the script there (:class:`_ReachedFit`) before any training;
    ``Trainer.__init__`` builds a Trainer on the CPU (:data:`_ON_CPU`)."""
    def stand_in(trainer: Any, model: Any, train_dataloaders: Any = None, val_dataloaders: Any = None,
                 datamodule: Any = None, *args: Any, **kwargs: Any) -> Any:
        if isinstance(train_dataloaders, pl.LightningDataModule):  # Lightning's own positional leniency
            train_dataloaders, datamodule = None, train_dataloaders
        raise _ReachedFit(HandedFit(model, train_dataloaders, datamodule))

    from lightning.pytorch.trainer.connectors.accelerator_connector import _AcceleratorConnector as Connector

    fit, connect = pl.Trainer.fit, Connector.__init__

    def on_cpu(connector: Any, *args: Any, **kwargs: Any) -> None:
        # Not Trainer.__init__: LightningCLI builds its --trainer.* arguments from that signature
        connect(connector, *args, **{**kwargs, **_ON_CPU, "plugins": None})

    pl.Trainer.fit, Connector.__init__ = stand_in, on_cpu  # type: ignore[method-assign]
    try:
        yield
    finally:
        pl.Trainer.fit, Connector.__init__ = fit, connect  # type: ignore[method-assign]


#: The Trainer a script builds, as the run to fit builds it: one that never trains, on a device every machine has.
_ON_CPU = {"accelerator": "cpu", "devices": 1, "num_nodes": 1, "strategy": "auto", "precision": "32-true", "sync_batchnorm": False}


class HandedData(pl.LightningDataModule):
    """The training DataLoader a script handed to ``fit``, served to a replay: each replay gets its own shallow copy
    (the replay sets its batch sampler), over the same dataset."""

    def __init__(self, loader: Any) -> None:
        super().__init__()
        self.loader = loader

    def train_dataloader(self) -> Any:
        loader = copy.copy(self.loader)
        loader.__dict__["_iterator"] = None
        return loader
