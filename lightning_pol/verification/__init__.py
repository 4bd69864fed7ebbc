"""The verifier: :func:`~lightning_pol.verify_proof` under :class:`~lightning_pol.VerifierSettings`.

Its checks, in the order they run: integrity (:mod:`.integrity`), the class gate
(:mod:`.gate`), initialization (:mod:`.initialization_check`), hyperparameters
(:mod:`.hyperparameters`), segment selection (:mod:`.selection`), replay
(:mod:`.segments` over :class:`~lightning_pol.PoLVerifierModule`, :mod:`.replay`),
data (:mod:`.data_check`) and the chain of trust (:mod:`.chain`, :mod:`.registry`),
each a typed result in the :mod:`.report`. :mod:`.coverage` and :mod:`.merge`
serve single runs and merged shards alike; :mod:`.reproducibility` measures ε_repr.
"""
