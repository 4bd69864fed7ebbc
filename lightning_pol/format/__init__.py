"""The proof format, as docs/proof-format.md defines it: everything an independent verifier needs, and nothing else.

The directory's layout (:mod:`.layout`), the typed manifest (:mod:`.manifest`),
checkpoint files (:mod:`.checkpoint`) and their typed JSON (:mod:`.state_codec`),
the index log (:mod:`.index_log`), sample seeds (:mod:`.seeds`), the sample
encoding and Merkle tree (:mod:`.samples`), how classes are named
(:mod:`.classes`), the environment (:mod:`.environment`) and a warm start's
parent record (:mod:`.lineage`); the crash-safe writer (:mod:`.writer`) and
the hostile-input reader (:mod:`.reader`). It imports nothing of the layers above.
"""
