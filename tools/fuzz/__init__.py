"""Hostile-proof fuzzing (issue 9): every mutated proof must end in a clean verdict.

``python -m tools.fuzz --cases 10000 --out DIR`` trains one small honest
proof, derives mutants from it with hypothesis (:mod:`.mutations`), runs each
through the verifier's own input path in a worker process (:mod:`.worker`) under
a time and memory watch, and reports every case that ends in anything but exit 1
or exit 2 with a one-line reason (:mod:`.campaign`). docs/security.md records
the campaign ("Fuzz campaign").

The package imports nothing itself: the worker must not pay for hypothesis.
"""
