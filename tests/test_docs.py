"""Code in the docs runs: the README's "Reading a proof" and docs/verification.md's settings example, on a real proof.

(The README's and docs/drop-in.md's other blocks are run by tests/test_drop_in.py's project, or need a
user's own model: issue 18 runs every block.)
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tests.conftest import train_with_proof
from tests.unseen_project import UnseenDataModule, UnseenModule

REPO = Path(__file__).resolve().parents[1]


def python_blocks(doc: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (REPO / doc).read_text(), re.S)


@pytest.fixture(scope="module")
def proof(tmp_path_factory) -> Path:
    proof, _, _ = train_with_proof(tmp_path_factory.mktemp("docs"), UnseenModule, UnseenDataModule(num_workers=0),
                                   every_n_steps=8, max_steps=24, max_epochs=-1)
    return proof


@pytest.mark.parametrize("doc, marker", [("README.md", "ProofReader("), ("docs/verification.md", "VerifierSettings(")])
def test_the_docs_code_runs(proof, tmp_path, monkeypatch, doc, marker):
    (block,) = [b for b in python_blocks(doc) if marker in b]
    for where in ("proof", "runs/digits/proof"):  # the paths the examples use
        (tmp_path / where).parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(proof, tmp_path / where)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(block, doc, "exec"), namespace)  # noqa: S102 - the docs' own code, run as a reader would
    if "report" in namespace:
        assert namespace["report"].valid and namespace["report"].settings["registry"] == "verified.sqlite"
    else:
        assert namespace["proof"].manifest.final_step == 24 and namespace["log"].steps == 24
