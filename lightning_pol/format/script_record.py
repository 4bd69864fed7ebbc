"""The training script a proof's classes or data come from: where it is, how it was started, which recipe it is.

A project that is one ``train.py`` defines its LightningModule (and often its datamodule) in the script that was
run, and may hand its DataLoaders straight to ``trainer.fit``. The manifest's ``script`` names that file relative
to the project root training ran from, the way it was started (``python train.py ARGS`` or ``python -m
pkg.train ARGS``) and what the verifier takes from it (docs/proof-format.md, "The training script"):

- ``classes``: the classes the proof names as ``__main__:QualName``, loaded from the file under a module name of
  the verifier's own (its ``if __name__ == "__main__":`` block does not run);
- ``fit``: the module and the training DataLoader ``trainer.fit`` was handed, re-created by running the script,
  with its recorded arguments, up to ``trainer.fit``.

Its SHA-256 is in the code identity (``code``), like every file of the project. Parsed here and nowhere else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from lightning_pol.format.strict_json import ProofFormatError

#: What the verifier takes from the script (see the module docstring).
RECIPES = ("classes", "fit")
#: The prefix of an import path that names a class defined in the script that was run.
SCRIPT_MODULE = "__main__"
_MODULE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", re.ASCII)
_MAX_ARGS, _MAX_ARG = 1000, 4096


@dataclass(frozen=True)
class ScriptRecord:
    """``path``: the script relative to the project root (POSIX, inside it); ``module``: the module ``python -m``
    ran, whose file ``path`` is (None: ``python PATH``); ``argv``: the arguments after it; ``recipe``: one of
    :data:`RECIPES`."""

    path: str
    argv: tuple[str, ...]
    recipe: str
    module: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "module": self.module, "argv": list(self.argv), "recipe": self.recipe}

    def command(self) -> str:
        """How training was started, for one-line messages: ``python train.py --trainer.max_epochs=2``."""
        start = f"-m {self.module}" if self.module else self.path
        return re.sub(r"[\x00-\x1f\x7f]", "?", " ".join(["python", start, *self.argv])[:300])

    @classmethod
    def from_json(cls, raw: Any) -> ScriptRecord:
        """Check a manifest's ``script`` field: a relative path that stays inside the project root, plain arguments."""
        if not isinstance(raw, dict) or set(raw) != {"path", "module", "argv", "recipe"}:
            raise ProofFormatError("manifest field script must hold exactly path, module, argv and recipe")
        path, module, argv, recipe = raw["path"], raw["module"], raw["argv"], raw["recipe"]
        if not isinstance(path, str) or not safe_relative(path) or not path.endswith(".py"):
            raise ProofFormatError("manifest field script.path must be a .py file relative to the project root, inside it")
        if module is not None and not (isinstance(module, str) and len(module) <= 200 and _MODULE.fullmatch(module)
                                       and path == module_file(module)):
            raise ProofFormatError("manifest field script.module must be null or the dotted module name of script.path")
        if not isinstance(argv, list) or len(argv) > _MAX_ARGS or not all(
            isinstance(a, str) and len(a) <= _MAX_ARG and "\x00" not in a for a in argv
        ):
            raise ProofFormatError("manifest field script.argv must be a list of strings")
        if recipe not in RECIPES:
            raise ProofFormatError(f"manifest field script.recipe must be one of {list(RECIPES)}")
        return cls(path, tuple(argv), recipe, module)


def module_file(module: str) -> str:
    """The file ``python -m module`` runs, relative to the directory its package is found in."""
    return module.replace(".", "/") + ".py"


def safe_relative(path: str) -> bool:
    """A POSIX path that names a file inside the directory it is relative to: no root, no ``..``, no empty part."""
    if not path or len(path) > 1000 or "\\" in path or "\x00" in path:
        return False
    parts = PurePosixPath(path).parts
    return not path.startswith("/") and all(p not in ("", ".", "..") for p in parts) and "/".join(parts) == path


def names_script_class(import_path: Any) -> bool:
    """Whether a manifest's import path names a class of the script that was run (``__main__:QualName``)."""
    return isinstance(import_path, str) and import_path.startswith(SCRIPT_MODULE + ":")
