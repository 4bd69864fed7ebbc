"""The docs say what the code does: docs/verification.md's settings example runs on a real proof, and the
refusals docs/drop-in.md lists are the callback's own messages.

(Every block of README.md and docs/drop-in.md is run by tests/test_docs_run.py.)
"""

from __future__ import annotations

import ast
import re
import shutil
from pathlib import Path

import pytest

from tests.conftest import train_with_proof
from tests.unseen_project import UnseenDataModule, UnseenModule

REPO = Path(__file__).resolve().parents[1]


def python_blocks(doc: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (REPO / doc).read_text(), re.DOTALL)


@pytest.fixture(scope="module")
def proof(tmp_path_factory) -> Path:
    proof, _, _ = train_with_proof(tmp_path_factory.mktemp("docs"), UnseenModule, UnseenDataModule(num_workers=0),
                                   every_n_steps=8, max_steps=24, max_epochs=-1)
    return proof


def test_the_verification_settings_example_runs(proof, tmp_path, monkeypatch):
    (block,) = [b for b in python_blocks("docs/verification.md") if "VerifierSettings(" in b]
    (tmp_path / "runs/digits").mkdir(parents=True)
    shutil.copytree(proof, tmp_path / "runs/digits/proof")  # the path the example uses
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(block, "docs/verification.md", "exec"), namespace)  # noqa: S102 - the docs' own code, run as a reader would
    assert namespace["report"].valid and namespace["report"].settings["registry"] == "verified.sqlite"


#: The fixed part of each refusal in docs/drop-in.md's table, as the code words it.
REFUSALS = [
    "define it at the top level of its module or script so the verifier can re-create it",
    "comes from a session with no script file (a notebook, python -c); save the code to a .py file and run that",
    "not a script of the project; train from a script of the project",
    "the script draws it from something a rerun does not repeat (an unseeded RNG, the clock, the OS); seed it",
    "that it does not record; call self.save_hyperparameters() in",
    "pass it through __init__ and call self.save_hyperparameters()",
    "re-created the way the verifier will builds a different network (first differences:",
    "re-created the way the verifier will configures optimizer",
    "records a hyperparameter that is not plain data",
    "pass plain values, or exclude it with save_hyperparameters(ignore=[...]) and give it a default",
    "it draws from the global RNG in setup() or train_dataloader(); give that draw its own seeded generator",
    "(torch.Generator().manual_seed(...))",
    "; say which with ProofOfLearning(",
    "hydra.output_subdir is null, so the job's config is not saved; set hydra.output_subdir (default .hydra)",
    "unsupported: an IterableDataset yields no dataset indices, so its batches cannot be recorded; use a map-style Dataset with a sampler",
    "choose another dirpath or pass overwrite=True",
    ", which can change training",
    "; the replay will not run it",
    "the replay does not run it, so the proof could not verify: remove it, build it from the Hydra config, or pass",
]


def message_texts() -> list[str]:
    """Every string literal of lightning_pol, f-strings with their fields as \\0 (implicit concatenation joined)."""
    texts = []
    for path in sorted((REPO / "lightning_pol").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.JoinedStr):
                texts.append("".join(v.value if isinstance(v, ast.Constant) else "\0" for v in node.values))
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                texts.append(node.value)
    return texts


def test_the_refusals_drop_in_lists_are_the_callbacks_messages():
    doc = " ".join((REPO / "docs/drop-in.md").read_text().split())
    texts = message_texts()
    for fragment in REFUSALS:
        assert fragment in doc, f"docs/drop-in.md no longer shows {fragment!r}"
        assert any(fragment in t for t in texts), f"no message of lightning_pol says {fragment!r} any more: update docs/drop-in.md's table"
