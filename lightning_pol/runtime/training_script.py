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
from lightning_pol.format.script_record import SCRIPT_MODULE, ScriptRecord, names_script_class, safe_relative
from lightning_pol.runtime.recreation import gate_command_line


class HandedFit(NamedTuple):
    """What the script handed to ``trainer.fit``: the module, and the training DataLoader or the datamodule."""

    model: Any
    train_loader: Any
    datamodule: Any

    def checked(self, recorded: str, module_cls: type, script: str) -> HandedFit:
        """These, if the module is the class the proof names (``recorded``; gated as ``module_cls`` unless the
        script's own) and the training data one DataLoader, a datamodule or the module's own."""
        from torch.utils.data import DataLoader

        model = self.model
        if not isinstance(model, pl.LightningModule) or type(model).__qualname__ != recorded.partition(":")[2] or (
            not names_script_class(recorded) and type(model) is not module_cls
        ):
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
    return Path(file).resolve(), (module if isinstance(module, str) and module != "__main__" else None)


def script_record(recipe: str, role: str, cls_name: str) -> tuple[ScriptRecord, Path]:
    """The record of the script this process runs, relative to the project root (the working directory; the
    script's own directory when it lies outside it). Refuses a class or data with no script file behind it."""
    found = the_running_script()
    if found is None:
        raise NotRecreatableError(
            f"{role} {cls_name} is defined, or the data was made, in a session with no script file (a notebook, "
            f"python -c); save it to a .py file and run that, so the verifier can load it again"
        )
    file, module = found
    cwd = Path(os.getcwd()).resolve()
    rel = file.relative_to(cwd).as_posix() if file.is_relative_to(cwd) else file.name
    if module is not None and not file.is_relative_to(cwd):
        raise NotRecreatableError(f"python -m {module} ran {file}, outside the working directory {cwd}; run it from the project root")
    return ScriptRecord(rel, tuple(sys.argv[1:]), recipe, module), (cwd if file.is_relative_to(cwd) else file.parent)


def trains_when_imported(file: Path) -> bool:
    """Whether the script calls ``fit`` or LightningCLI at its top level (outside ``if __name__ == "__main__":``
    and outside functions): loaded for its classes, it would train."""
    try:
        tree = ast.parse(file.read_bytes(), str(file))
    except (SyntaxError, ValueError, OSError):
        return False
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Import, ast.ImportFrom)) or _main_guard(node):
            continue
        for call in (n for n in ast.walk(node) if isinstance(n, ast.Call)):
            name = call.func.attr if isinstance(call.func, ast.Attribute) else getattr(call.func, "id", "")
            if name in ("fit", "LightningCLI"):
                return True
    return False


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
    """The script a proof records, at ``root / record.path`` on this machine (checked to be a regular ``.py`` file
    inside ``root`` and outside the proof directory ``proof``)."""

    def __init__(self, record: ScriptRecord, root: str | os.PathLike[str] | None, proof: str | os.PathLike[str] | None = None) -> None:
        self.record = record
        self.root = Path(root if root is not None else os.getcwd()).resolve()
        if not safe_relative(record.path):
            raise NotRecreatableError(f"the proof's script path {record.path[:80]!r} does not stay inside the project root")
        self.file = (self.root / record.path).resolve()
        where = f"the training script {record.path} is not in the project root {self.root}"
        if not self.file.is_relative_to(self.root):
            raise NotRecreatableError(f"{where} (it leads outside it)")
        if not self.file.is_file():
            raise NotRecreatableError(f"{where}; verify from the project root, or give project_root=DIR")
        if proof is not None and self.file.is_relative_to(Path(proof).resolve()):
            raise NotRecreatableError(f"the training script {record.path} lies inside the proof directory; the verifier runs only the project's own")
        self.proof = proof
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
        """The script as a module of its own name: its top level runs, its ``__main__`` block does not."""
        if self._module is not None:
            return self._module
        if trains_when_imported(self.file):
            raise NotRecreatableError(f"the training script {self.record.path} trains when imported (fit or LightningCLI outside "
                                      f"if __name__ == '__main__':); the verifier loads it only for its classes")
        name = self.module_name
        sys.path.insert(0, str(self.directory))  # kept: its functions may import the script's neighbours later
        try:
            if self.record.module is not None:
                spec = importlib.util.find_spec(name)
                if spec is None or spec.origin is None or Path(spec.origin).resolve() != self.file:
                    raise NotRecreatableError(f"python -m {name} does not find {self.record.path} under {self.root}")
                module = importlib.import_module(name)
            else:
                spec = importlib.util.spec_from_file_location(name, self.file)
                assert spec is not None and spec.loader is not None
                module = importlib.util.module_from_spec(spec)
                sys.modules[name] = module  # as an import would: dataclasses, pickling and type hints look it up
                spec.loader.exec_module(module)
        except NotRecreatableError:
            raise
        except KeyboardInterrupt:
            raise
        except BaseException as e:  # noqa: BLE001 - the project's script: what it raises (or exits with) is its own
            sys.modules.pop(name, None)
            raise NotRecreatableError(f"the training script {self.record.path} fails to load ({type(e).__name__}: {e})".splitlines()[0]) from None
        self._module = module
        return module

    def run_to_fit(self) -> HandedFit:
        """Run the script as training did (``__main__``, its recorded arguments) up to ``trainer.fit``, and return what
        it hands to it. ``Trainer.fit`` is a stand-in for the run: the script is stopped there, before any training."""
        def stand_in(trainer: Any, model: Any, train_dataloaders: Any = None, val_dataloaders: Any = None,
                     datamodule: Any = None, *args: Any, **kwargs: Any) -> Any:
            if isinstance(train_dataloaders, pl.LightningDataModule):  # Lightning's own positional leniency
                train_dataloaders, datamodule = None, train_dataloaders
            raise _ReachedFit(HandedFit(model, train_dataloaders, datamodule))

        gate_command_line(self.record.argv, self.proof)  # what LightningCLI would import from them
        saved_argv, saved_path, fit = list(sys.argv), list(sys.path), pl.Trainer.fit
        sys.argv[:] = [str(self.file), *self.record.argv]
        sys.path.insert(0, str(self.directory))
        pl.Trainer.fit = stand_in  # type: ignore[method-assign]
        try:
            if self.record.module is not None:
                runpy.run_module(self.record.module, run_name="__main__", alter_sys=True)
            else:
                runpy.run_path(str(self.file), run_name="__main__")
        except _ReachedFit as reached:
            return reached.handed
        except SystemExit as e:
            raise NotRecreatableError(f"the training script {self.record.path}, run as {self.record.command()}, exits "
                                      f"(code {e.code!r}) before it calls trainer.fit") from None
        except KeyboardInterrupt:
            raise
        except BaseException as e:  # noqa: BLE001 - the project's script
            raise NotRecreatableError(f"the training script {self.record.path}, run as {self.record.command()}, fails before "
                                      f"trainer.fit ({type(e).__name__}: {e})".splitlines()[0]) from None
        finally:
            pl.Trainer.fit = fit  # type: ignore[method-assign]
            sys.argv[:] = saved_argv
            sys.path[:] = saved_path
        raise NotRecreatableError(f"the training script {self.record.path}, run as {self.record.command()}, ends without calling trainer.fit")


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
