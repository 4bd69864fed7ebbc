"""The prover: the :class:`~lightning_pol.ProofOfLearning` callback and the parts it wires to Lightning's hooks.

The proof session (:mod:`.session`: the writer, its background thread
(:mod:`.background`), commits), the step ledger (:mod:`.ledger`), the training
loader's instrumentation (:mod:`.instrumentation`), what the manifest records
about re-creating the run (:mod:`.recreation`, :mod:`.run_record`), and DDP
(:mod:`.distributed`).
"""
