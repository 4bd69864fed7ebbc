"""``python -m tools.mutants [ID ...]``: switch off each pinned check in turn and watch its tests fail.

A check no test pins can be lost in a rework without a sound. Each :data:`MUTANTS` entry names one check, the
smallest edit that switches it off, and the tests that must then fail. The run copies the checkout to a scratch
directory, applies one mutant at a time there (the checkout is never edited), runs those tests with this
interpreter, and prints one line a mutant: ``caught`` when every named test failed, ``MISSED`` otherwise.
First, as a control, the same tests run unmutated there and must pass. Exit 0 when every mutant was caught.
About 5 minutes on 2 cores.

A rework that changes a check's code must update its mutant (tests/test_mutants.py says which no longer
applies) and rerun this.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutant:
    id: str
    check: str
    file: str  # relative to the repository root
    old: str  # occurs exactly once in ``file``
    new: str
    tests: tuple[str, ...]  # pytest node ids, each of which must fail with the mutant applied


_P, _C, _T, _K, _R = ("tests/test_pretrained.py::", "tests/test_replayed_callbacks.py::", "tests/test_tiered.py::",
                      "tests/test_code_identity.py::", "tests/test_reader.py::")
_D, _S, _A = "tests/test_ddp.py::", "tests/test_object_storage.py::", "tests/test_attestations.py::"
_HOSTILE = _T + "test_hostile_compressed_full_state_is_rejected_in_one_line"
_TIERS = _T + "test_tiers_other_than_the_declared_ones_are_rejected"
_NORMS = _T + "test_a_recorded_update_norm_that_lies_is_rejected"
_STEPS = "if not is_int(steps) or steps < entry.step or (entry.step == 0 and steps != 0):"
_FULL = "if c.full != (c.step == final or m.full_state_due(c.step))]"
_SCRIPTS = "tests/test_scripts.py::"
_HOSTILE_SCRIPT = _SCRIPTS + "test_hostile_script_records_are_refused"
_ATTENTION = "tests/test_init.py::test_attention_and_lightnings_demo_transformer_are_drawn_as_torch_draws_them"

MUTANTS: tuple[Mutant, ...] = (
    Mutant("P1", "pretrained: W_0's claimed tensor is the digest it claims", "lightning_pol/verification/pretrained_check.py",
           "if tensor_digest(model[key]) != want or name is None", "if name is None",
           (_P + "test_a_forged_w0_is_rejected_by_the_initialization_check[backbone_value_claims_left]",)),
    Mutant("P2", "pretrained: a tensor of the root's layout is the root's unless redrawn", "lightning_pol/verification/pretrained_check.py",
           "        if key not in claimed and not key.startswith(tuple(redraw))", "        if False and key not in claimed",
           (_P + "test_a_forged_w0_is_rejected_by_the_initialization_check[backbone_redrawn_undeclared]",)),
    Mutant("C1", "callbacks: the gate refuses Lightning's callbacks that change no training", "lightning_pol/runtime/replayed_callbacks.py",
           "        return any(issubclass(cls, kind) for kind, _ in ADAPTERS)", "        return True",
           (_C + "test_a_callback_the_proof_names_goes_through_the_class_gate[lightning.pytorch.callbacks:ModelCheckpoint]",)),
    Mutant("C2", "callbacks: the re-created twin has the live callback's plain settings", "lightning_pol/prover/other_callbacks.py",
           "    plain, settings = (bool, int, float, str, type(None)), vars(live)\n",
           "    plain, settings = (bool, int, float, str, type(None)), vars(live)\n    return\n",
           ("tests/test_other_callbacks.py::test_a_project_callback_whose_recipe_builds_another_is_said_and_not_replayed",)),
    Mutant("T1", "tiers: recorded norms name the model's tensor groups", "lightning_pol/runtime/update_norms.py",
           "    if set(recorded) != set(replayed):", "    if False:", (_NORMS + "[group-left-out]",)),
    Mutant("T2", "tiers: a norm agrees to 1e-6 relative (loosened to 1e-3)", "lightning_pol/runtime/update_norms.py",
           "NORM_RTOL = 1e-6", "NORM_RTOL = 1e-3", (_NORMS + "[off-by-1e-4]",)),
    Mutant("T3", "tiers: a failed lead-in fails the proof", "lightning_pol/verification/segments.py",
           "    failed = [s for s in segments if not s.passed]", '    failed = [s for s in segments if not s.passed and s.reason != "lead-in"]',
           (_T + "test_a_failed_lead_in_fails_the_proof",)),
    Mutant("T4a", "tiers: a compressed file ends its stream (Adler-32 included)", "lightning_pol/format/compression.py",
           "    if not d.eof or d.unused_data:", "    if d.unused_data:", (_HOSTILE + "[adler_cut]",)),
    Mutant("T4b", "tiers: nothing follows a compressed stream", "lightning_pol/format/compression.py",
           "    if not d.eof or d.unused_data:", "    if not d.eof:", (_HOSTILE + "[byte_appended]",)),
    Mutant("T5", "tiers: a compressed file decompresses to its entry's SHA-256", "lightning_pol/format/checkpoint.py",
           "    if (checkpoint_digest(state) if refs else file_digest) != entry.sha256:",
           "    if refs and checkpoint_digest(state) != entry.sha256:",
           (_HOSTILE + "[one_weight_changed]", _R + "test_a_file_without_references_must_be_the_state_its_entry_names")),
    Mutant("T6a", "tiers: no full state where a digest is due", "lightning_pol/verification/integrity.py",
           _FULL, "if not c.full and (c.step == final or m.full_state_due(c.step))]", (_TIERS + "[full-where-a-digest-is-due]",)),
    Mutant("T6b", "tiers: the final state is full", "lightning_pol/verification/integrity.py",
           _FULL, "if c.full != m.full_state_due(c.step)]", (_TIERS + "[final]",)),
    Mutant("T7", "tiers: every checkpoint after W_0 records norms", "lightning_pol/format/manifest.py",
           "        return None\n    if not isinstance(norms, dict) or not norms",
           "        return None\n    if norms is None:\n        return None\n    if not isinstance(norms, dict) or not norms",
           (_T + "test_malformed_tiers_are_format_errors[<lambda>-step 16 has no valid update norms]",
            _T + "test_malformed_tiers_are_format_errors[<lambda>-step 64 has no valid update norms]")),
    Mutant("K1", "code: a project file training did not import is a difference", "lightning_pol/format/code_identity.py",
           "        for rel in sorted(set(self.imports) | set(installed.imports)):", "        for rel in sorted(self.imports):",
           (_K + "test_an_import_the_proof_leaves_out_is_a_difference",)),
    Mutant("K2", "code: a replayed callback's file is part of the identity", "lightning_pol/runtime/installed_code.py",
           "    specs = [manifest.module, *([manifest.datamodule] if manifest.datamodule else []), *manifest.callbacks]",
           "    specs = [manifest.module, *([manifest.datamodule] if manifest.datamodule else [])]",
           (_K + "test_a_changed_line_in_a_replayed_callbacks_file_is_exit_1_under_match",)),
    Mutant("K3", "code: a re-exported class is the file that defines it", "lightning_pol/runtime/installed_code.py",
           "_REEXPORT_DEPTH = 8", "_REEXPORT_DEPTH = 0",
           (_K + "test_a_reexported_class_is_identified_by_the_file_that_defines_it[torch.optim.Adam]",
            _K + "test_a_reexported_class_is_identified_by_the_file_that_defines_it[torch.optim:Adam]")),
    Mutant("M1", "manual optimization: optimizer steps are at least the proof's steps", "lightning_pol/format/checkpoint.py",
           _STEPS, "if not is_int(steps) or (entry.step == 0 and steps != 0):",
           (_R + "test_optimizer_steps_must_count_at_least_the_steps_and_none_at_0[below-its-step]",)),
    Mutant("M2", "manual optimization: no optimizer step before step 0", "lightning_pol/format/checkpoint.py",
           _STEPS, "if not is_int(steps) or steps < entry.step:",
           (_R + "test_optimizer_steps_must_count_at_least_the_steps_and_none_at_0[nonzero-at-step-0]",)),
    Mutant("R1", "references: the resolved state is the one the entry's digest names", "lightning_pol/format/checkpoint.py",
           "    if (checkpoint_digest(state) if refs else file_digest) != entry.sha256:",
           "    if (entry.sha256 if refs else file_digest) != entry.sha256:",
           ("tests/test_transformers.py::test_lying_references_are_rejected[changed_claimed_same]",)),
    Mutant("R2", "references: a __same__ names a stored tensor of its digest", "lightning_pol/format/reader.py",
           "        if tensor_digest(tensor) != ref.sha256:", "        if False:",
           (_R + "test_a_reference_that_does_not_resolve_is_refused_in_one_line[another digest]",)),
    Mutant("R3", "references: a tied weight the root saved once is the root's", "lightning_pol/prover/pretrained.py",
           "            if name is not None and any(torch.equal(", "            if False and any(torch.equal(",
           ("tests/test_transformers.py::test_a_tied_lm_head_the_root_saved_once_is_claimed_from_the_root",)),
    Mutant("D1", "DDP: each replayed rank draws from its own RNG stream", "lightning_pol/verification/replay.py",
           "self.stream = TrainingStream(None if streams is None else streams[rank])",
           "self.stream = TrainingStream(None if streams is None else streams[0])",
           (_D + "test_three_ranks_verify_bit_exact",)),
    Mutant("D2", "DDP: a rank that keeps its own buffers starts from them", "lightning_pol/verification/replay.py",
           "            load_rank_buffers(pl_module, self._buffers)\n", "",
           (_D + "test_two_ranks_accumulating_without_buffer_broadcasts_verify_bit_exact",)),
    Mutant("D3", "DDP: a step holds as many micro-batches of each rank", "lightning_pol/format/reader.py",
           " or bool((per_step % world != 0).any())", "",
           (_D + "test_a_ddp_step_must_hold_as_many_micro_batches_of_each_rank",)),
    Mutant("D4", "DDP: each rank resumes its own indices and stream", "lightning_pol/prover/distributed.py",
           "{**state, **ranks[rank]} if ranks is not None", "{**state, **ranks[0]} if ranks is not None",
           (_D + "test_a_two_rank_run_killed_and_resumed_from_last_ckpt_is_one_proof",)),
    Mutant("S1", "object store: an object's size is checked against its cap before a byte is read", "lightning_pol/format/storage.py",
           "        size = self._size(rel)\n        self._size_checked(rel, size, limit, exact)\n", "        size = self._size(rel)\n",
           (_S + "test_a_changed_checkpoint_object_resealed_in_the_manifest_is_rejected",)),
    Mutant("S2", "object store: an upload that fails part-way is discarded", "lightning_pol/format/storage.py",
           "            fh.discard()  # never", "            fh.close()  # never",
           (_S + "test_an_interrupted_upload_leaves_no_object_and_a_train_app_url_is_not_a_local_directory",)),
    Mutant("S3", "object store: a stray key is deleted by a resume", "lightning_pol/format/storage.py",
           'self.fs.rm_file(f"{self._root}/{rel}")', "self.fs.rm_file(self._path(rel))",
           (_S + "test_a_run_killed_after_lightnings_second_checkpoint_resumes_into_one_valid_proof",)),
    Mutant("S4", "chain: a parent path is followed only on the child's own filesystem", "lightning_pol/verification/chain.py",
           '    return "::" not in recorded and recorded.partition("://")[0] == child_url.partition("://")[0] != ""', "    return True",
           (_S + "test_a_parent_path_the_proof_names_is_followed_only_on_the_childs_own_filesystem",)),
    Mutant("S5", "overwrite: a temporary's name is the writer's only where the writer puts files", "lightning_pol/format/writer.py",
           "or (not rest and top.startswith(pf.TMP_PREFIX)))", "or any(p.startswith(pf.TMP_PREFIX) for p in rel.split(\"/\")))",
           ("tests/test_refusals.py::test_foreign_files_are_never_overwritten",)),
    Mutant("S6", "roots add: a URL root is recorded as the URL the verifier reads", "lightning_pol/apps/roots.py",
           "path = args.file if is_url(args.file) else os.path.abspath(args.file)", "path = os.path.abspath(args.file)",
           (_S + "test_a_trusted_root_is_read_from_a_url",)),
    Mutant("A1", "attestation: the signature covers DSSE's PAE, not the payload alone", "lightning_pol/attestation/dsse.py",
           "signer.sign(pae(payload_type, payload))", "signer.sign(payload)",
           (_A + "test_a_verified_proof_is_attested_passed_and_checks_out_without_lightning_pol",)),
    Mutant("A2", "attest verify: the model file must be a subject", "lightning_pol/apps/attest.py",
           "        if not names:\n", "        if False:\n", (_A + "test_attest_verify_exits_0_1_and_2",)),
    Mutant("A3", "attestation: a rejected proof is attested FAILED", "lightning_pol/attestation/statement.py",
           '"verificationResult": "PASSED" if report.get("valid") else "FAILED",', '"verificationResult": "PASSED",',
           (_A + "test_a_forged_checkpoint_is_attested_failed",)),
    Mutant("A4", "attestation: a FAILED verdict claims no verified level", "lightning_pol/attestation/statement.py",
           '    if not report.get("valid"):\n        return []\n', "",
           (_A + "test_a_forged_checkpoint_is_attested_failed",)),
    Mutant("A5", "attestation: attest.model must be the proof's export", "lightning_pol/attestation/verdict.py",
           "if layout.sha256_file(self.model) != exported:", "if False:",
           (_A + "test_a_wrong_attest_setting_is_one_line_before_any_replay[attest5-is not this proof's final model]",)),
    Mutant("A6", "attestation: a signature checks only with its own key", "lightning_pol/attestation/keys.py",
           "        from cryptography.exceptions import InvalidSignature\n", "        return True\n        from cryptography.exceptions import InvalidSignature\n",
           (_A + "test_attest_verify_exits_0_1_and_2",)),
    Mutant("A7", "attestation: in a multirun only the merge attests", "lightning_pol/apps/verify.py",
           "cfg.get(\"tracker\"), None if multirun else attest)", "cfg.get(\"tracker\"), attest)",
           ("tests/test_apps.py::test_two_shard_multirun_over_a_rejected_proof_merges_to_rejected",
            "tests/test_apps.py::test_sweep_over_q_gives_a_report_per_job_and_a_summary")),
    Mutant("A9", "attestation: levels follow the segments; the proof is the one verified", "lightning_pol/attestation/verdict.py",
           "        if reader.identity != report[\"proof_identity\"]:", "        if False:",
           (_A + "test_levels_follow_the_segments_and_a_changed_proof_is_not_attested",)),
    Mutant("A8", "export: --key-prefix keeps only the inner model, stripped", "lightning_pol/attestation/model_export.py",
           "    if key_prefix:\n", "    if False:\n", (_A + "test_export_is_byte_identical_and_loads_into_the_model",)),
    Mutant("X1", "script: never one inside the proof directory", "lightning_pol/runtime/training_script.py",
           "if self.proof is not None and self.file.is_relative_to(self.proof):", "if False:", (_HOSTILE_SCRIPT,)),
    Mutant("X2", "script: never one a link leads outside the project root to", "lightning_pol/runtime/training_script.py",
           "        if not self.file.is_relative_to(self.root):", "        if False:", (_HOSTILE_SCRIPT,)),
    Mutant("X3", "script: the recorded arguments are gated before anything runs", "lightning_pol/verification/gate.py",
           "        script.check_arguments()  # the arguments", "        pass  # the arguments", (_HOSTILE_SCRIPT,)),
    Mutant("X4", "script: the rehearsal compares the data the script builds again", "lightning_pol/prover/rehearsal.py",
           "dataset = self._handed_loader(where).dataset", "dataset = live_dataset",
           (_SCRIPTS + "test_a_split_seeded_by_the_clock_is_refused_at_fit_start",)),
    Mutant("X5", "script: one that trains when imported takes the fit recipe", "lightning_pol/prover/recreation.py",
           "if record.recipe == \"classes\" and trains_when_imported(root / record.path):", "if False:",
           (_SCRIPTS + "test_a_package_module_that_trains_when_imported_verifies_bit_exact",)),
    Mutant("I1", "init: nn.Transformer's matrices are Xavier draws", "lightning_pol/init.py",
           "if strategy == \"pytorch_default\" and id(tensor) in transformer:", "if False:", (_ATTENTION,)),
    Mutant("I2", "init: an attention's out_proj bias is zero", "lightning_pol/init.py",
           "        return (\"constant\", 0.0) if local == \"bias\" else None", "        return None", (_ATTENTION,)),
)


def applied(mutant: Mutant, source: str) -> str:
    """``source`` with ``mutant`` applied; a ValueError when its ``old`` is not there exactly once (the check changed)."""
    found = source.count(mutant.old)
    if found != 1:
        raise ValueError(f"mutant {mutant.id} ({mutant.check}): its code occurs {found} times in {mutant.file}; update the mutant")
    return source.replace(mutant.old, mutant.new)


def _scratch_copy(into: Path) -> Path:
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True)
    for rel in listed.stdout.splitlines():
        if (REPO / rel).is_file():
            (into / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, into / rel)
    return into


def _pytest(tests: list[str], copy: Path) -> tuple[int, int, float]:
    """(exit code, tests failed, seconds) of ``tests`` run in ``copy`` with this interpreter."""
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rf", "-p", "no:cacheprovider", *tests], cwd=copy,
                          capture_output=True, text=True)
    failed = sum(line.startswith("FAILED ") for line in done.stdout.splitlines())
    return done.returncode, failed, time.monotonic() - start


def run(mutant: Mutant, copy: Path) -> tuple[bool, str]:
    """(caught, one line): every test of ``mutant`` failed with it applied in ``copy``."""
    path = copy / mutant.file
    source = path.read_text()
    path.write_text(applied(mutant, source))
    try:
        code, failed, seconds = _pytest(list(mutant.tests), copy)
    finally:
        path.write_text(source)
    caught = code == 1 and failed == len(mutant.tests)
    return caught, f"{mutant.id}: {mutant.check}: {failed}/{len(mutant.tests)} tests failed ({seconds:.0f} s)"


def control(mutants: list[Mutant], copy: Path) -> tuple[bool, str]:
    """(passed, one line): the mutants' tests pass in ``copy`` as it is, so a failure under a mutant is the mutant's."""
    tests = list(dict.fromkeys(t for m in mutants for t in m.tests))
    code, failed, seconds = _pytest(tests, copy)
    return code == 0, f"control: {len(tests) - failed}/{len(tests)} tests pass unmutated ({seconds:.0f} s)"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("ids", nargs="*", help=f"mutants to run (default: all): {' '.join(m.id for m in MUTANTS)}")
    args = p.parse_args(argv)
    unknown = sorted(set(args.ids) - {m.id for m in MUTANTS})
    if unknown:
        p.error(f"no mutant {', '.join(unknown)}")
    chosen = [m for m in MUTANTS if not args.ids or m.id in args.ids]
    missed = 0
    with tempfile.TemporaryDirectory(prefix="mutants-") as scratch:
        copy = _scratch_copy(Path(scratch))
        passed, line = control(chosen, copy)
        print(line, flush=True)
        if not passed:
            return 1
        for mutant in chosen:
            caught, line = run(mutant, copy)
            missed += not caught
            print(("caught  " if caught else "MISSED  ") + line, flush=True)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
