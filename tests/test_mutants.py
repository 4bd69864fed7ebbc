"""The mutants of ``python -m tools.mutants`` still apply: each names code that is there once, and tests that exist.

Running them takes minutes (a developer's tool, not the suite's); a rework that changes a pinned check fails here
first, and is told to update its mutant and rerun the tool.
"""

from __future__ import annotations

import re

import pytest

from tools.mutants import MUTANTS, REPO, Mutant, applied


@pytest.mark.parametrize("mutant", MUTANTS, ids=[m.id for m in MUTANTS])
def test_each_mutant_applies_to_the_code_and_names_tests_that_exist(mutant: Mutant):
    source = (REPO / mutant.file).read_text()
    assert applied(mutant, source) != source
    for node in mutant.tests:
        path, _, name = node.partition("::")
        function = re.sub(r"\[.*\]$", "", name)
        assert re.search(rf"^def {re.escape(function)}\(", (REPO / path).read_text(), re.M), f"{mutant.id}: no test {node}"


def test_a_mutant_whose_code_changed_says_so():
    stale = Mutant("X", "a check", "lightning_pol/format/reader.py", "no such code", "", ())
    with pytest.raises(ValueError, match=r"mutant X \(a check\): its code occurs 0 times in lightning_pol/format/reader.py; update the mutant"):
        applied(stale, (REPO / stale.file).read_text())
