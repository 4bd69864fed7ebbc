"""The manifest: a proof's list of files and its claims, as one typed object.

Built by the prover, serialized and parsed here and nowhere else. :meth:`Manifest.parse`
reads hostile bytes: every field is checked once, and a bad one is a
:class:`ProofFormatError` whose one-line reason names it. The writer edits a
manifest only through its operations (list a file, add a checkpoint, set the
index log, commit the data, mark it complete), which keep it a valid one.

The raw-JSON way in, for the red-team suite and the fuzz campaign, which must be
able to write what no honest prover would: :func:`manifest_bytes` serializes any
JSON object exactly as the writer serializes a manifest, and
:meth:`Manifest.from_json` checks one. ``docs/proof-format.md`` describes the
fields; change both in the same commit.
"""

from __future__ import annotations

import json
import math
import operator
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar

from lightning_pol.format import layout
from lightning_pol.format.code_identity import CodeIdentity
from lightning_pol.format.samples import SAMPLE_ENCODING, TREE
from lightning_pol.format.script_record import ScriptRecord, names_script_class
from lightning_pol.format.state_codec import decode_state, encode_state
from lightning_pol.format.strict_json import ProofFormatError, is_int, load_json

#: The public, fixed list of initialization strategies a proof may declare
#: (the paper requires the set to be agreed in advance). ``warm_start`` means
#: W_0 is the final state of a parent proof.
INIT_STRATEGIES = (
    "pytorch_default",
    "kaiming_normal",
    "kaiming_uniform",
    "xavier_normal",
    "xavier_uniform",
    "orthogonal",
    "normal",
    "transformers",
    "warm_start",
    "pretrained",
)

_ISO_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?(Z|[+-]\d\d:\d\d)", re.ASCII)
_RUN_ID = re.compile(r"[0-9a-f]{1,64}")


def manifest_bytes(obj: dict[str, Any]) -> bytes:
    """The canonical serialization of a manifest's JSON (its SHA-256 is the proof's identity)."""
    return (json.dumps(obj, indent=1, allow_nan=False, ensure_ascii=True) + "\n").encode("ascii")


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    bytes: int

    def to_json(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "bytes": self.bytes}


@dataclass(frozen=True)
class CheckpointEntry:
    """The checkpoint of the state at the start of optimizer step ``step`` (the final one: at the end of training).

    ``sha256``: the SHA-256 of the full checkpoint file of the state (every tensor stored). The file at ``path``
    may hold references to tensors stored earlier instead (``format.tensor_refs``), and then has another digest.
    ``path`` None: a digest-only entry of a tiered proof; a path ending in ``.zlib``: a tiered proof's full state
    in compressed form (``format.compression``).
    ``norms``: in a tiered proof, the update norms per tensor group from the previous checkpoint to this one.
    """

    step: int
    epoch: int
    path: str | None
    sha256: str
    norms: dict[str, float] | None = None

    @property
    def full(self) -> bool:
        """Whether the proof holds this state's file (else only its digest)."""
        return self.path is not None

    def to_json(self) -> dict[str, Any]:
        out = {"step": self.step, "epoch": self.epoch, "path": self.path, "sha256": self.sha256}
        return out if self.norms is None else {**out, "norms": dict(self.norms)}


@dataclass(frozen=True)
class IndexChunk:
    """An index-log file holding the batches of steps ``first_step`` to ``first_step + steps - 1``."""

    path: str
    first_step: int
    steps: int

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "first_step": self.first_step, "steps": self.steps}


#: The dtypes a recorded monitored value may have had as a tensor (floating point: exact as a JSON float).
MONITORED_DTYPES = ("float16", "bfloat16", "float32", "float64")


@dataclass(frozen=True)
class MonitoredValue:
    """A value a plateau scheduler consumed: after ``step`` optimizer steps (``trainer.global_step`` then), the
    scheduler of ``lr_scheduler_configs[scheduler]`` was stepped with ``value`` of ``monitor`` (a 0-d tensor
    of ``dtype``, or a plain number when ``dtype`` is None)."""

    step: int
    scheduler: int
    monitor: str
    value: float
    dtype: str | None = None

    def to_json(self) -> dict[str, Any]:
        out = {"step": self.step, "scheduler": self.scheduler, "monitor": self.monitor,
               "value": encode_state({"v": self.value})[1]["v"]}  # non-finite values as typed JSON's markers
        if self.dtype is not None:
            out["dtype"] = self.dtype
        return out

    def metric(self, device: Any = None) -> Any:
        """The value as the scheduler's hook received it: a 0-d tensor of ``dtype`` (on ``device``), or a float."""
        if self.dtype is None:
            return self.value
        import torch

        return torch.tensor(self.value, dtype=getattr(torch, self.dtype), device=device)


@dataclass(frozen=True)
class _Declaration:
    """A name, and keyword arguments in typed JSON that the verifier decodes and passes on."""

    name: str
    typed_arguments: dict[str, Any]
    #: The two JSON keys of the name and the arguments.
    KEYS: ClassVar[tuple[str, str]] = ("name", "arguments")

    def arguments(self) -> dict[str, Any]:
        return decode_state({}, self.typed_arguments)

    def to_json(self) -> dict[str, Any]:
        return dict(zip(self.KEYS, (self.name, self.typed_arguments)))


def _alias(field_name: str, doc: str) -> Any:
    return property(operator.attrgetter(field_name), doc=doc)


#: How a :class:`ClassSpec`'s arguments build it: ``cls(**hparams)``; LightningCLI's
#: ``instantiate_module(cls, hparams)``; Hydra's ``instantiate({"_target_": cls, **hparams})``.
INSTANTIATORS = ("hparams", "lightning_cli", "hydra", "script")


@dataclass(frozen=True)
class ClassSpec(_Declaration):
    """A class the verifier re-creates: its import path ``module:QualName``, its ``hparams`` in typed JSON
    (a config, for the ``lightning_cli`` and ``hydra`` instantiators), and the keys among them that named
    files on the prover's machine (``local_paths``: what a verifier elsewhere overrides)."""

    instantiator: str = "hparams"
    local_paths: tuple[str, ...] = ()
    KEYS = ("class", "hparams")
    # Unannotated: annotated, the dataclass decorator would take the aliases for fields.
    import_path = _alias("name", "``package.module:QualName``")
    hparams = _alias("typed_arguments", "the recorded hparams, typed JSON")

    def to_json(self) -> dict[str, Any]:
        out = super().to_json()
        if self.instantiator != "hparams":  # absent: the format's first form, byte for byte
            out["instantiator"] = self.instantiator
        if self.local_paths:
            out["local_paths"] = list(self.local_paths)
        return out


class InitDeclaration(_Declaration):
    """The declared initialization of W_0: a strategy of :data:`INIT_STRATEGIES` and its parameters (typed JSON)."""

    KEYS = ("strategy", "params")
    strategy: str = _alias("name", "one of :data:`INIT_STRATEGIES`")
    params: dict[str, Any] = _alias("typed_arguments", "the strategy's parameters, typed JSON")


@dataclass
class DataCommitment:
    """The Merkle commitment to the training data; ``leaves`` and ``root`` are None until the data is committed."""

    size: int
    leaves: str | None = None
    root: str | None = None
    tree: str = TREE
    sample_encoding: str = SAMPLE_ENCODING

    @property
    def committed(self) -> bool:
        return self.root is not None

    def to_json(self) -> dict[str, Any]:
        return {"size": self.size, "leaves": self.leaves, "root": self.root, "tree": self.tree, "sample_encoding": self.sample_encoding}


@dataclass
class Manifest:
    """``manifest.json``, typed. Field order is the file's key order (docs/proof-format.md).

    ``training`` and ``init.params`` stay typed JSON as stored (:meth:`training_values` decodes);
    ``environment`` and ``parent`` are plain JSON objects.
    """

    run_id: str
    created: str
    seed: int
    every_n_steps: int
    init: InitDeclaration
    module: ClassSpec
    training: dict[str, Any]
    environment: dict[str, Any]
    data: DataCommitment
    datamodule: ClassSpec | None = None
    #: The callbacks the replay re-creates and runs, in the order training ran them (after ProofOfLearning).
    callbacks: list[ClassSpec] = field(default_factory=list)
    #: The source files of the classes it names (None: a proof written before code identities).
    code: CodeIdentity | None = None
    #: The training script the classes or the data come from (None: everything the proof names is importable).
    script: ScriptRecord | None = None
    parent: dict[str, Any] | None = None
    status: str = layout.STATUS_IN_PROGRESS
    index_log: list[IndexChunk] = field(default_factory=list)
    sample_epochs: list[list[int]] = field(default_factory=list)
    monitored: list[MonitoredValue] = field(default_factory=list)
    checkpoints: list[CheckpointEntry] = field(default_factory=list)
    final_step: int | None = None
    files: dict[str, FileEntry] = field(default_factory=dict)
    format_version: int = layout.FORMAT_VERSION
    #: K of a tiered proof: full states at step 0, every K steps and at the end, digests in between (None: K = k).
    full_every_n_steps: int | None = None

    # -- reading -------------------------------------------------------------------
    @property
    def complete(self) -> bool:
        return self.status == layout.STATUS_COMPLETE

    @property
    def recorded_steps(self) -> int:
        """Optimizer steps whose batches the index log holds."""
        return sum(c.steps for c in self.index_log)

    def training_values(self) -> dict[str, Any]:
        """``training`` decoded from typed JSON."""
        return decode_state({}, self.training)

    def checkpoint_at(self, step: int) -> CheckpointEntry | None:
        return next((c for c in self.checkpoints if c.step == step), None)

    @property
    def tiered(self) -> bool:
        """Whether some checkpoints are digest-only (``full_every_n_steps`` set)."""
        return self.full_every_n_steps is not None

    def full_state_due(self, step: int) -> bool:
        """Whether the checkpoint of ``step`` (not the final one) must be stored in full: step 0 and every K-th."""
        return self.full_every_n_steps is None or step % self.full_every_n_steps == 0

    # -- operations ------------------------------------------------------------------
    def list_file(self, rel: str, entry: FileEntry) -> FileEntry | None:
        """List ``rel`` (a put file); returns the entry it replaces."""
        old = self.files.get(rel)
        self.files[rel] = entry
        return old

    def unlist_file(self, rel: str) -> FileEntry | None:
        return self.files.pop(rel, None)

    def add_checkpoint(self, step: int, epoch: int, path: str | None, digest: str | None = None,
                       norms: dict[str, float] | None = None) -> CheckpointEntry:
        """List the checkpoint of ``step``: its file ``path``, listed already, and ``digest`` when that file is not the
        checkpoint file itself (compressed, or ``path`` None: digest-only)."""
        if self.checkpoints and step <= self.checkpoints[-1].step:
            raise ValueError(f"checkpoint {step} after checkpoint {self.checkpoints[-1].step}")
        if (norms is not None) != (self.tiered and step > 0):
            raise ValueError("a tiered proof records update norms at every checkpoint after step 0, another proof none")
        entry = CheckpointEntry(step, epoch, path, str(digest) if digest is not None else self.files[str(path)].sha256, norms)
        self.checkpoints.append(entry)
        return entry

    def drop_checkpoints_after(self, step: int) -> list[CheckpointEntry]:
        """Unlist the checkpoints after ``step`` (a resumed run never produced them); returns them."""
        dropped = [c for c in self.checkpoints if c.step > step]
        self.checkpoints = [c for c in self.checkpoints if c.step <= step]
        return dropped

    def add_index_chunk(self, path: str, steps: int) -> IndexChunk:
        """List the index-log file ``path`` that holds the next ``steps`` steps."""
        chunk = IndexChunk(path, self.recorded_steps, steps)
        self.index_log.append(chunk)
        return chunk

    def clear_index_log(self) -> list[IndexChunk]:
        """Unlist every index-log chunk (they are about to be replaced by one file); returns them."""
        chunks, self.index_log = self.index_log, []
        return chunks

    def commit_data(self, leaves_path: str, root: str) -> None:
        self.data.leaves, self.data.root = leaves_path, root

    def set_sample_epochs(self, runs: list[list[int]]) -> None:
        self.sample_epochs = [list(r) for r in runs]

    def add_monitored(self, value: MonitoredValue) -> None:
        """Record a value a plateau scheduler consumed (in the order they were consumed)."""
        if self.monitored and value.step < self.monitored[-1].step:
            raise ValueError(f"monitored value at step {value.step} after one at step {self.monitored[-1].step}")
        self.monitored.append(value)

    def keep_monitored(self, count: int) -> list[MonitoredValue]:
        """Keep the first ``count`` monitored values (a resumed run consumed only those before its Lightning
        checkpoint); returns the others."""
        dropped, self.monitored = self.monitored[count:], self.monitored[:count]
        return dropped

    def mark_complete(self, final_step: int) -> None:
        self.status, self.final_step = layout.STATUS_COMPLETE, final_step

    def mark_in_progress(self) -> None:
        self.status, self.final_step = layout.STATUS_IN_PROGRESS, None

    # -- serialization ---------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "format": layout.FORMAT_NAME,
            "format_version": self.format_version,
            "status": self.status,
            "run_id": self.run_id,
            "created": self.created,
            "seed": self.seed,
            "every_n_steps": self.every_n_steps,
            # Only in a tiered proof: other proofs' manifests are the format's first form.
            **({"full_every_n_steps": self.full_every_n_steps} if self.full_every_n_steps is not None else {}),
            "init": self.init.to_json(),
            "parent": self.parent,
            "module": self.module.to_json(),
            "datamodule": self.datamodule.to_json() if self.datamodule is not None else None,
            # Only when training ran callbacks the replay runs: other proofs' manifests are the format's first form.
            **({"callbacks": [c.to_json() for c in self.callbacks]} if self.callbacks else {}),
            # Only when classes or data come from the training script: other proofs' manifests are the format's first form.
            **({"script": self.script.to_json()} if self.script is not None else {}),
            **({"code": self.code.to_manifest()} if self.code is not None else {}),
            "training": self.training,
            "environment": self.environment,
            "data": self.data.to_json(),
            "index_log": [c.to_json() for c in self.index_log],
            "sample_epochs": [list(r) for r in self.sample_epochs],
            # Only when a plateau scheduler consumed a value: other proofs' manifests are the format's first form.
            **({"monitored": [v.to_json() for v in self.monitored]} if self.monitored else {}),
            "checkpoints": [c.to_json() for c in self.checkpoints],
            "final_step": self.final_step,
            "files": {rel: e.to_json() for rel, e in self.files.items()},
        }

    def to_bytes(self) -> bytes:
        return manifest_bytes(self.to_json())

    @classmethod
    def parse(cls, raw: bytes) -> Manifest:
        """The manifest in ``raw`` (the bytes of a ``manifest.json``), or a :class:`ProofFormatError`."""
        return cls.from_json(load_json(raw, "manifest.json"))

    @classmethod
    def from_json(cls, m: Any) -> Manifest:
        """Check a manifest's JSON object field by field (docs/proof-format.md) and type it."""
        _check_format(m)
        files = _files(m.get("files"))
        for key in ("every_n_steps", "seed"):
            if not is_int(m.get(key), 1 if key == "every_n_steps" else 0):
                raise ProofFormatError(f"manifest field {key} is missing or invalid")
        full_every = _full_every(m)
        checkpoints = _checkpoints(m.get("checkpoints"), files, full_every is not None, m["format_version"])
        index_log = _index_log(m.get("index_log"), files)
        status = m.get("status")
        if status not in (layout.STATUS_IN_PROGRESS, layout.STATUS_COMPLETE):
            raise ProofFormatError("manifest field status is invalid")
        data = _data(m.get("data"), status)
        for key in ("training", "environment", "init"):
            if not isinstance(m.get(key), dict):
                raise ProofFormatError(f"manifest field {key} is missing or invalid")
        threads = m["environment"].get("torch_threads")
        if threads is not None and not is_int(threads, 1):  # the verifier runs with this many threads
            raise ProofFormatError("manifest field environment.torch_threads is invalid")
        module = _class_spec(m.get("module"), "module", required=True)
        datamodule = _class_spec(m.get("datamodule"), "datamodule", required=False)
        callbacks = m.get("callbacks", [])
        if not isinstance(callbacks, list) or len(callbacks) > 100:
            raise ProofFormatError("manifest field callbacks is invalid")
        callback_specs = [_class_spec(c, f"callbacks[{i}]", required=True) for i, c in enumerate(callbacks)]
        if m.get("final_step") is not None and not is_int(m["final_step"]):
            raise ProofFormatError("manifest field final_step is invalid")
        if m.get("parent") is not None and not isinstance(m["parent"], dict):
            raise ProofFormatError("manifest field parent is invalid")
        sample_epochs = _sample_epochs(m.get("sample_epochs"))
        monitored = _monitored(m.get("monitored", []))
        init = m["init"]
        if not isinstance(init.get("strategy"), str):
            raise ProofFormatError("manifest field init is missing or invalid")
        code = CodeIdentity.from_manifest(m["code"]) if "code" in m else None
        script = ScriptRecord.from_json(m["script"]) if "script" in m else None
        _check_script(script, module, datamodule, callback_specs)
        _check_typed_json(m, module, datamodule, callback_specs)
        _check_identity(m.get("created"), m.get("run_id"))
        _check_training(m["training"])
        assert module is not None
        return cls(
            run_id=m["run_id"], created=m["created"], seed=m["seed"], every_n_steps=m["every_n_steps"],
            init=InitDeclaration(init["strategy"], init.get("params") or {}), module=module, training=m["training"],
            environment=m["environment"], data=data, datamodule=datamodule, parent=m.get("parent"), status=status,
            index_log=index_log, sample_epochs=sample_epochs, checkpoints=checkpoints, final_step=m.get("final_step"),
            files=files, format_version=m["format_version"], monitored=monitored,
            callbacks=[c for c in callback_specs if c is not None], code=code, full_every_n_steps=full_every, script=script,
        )


# -- the field checks of Manifest.from_json, each with the reason a reader gives ------------------

def _check_format(m: Any) -> None:
    if not isinstance(m, dict) or m.get("format") != layout.FORMAT_NAME:
        raise ProofFormatError("manifest.json is not a lightning-pol proof manifest")
    if not is_int(m.get("format_version")) or m["format_version"] not in layout.READABLE_VERSIONS:
        raise ProofFormatError(
            f"unknown format version {m.get('format_version')!r}; this reader reads {list(layout.READABLE_VERSIONS)}"
        )


def _files(files: Any) -> dict[str, FileEntry]:
    if not isinstance(files, dict):
        raise ProofFormatError("manifest has no file list")
    out = {}
    for rel, entry in files.items():
        if not layout.is_safe_relative_path(rel) or rel == layout.MANIFEST:
            raise ProofFormatError(f"unsafe path in manifest: {rel[:100]!r}")
        if not isinstance(entry, dict) or not isinstance(entry.get("sha256"), str) or len(entry["sha256"]) != 64 or not is_int(entry.get("bytes")):
            raise ProofFormatError(f"bad file entry for {rel}")
        out[rel] = FileEntry(entry["sha256"], entry["bytes"])
    return out


def _full_every(m: dict[str, Any]) -> int | None:
    if "full_every_n_steps" not in m:
        return None
    k, full = m["every_n_steps"], m["full_every_n_steps"]
    if not is_int(full, 1) or full <= k or full % k:
        raise ProofFormatError("manifest field full_every_n_steps is not a multiple of every_n_steps greater than it")
    return int(full)


_HEX64 = re.compile(r"[0-9a-f]{64}", re.ASCII)
#: Most tensor groups a checkpoint's update norms may name (runtime.update_norms.tensor_group).
MAX_NORM_GROUPS = 10_000


def _checkpoints(ckpts: Any, files: dict[str, FileEntry], tiered: bool, version: int) -> list[CheckpointEntry]:
    if not isinstance(ckpts, list):
        raise ProofFormatError("manifest has no checkpoint list")
    out: list[CheckpointEntry] = []
    last, last_epoch = -1, 0
    for c in ckpts:
        path = c.get("path") if isinstance(c, dict) else None
        if not isinstance(c, dict) or not is_int(c.get("step")) or not is_int(c.get("epoch")) or not (
            isinstance(path, str) or (path is None and tiered and "path" in c)
        ):
            raise ProofFormatError("bad checkpoint entry")
        if set(c) - {"step", "epoch", "path", "sha256", "norms"}:
            raise ProofFormatError(f"checkpoint at step {c['step']} has keys the format does not know")
        if c["step"] <= last:
            raise ProofFormatError("checkpoint steps are not strictly increasing")
        if c["epoch"] < last_epoch:
            raise ProofFormatError("checkpoint epochs decrease")
        last, last_epoch = c["step"], c["epoch"]
        compressed = isinstance(path, str) and path.endswith(layout.COMPRESSED_SUFFIX)
        if compressed and not tiered:
            raise ProofFormatError(f"checkpoint at step {c['step']} is compressed, which only a tiered proof's full states are")
        # A plain file is the state's full file (same digest) unless it holds tensor references, which the reader resolves
        # and checks against this digest (format.tensor_refs): a version-2 proof has none.
        if path is not None and (path not in files or (files[path].sha256 != c.get("sha256") and not compressed and version < 3)):
            raise ProofFormatError(f"checkpoint at step {c['step']} is not listed with a matching digest")
        if not (isinstance(c.get("sha256"), str) and _HEX64.fullmatch(c["sha256"])):
            raise ProofFormatError(f"checkpoint at step {c['step']} has no SHA-256 digest of its state")
        out.append(CheckpointEntry(c["step"], c["epoch"], path, c["sha256"], _norms(c, tiered)))
    return out


def _norms(c: dict[str, Any], tiered: bool) -> dict[str, float] | None:
    """A tiered proof's update norms (every checkpoint after step 0 has them; another proof's have none)."""
    norms = c.get("norms")
    if not tiered or c["step"] == 0:
        if "norms" in c:
            raise ProofFormatError(f"checkpoint at step {c['step']} records update norms, which only a tiered proof's later checkpoints have")
        return None
    if not isinstance(norms, dict) or not norms or len(norms) > MAX_NORM_GROUPS or not all(
        isinstance(g, str) and 0 < len(g) <= 500 and isinstance(v, (int, float)) and not isinstance(v, bool)
        and math.isfinite(v) and v >= 0 for g, v in norms.items()
    ):
        raise ProofFormatError(f"checkpoint at step {c['step']} has no valid update norms (group name: finite norm >= 0)")
    return {g: float(v) for g, v in norms.items()}


def _index_log(chunks: Any, files: dict[str, FileEntry]) -> list[IndexChunk]:
    if not isinstance(chunks, list):
        raise ProofFormatError("manifest has no index log")
    out, expected = [], 0
    for c in chunks:
        if not isinstance(c, dict) or not isinstance(c.get("path"), str) or c["path"] not in files or not is_int(c.get("first_step")) or c["first_step"] != expected:
            raise ProofFormatError("index log chunks are missing, unlisted or out of order")
        if not is_int(c.get("steps")):
            raise ProofFormatError("bad index log chunk")
        expected += c["steps"]
        out.append(IndexChunk(c["path"], c["first_step"], c["steps"]))
    return out


def _data(data: Any, status: str) -> DataCommitment:
    if not isinstance(data, dict) or not is_int(data.get("size")) or data["size"] >= 2**63:  # indices are int64
        raise ProofFormatError("manifest field data is missing or invalid")
    committed = isinstance(data.get("leaves"), str) and isinstance(data.get("root"), str)
    # A run commits to its data after its first epoch; until then both are null.
    if not committed and not (data.get("leaves") is None and data.get("root") is None and status == layout.STATUS_IN_PROGRESS):
        raise ProofFormatError("manifest field data is missing or invalid")
    if not isinstance(data.get("tree", TREE), str) or not isinstance(data.get("sample_encoding", SAMPLE_ENCODING), str):
        raise ProofFormatError("manifest field data is missing or invalid")
    return DataCommitment(data["size"], data.get("leaves"), data.get("root"), data.get("tree", TREE), data.get("sample_encoding", SAMPLE_ENCODING))


def _class_spec(spec: Any, key: str, required: bool) -> ClassSpec | None:
    if spec is None and not required:
        return None
    if not isinstance(spec, dict) or not isinstance(spec.get("class"), str) or not isinstance(spec.get("hparams"), dict):
        raise ProofFormatError(f"manifest field {key} is missing or invalid")
    instantiator, paths = spec.get("instantiator", "hparams"), spec.get("local_paths", [])
    if instantiator not in INSTANTIATORS:
        raise ProofFormatError(f"manifest field {key}.instantiator is not one of {list(INSTANTIATORS)}")
    if not isinstance(paths, list) or not all(isinstance(p, str) and len(p) < 1000 for p in paths) or len(paths) > 1000:
        raise ProofFormatError(f"manifest field {key}.local_paths is invalid")
    return ClassSpec(spec["class"], spec["hparams"], instantiator, tuple(paths))


def _check_script(script: ScriptRecord | None, module: ClassSpec | None, datamodule: ClassSpec | None,
                  callbacks: list[ClassSpec | None]) -> None:
    """A class of the script needs the script; the ``fit`` recipe is the module's ``script`` instantiator, and back."""
    specs = [s for s in (module, datamodule, *callbacks) if s is not None]
    if script is None and any(names_script_class(s.import_path) for s in specs):
        raise ProofFormatError("the manifest names a class of the training script (__main__:...) but has no field script")
    fit = module is not None and module.instantiator == "script"
    if fit != (script is not None and script.recipe == "fit") or (fit and datamodule is not None):
        raise ProofFormatError("manifest field script.recipe fit goes with the module's instantiator script, and no datamodule")
    if any(s.instantiator == "script" for s in specs if s is not module):
        raise ProofFormatError("only the module may have the instantiator script")


def _sample_epochs(runs: Any) -> list[list[int]]:
    if not isinstance(runs, list) or not all(isinstance(r, list) and len(r) == 2 and is_int(r[0]) and is_int(r[1]) for r in runs):
        raise ProofFormatError("manifest field sample_epochs is missing or invalid")
    if any(b[0] <= a[0] or b[1] < a[1] for a, b in zip(runs, runs[1:])):
        raise ProofFormatError("manifest field sample_epochs is not in step order")
    if any(r[1] >= 2**63 for r in runs):  # seeds hash an epoch as a signed 64-bit integer
        raise ProofFormatError("manifest field sample_epochs has an epoch past 2**63")
    if runs and runs[0] != [0, 0]:  # every run starts with the first batch of epoch 0
        raise ProofFormatError("manifest field sample_epochs does not start at step 0 in epoch 0")
    return [list(r) for r in runs]


def _monitored(entries: Any) -> list[MonitoredValue]:
    """The values plateau schedulers consumed: their form here; whether the replay can feed them (a plateau
    scheduler of that index and monitor, a step of the proof) is the verifier's check."""
    if not isinstance(entries, list):
        raise ProofFormatError("manifest field monitored is invalid")
    out: list[MonitoredValue] = []
    for e in entries:
        if not isinstance(e, dict) or not {"step", "scheduler", "monitor", "value"} <= e.keys() <= {"step", "scheduler", "monitor", "value", "dtype"}:
            raise ProofFormatError("manifest field monitored has an entry without step, scheduler, monitor and value")
        if not is_int(e["step"]) or e["step"] >= 2**63 or not is_int(e["scheduler"]) or e["scheduler"] >= 2**31:
            raise ProofFormatError("manifest field monitored has an invalid step or scheduler index")
        if not isinstance(e["monitor"], str) or not 0 < len(e["monitor"]) <= 1000 or e.get("dtype", None) not in (None, *MONITORED_DTYPES):
            raise ProofFormatError("manifest field monitored has an invalid monitor or dtype")
        try:
            value = decode_state({}, {"v": e["value"]})["v"]
        except (ValueError, RecursionError):
            value = None
        if not isinstance(value, float):  # a JSON float, or a __float__ marker: the writer writes nothing else
            raise ProofFormatError("manifest field monitored has a value that is not a float")
        if out and e["step"] < out[-1].step:
            raise ProofFormatError("manifest field monitored is not in step order")
        out.append(MonitoredValue(e["step"], e["scheduler"], e["monitor"], value, e.get("dtype")))
    return out


def _check_typed_json(m: dict[str, Any], module: ClassSpec | None, datamodule: ClassSpec | None,
                      callbacks: list[ClassSpec | None]) -> None:
    """The typed JSON the replay decodes (and whose values reach the declared classes): malformed here is a
    format error, not a ValueError deep inside the replay."""
    training = m["training"]
    for key in ("steps_per_epoch", "accumulate_grad_batches", "world_size"):
        if training.get(key) is not None and not is_int(training[key], 1):
            raise ProofFormatError(f"manifest field training.{key} is invalid")
    typed = {"training": training, "module.hparams": module.hparams if module else {}, "init.params": m["init"].get("params") or {}}
    if datamodule is not None:
        typed["datamodule.hparams"] = datamodule.hparams
    for i, c in enumerate(callbacks):
        typed[f"callbacks[{i}].hparams"] = c.hparams if c is not None else {}
    for key, value in typed.items():
        try:
            decode_state({}, value)
        except (ValueError, RecursionError) as e:
            raise ProofFormatError(f"manifest field {key} is not valid typed JSON ({str(e)[:200] or type(e).__name__})") from None


def _check_training(training: dict[str, Any]) -> None:
    decoded = decode_state({}, training)
    for key in ("optimizers", "lr_schedulers"):  # the classes the verifier's gate checks, and their settings
        entries = decoded.get(key, [])
        if not isinstance(entries, list) or not all(isinstance(e, dict) and isinstance(e.get("class"), str) for e in entries):
            raise ProofFormatError(f"manifest field training.{key} is invalid")
    callbacks = decoded.get("callbacks", [])  # the callbacks training ran and the replay does not: named in the report
    if not isinstance(callbacks, list) or not all(
        isinstance(c, dict) and isinstance(c.get("class"), str) and isinstance(c.get("hooks"), list)
        and all(isinstance(h, str) for h in c["hooks"]) for c in callbacks
    ):
        raise ProofFormatError("manifest field training.callbacks is invalid")
    batches, per_epoch = decoded.get("num_training_batches"), training.get("steps_per_epoch")
    if not is_int(batches) and batches != math.inf:
        raise ProofFormatError("manifest field training.num_training_batches is invalid")
    limit = decoded.get("limit_train_batches")
    if limit is not None and not is_int(limit) and not (isinstance(limit, float) and 0.0 <= limit <= 1.0):
        raise ProofFormatError("manifest field training.limit_train_batches is invalid")  # True would read as 1
    if training.get("batch_size") is not None and not is_int(training["batch_size"], 1):
        raise ProofFormatError("manifest field training.batch_size is invalid")
    if training.get("drop_last") not in (None, True, False):
        raise ProofFormatError("manifest field training.drop_last is invalid")
    if is_int(batches) and per_epoch != -(-batches // (training.get("accumulate_grad_batches") or 1)):
        raise ProofFormatError("manifest field training.steps_per_epoch is not num_training_batches / accumulate_grad_batches")


def _check_identity(created: Any, run_id: Any) -> None:
    try:  # the pattern too: fromisoformat alone reads "02:31:13y+00:00" as a time
        if not isinstance(created, str) or not _ISO_TIME.fullmatch(created):
            raise ValueError(created)
        datetime.fromisoformat(created)
    except ValueError:
        raise ProofFormatError("manifest field created is not an ISO 8601 time") from None
    if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id):
        raise ProofFormatError("manifest field run_id is not a hex string")
