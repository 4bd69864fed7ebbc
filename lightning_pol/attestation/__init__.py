"""Verdicts that travel: the exported model, and a signed statement of what was verified about how it was trained.

- :mod:`.model_export`: the proof's final weights as the plain safetensors file a user publishes;
- :mod:`.keys`: PEM keys as ``openssl genpkey`` makes them (Ed25519, ECDSA P-256/P-384), signing offline;
- :mod:`.dsse`: the DSSE envelope (its PAE in one function), parsed once into a type that checks itself;
- :mod:`.statement`: the in-toto Statement v1 with SLSA's verification summary predicate, built from a report;
- :mod:`.verdict`: the verify app's ``attest.*`` settings and the one function that attests a verdict;
- :mod:`.signed_model`: OpenSSF ``model-signing`` in key mode, for the exported model's directory;
- :mod:`.card`: the Hugging Face model card's YAML block.

docs/attestations.md says how they fit together. Nothing here imports torch unless a model is exported.
"""
