"""The house rules of docs/architecture.md, read off the installed package's source (issue 17's acceptance 1).

- each layer imports only the layers below it: format < runtime < prover, verification < attacks, attestation < apps;
- no class over 400 lines, ``ProofOfLearning`` at most 300, no function over 80 lines, no public function with
  more than 8 parameters (Lightning's flat constructor arguments aside: the callback's, and the zoo's
  LightningModule and LightningDataModule hyperparameters, which Hydra configs name one by one);
- no module of the installed package imports hypothesis (a test extra).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lightning_pol"
#: What each layer may import from lightning_pol (besides itself, ``errors`` and ``init``).
ALLOWED = {
    "format": set(),
    "runtime": {"format"},
    "prover": {"format", "runtime"},
    "verification": {"format", "runtime"},
    "attacks": {"format", "runtime", "prover", "verification"},
    "attestation": {"format", "verification"},
    "apps": {"format", "runtime", "prover", "verification", "attacks", "attestation", "zoo"},
    "zoo": set(),
}
FLAT_CONSTRUCTORS = {("prover/callback.py", "ProofOfLearning"), ("zoo/cifar_data.py", "CifarDataModule"),
                     ("zoo/classifier.py", "ImageClassifier")}


def modules() -> list[tuple[Path, ast.Module]]:
    return [(p, ast.parse(p.read_text())) for p in sorted(PACKAGE.rglob("*.py"))]


def imported(tree: ast.Module) -> list[str]:
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
            names.extend(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            names.extend(a.name for a in node.names)
    return names


def test_each_layer_imports_only_the_layers_below_it():
    wrong = []
    for path, tree in modules():
        rel = path.relative_to(PACKAGE)
        layer = rel.parts[0] if len(rel.parts) > 1 else None
        if layer not in ALLOWED or path.name == "__main__.py":
            continue  # the top-level modules (the public API, errors, init) and the commands' entry points
        allowed = ALLOWED[layer] | {layer, "errors", "init"}
        for name in imported(tree):
            parts = name.split(".")
            if parts[0] == "lightning_pol" and len(parts) > 1 and parts[1] not in allowed and parts[1] in {*ALLOWED, "errors", "init"}:
                wrong.append(f"{rel} imports {name}")
            if layer == "format" and parts[0] == "lightning_pol" and len(parts) > 1 and parts[1] == "init":
                wrong.append(f"{rel} imports {name}")
    assert wrong == []


def test_sizes_of_classes_functions_and_signatures():
    too_big = []
    for path, tree in modules():
        rel = str(path.relative_to(PACKAGE))
        classes = {id(n): n.name for n in ast.walk(tree) if isinstance(n, ast.ClassDef)}
        for node in ast.walk(tree):
            lines = (getattr(node, "end_lineno", None) or 0) - getattr(node, "lineno", 0) + 1
            if isinstance(node, ast.ClassDef) and lines > (300 if node.name == "ProofOfLearning" else 400):
                too_big.append(f"{rel}: class {node.name} has {lines} lines")
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if lines > 80:
                    too_big.append(f"{rel}: {node.name} has {lines} lines")
                a = node.args
                params = [x for x in a.posonlyargs + a.args + a.kwonlyargs if x.arg not in ("self", "cls")]
                owner = next((classes[id(c)] for c in ast.walk(tree) if isinstance(c, ast.ClassDef) and node in c.body), None)
                public = not node.name.startswith("_") or node.name == "__init__"
                if public and len(params) + bool(a.vararg) > 8 and (rel, owner) not in FLAT_CONSTRUCTORS:
                    too_big.append(f"{rel}: {node.name} takes {len(params)} parameters")
    assert too_big == []


def test_no_module_of_the_package_imports_hypothesis():
    assert [str(p.relative_to(PACKAGE)) for p, tree in modules() if any(n.split(".")[0] == "hypothesis" for n in imported(tree))] == []
