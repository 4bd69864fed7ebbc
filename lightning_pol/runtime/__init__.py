"""What a training run and its replay both drive, so that the replay is the training run again.

Samples fetched under their counter seeds (:mod:`.seeded_data`) and hashed into
the data commitment (:mod:`.leaves`), the global RNG streams and the training
stream kept apart from draws between steps (:mod:`.rng`), the training
DataLoader routed through a wrapper (:mod:`.loader_hook`), and the training
state read off a live Trainer (:mod:`.training_state`). Built on
:mod:`lightning_pol.format`; used by the prover and the verifier alike.
"""
