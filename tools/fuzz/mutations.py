"""Hypothesis strategies that turn the honest proof into hostile ones, one mutation class at a time.

A mutant is a whole proof directory: the honest files, changed as its class
says, and usually *re-signed* (the manifest's digest updated), because the
prover controls every file: a stale digest alone would stop most mutants at
the first check and leave the parsers behind it untested.

Each class function draws its parameters from a hypothesis ``DataObject``,
edits a :class:`Mutant` and returns a one-line description of what it did.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import pickle
import struct
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from hypothesis import strategies as st

from lightning_pol.format import layout as pf
from lightning_pol.format.checkpoint import checkpoint_bytes
from lightning_pol.format.code_identity import canonical_bytes
from lightning_pol.format.compression import compress_checkpoint
from lightning_pol.format.index_log import IndexLog
from lightning_pol.format.pretrained import tensor_digest
from lightning_pol.format.reader import ProofReader
from lightning_pol.format.safetensors_io import safetensors_bytes
from lightning_pol.format.samples import root_of
from lightning_pol.runtime.update_norms import update_norms

Draw = Any  # hypothesis.strategies.DataObject

HUGE = st.one_of(
    st.sampled_from([2**31, 2**32 + 1, 2**40, 2**53 + 1, 2**62, 2**63 - 1, 2**63, 2**64 - 1, 2**64, 10**30, 10**300]),
    st.integers(2**31, 2**70),
)
#: Values that are not what a field holds: wrong types, non-finite floats, negative and huge numbers.
BAD_VALUES = st.one_of(
    st.none(), st.booleans(), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=4),
    st.lists(st.integers(-3, 3), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.integers(-(2**70), -1), HUGE,
)
ANY_INT = st.one_of(st.integers(-3, 20), HUGE, st.integers(-(2**70), -1))
SIZES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
         "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


# -- the honest proof and the mutant being built ------------------------------------------

@dataclass
class Honest:
    """The honest proof, read once: its manifest, every listed file's bytes, its decoded checkpoints."""

    root: Path
    manifest: dict[str, Any]
    raw: dict[str, bytes]
    dirs: list[str]
    checkpoints: list[str]
    index_log: str
    leaves: str
    states: dict[str, dict[str, Any]]
    log: IndexLog
    identity: str

    @classmethod
    def load(cls, root: Path) -> Honest:
        reader = ProofReader(root)
        m = reader.manifest.to_json()  # mutants are edited as raw JSON: the format's documented way in for attacks
        raw = {rel: reader.read_file(rel) for rel in m["files"]}
        dirs = sorted({str(Path(rel).parent) for rel in raw if "/" in rel} | {d.name for d in root.iterdir() if d.is_dir()})
        states = {c.path: reader.load_checkpoint(c) for c in reader.checkpoints}
        return cls(root, copy.deepcopy(m), raw, dirs, [c["path"] for c in m["checkpoints"]], m["index_log"][0]["path"],
                   m["data"]["leaves"], states, reader.index_log(), reader.identity)


@dataclass
class Env:
    """Paths outside every mutant: ``outside`` holds copies of the honest files (link targets); nothing may
    ever appear in ``canary`` (a payload that ran would create a file there)."""

    outside: Path
    canary: Path


@dataclass
class Mutant:
    """A proof directory under construction: files by relative path, the manifest, and filesystem edits."""

    honest: Honest
    env: Env
    root: Path
    m: dict[str, Any] = field(init=False)
    files: dict[str, bytes] = field(init=False)
    manifest_raw: bytes | None = None
    post: list[Callable[[Path], None]] = field(default_factory=list)
    #: The worker puts the proof directory first on sys.path, as a verifier started from inside it would.
    on_sys_path: bool = False

    def __post_init__(self) -> None:
        self.m = copy.deepcopy(self.honest.manifest)
        self.files = dict(self.honest.raw)

    def put(self, rel: str, data: bytes, resign: bool = True) -> None:
        self.files[rel] = data
        if resign:
            self.resign(rel)

    def resign(self, rel: str) -> None:
        """List ``rel`` with its new digest, as a prover who controls every file would."""
        entry = {"sha256": pf.sha256_bytes(self.files[rel]), "bytes": len(self.files[rel])}
        files = self.m.get("files")
        if isinstance(files, dict):
            files[rel] = entry
        for c in self.m.get("checkpoints") or []:
            if isinstance(c, dict) and c.get("path") == rel:
                c["sha256"] = entry["sha256"]

    def manifest_bytes(self) -> bytes:
        if self.manifest_raw is not None:
            return self.manifest_raw
        # allow_nan: a hostile manifest may hold NaN and Infinity literals, which Python's json reads.
        return (json.dumps(self.m, indent=1, allow_nan=True, ensure_ascii=True) + "\n").encode("ascii")

    def write(self) -> None:
        self.root.mkdir(parents=True)
        for d in self.honest.dirs:
            (self.root / d).mkdir(parents=True, exist_ok=True)
        for rel, data in self.files.items():
            (self.root / rel).write_bytes(data)
        (self.root / pf.MANIFEST).write_bytes(self.manifest_bytes())
        for fn in self.post:
            fn(self.root)


# -- safetensors and state helpers ---------------------------------------------------------

def split(data: bytes) -> tuple[dict[str, Any], bytes]:
    """An honest safetensors file as (header with ``__metadata__``, body)."""
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def join(header: dict[str, Any] | bytes, body: bytes, n: int | None = None) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header, separators=(",", ":"), allow_nan=True).encode()
    return struct.pack("<Q", len(raw) if n is None else n) + raw + body


def tensors_of(header: dict[str, Any]) -> list[str]:
    return sorted(k for k in header if k != "__metadata__")


def state_tree(header: dict[str, Any]) -> Any:
    return json.loads(header["__metadata__"][pf.CHECKPOINT_STATE_KEY])


def with_state_tree(header: dict[str, Any], tree: Any) -> dict[str, Any]:
    header = dict(header)
    header["__metadata__"] = {pf.CHECKPOINT_STATE_KEY: json.dumps(tree, separators=(",", ":"), allow_nan=True)}
    return header


def index_log_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    return safetensors_bytes({k: v.contiguous() for k, v in tensors.items()})


def nested(depth: int, kind: str) -> str:
    return ("[" * depth + "]" * depth) if kind == "list" else ('{"a":' * depth + "0" + "}" * depth)


def set_path(obj: Any, path: list[Any], value: Any) -> None:
    for p in path[:-1]:
        obj = obj[p]
    obj[path[-1]] = value


def changed(d: Draw, strategy: st.SearchStrategy[Any], original: Any, label: str) -> Any:
    """A value from ``strategy`` that is not ``original`` (as JSON: ``0`` and ``false`` differ): a no-op proves nothing."""
    return d.draw(strategy.filter(lambda v: (type(v), v) != (type(original), original)), label=label)


def pick(d: Draw, options: Any, label: str) -> Any:
    return d.draw(st.sampled_from(list(options)), label=label)


def pick_tensor_file(d: Draw, mu: Mutant) -> str:
    return pick(d, [mu.honest.index_log, mu.honest.leaves, *mu.honest.checkpoints], "file")


def resign_flag(d: Draw) -> bool:
    return d.draw(st.sampled_from([True, True, True, False]), label="resign")


# -- mutation classes ----------------------------------------------------------------------

def tensor_size(d: Draw, mu: Mutant) -> str:
    """Huge declared sizes: tensor shapes, the header length, the manifest's byte counts, sparse files."""
    variant = pick(d, ["shape", "shape_and_offsets", "header_length", "declared_bytes", "sparse", "many_dims",
                       "index_values", "data_size"], "variant")
    rel = pick_tensor_file(d, mu)
    header, body = split(mu.files[rel])
    resign = resign_flag(d)
    if variant in ("shape", "shape_and_offsets"):
        name = pick(d, tensors_of(header), "tensor")
        shape = d.draw(st.lists(st.one_of(HUGE, st.integers(0, 2**16)), min_size=1, max_size=4), label="shape")
        header[name]["shape"] = shape
        if variant == "shape_and_offsets":
            numel = 1
            for s in shape:
                numel *= s
            begin = header[name]["data_offsets"][0]
            header[name]["data_offsets"] = [begin, begin + numel * SIZES[header[name]["dtype"]]]
        mu.put(rel, join(header, body), resign)
        return f"{variant}: {rel} tensor {name} shape {shape}"
    if variant == "header_length":
        n = d.draw(st.one_of(st.sampled_from([0, 1, 7, 2**32, 2**63, 2**64 - 1, (64 << 20) + 1, len(mu.files[rel]),
                                              len(mu.files[rel]) - 7]), HUGE.filter(lambda v: v < 2**64)), label="n")
        mu.put(rel, struct.pack("<Q", n) + mu.files[rel][8:], resign)
        return f"{variant}: {rel} header length field {n}"
    if variant == "declared_bytes":
        target = pick(d, [*mu.honest.raw], "listed")
        value = d.draw(HUGE, label="bytes")
        mu.m["files"][target]["bytes"] = value
        return f"{variant}: manifest says {target} has {value} bytes"
    if variant == "sparse":
        target = pick(d, [pf.MANIFEST, *mu.honest.raw], "file")
        size = pick(d, [(64 << 20) + 1, 2**28, 2**30, 2**40, 2**43], "size")
        if target != pf.MANIFEST:
            mu.m["files"][target]["bytes"] = size  # the digest is left stale: computing it would take seconds
        mu.post.append(lambda root: os.truncate(root / target, size))
        return f"{variant}: {target} extended to a sparse {size} bytes"
    if variant == "many_dims":
        name = pick(d, tensors_of(header), "tensor")
        k = d.draw(st.sampled_from([100, 1000, 20_000, 200_000]), label="dims")
        header[name]["shape"] = [1] * k + list(header[name]["shape"])
        mu.put(rel, join(header, body), resign)
        return f"{variant}: {rel} tensor {name} with {k} extra dimensions"
    if variant == "index_values":
        log = mu.honest.log.to_tensors()
        key = pick(d, sorted(log), "tensor")
        t = log[key].clone()
        pos = d.draw(st.integers(0, len(t) - 1), label="pos")
        value = changed(d, st.one_of(st.sampled_from([2**62, 2**63 - 1, -(2**63), -1]), st.integers(-(2**63), 2**63 - 1)), int(t[pos]), "value")
        t[pos] = value
        log[key] = t
        mu.put(mu.honest.index_log, index_log_bytes(log), resign)
        return f"{variant}: index log {key}[{pos}] = {value}"
    value = d.draw(HUGE, label="size")
    mu.m["data"]["size"] = value
    return f"{variant}: data.size = {value}"


def offsets(d: Draw, mu: Mutant) -> str:
    """Negative, reversed, out-of-range, overlapping, swapped and non-integer data offsets."""
    rel = pick_tensor_file(d, mu)
    header, body = split(mu.files[rel])
    names = tensors_of(header)
    name = pick(d, names, "tensor")
    begin, end = header[name]["data_offsets"]
    variant = pick(d, ["negative", "reversed", "beyond", "overlap", "swap", "non_int", "gap", "huge"], "variant")
    if variant == "negative":
        new: Any = [-d.draw(st.integers(1, 2**63), label="neg"), end]
    elif variant == "reversed":
        new = [end, begin]
    elif variant == "beyond":
        new = [begin, len(body) + d.draw(st.integers(1, 2**20), label="extra")]
    elif variant == "overlap":
        other = pick(d, [n for n in names if n != name] or names, "other")
        b0 = header[other]["data_offsets"][0] + d.draw(st.integers(0 if other != name else 1, 8), label="shift")
        new = [b0, b0 + (end - begin)]
    elif variant == "swap":
        same = [n for n in names if n != name and header[n]["data_offsets"][1] - header[n]["data_offsets"][0] == end - begin
                and body[slice(*header[n]["data_offsets"])] != body[begin:end]]
        if same:
            other = pick(d, same, "other")
            header[name]["data_offsets"], header[other]["data_offsets"] = header[other]["data_offsets"], [begin, end]
            mu.put(rel, join(header, body), resign_flag(d))
            return f"swap: {rel} tensors {name} and {other} exchange their data"
        new = [end, end]
    elif variant == "non_int":
        new = d.draw(st.one_of(st.lists(BAD_VALUES, max_size=3), BAD_VALUES,
                               st.tuples(st.floats(allow_nan=True), st.floats(allow_nan=True)).map(list)), label="offsets")
    elif variant == "gap":
        shift = d.draw(st.integers(1, 64), label="shift")
        for n in names:
            b, e = header[n]["data_offsets"]
            if b >= begin:
                header[n]["data_offsets"] = [b + shift, e + shift]
        mu.put(rel, join(header, body[:begin] + b"\0" * shift + body[begin:]), resign_flag(d))
        return f"gap: {rel} a hole of {shift} bytes before {name}"
    else:
        h = d.draw(HUGE, label="huge")
        new = [h, h + (end - begin)]
    header[name]["data_offsets"] = new
    mu.put(rel, join(header, body), resign_flag(d))
    return f"{variant}: {rel} tensor {name} offsets {new!r}"[:300]


def dtype_shape(d: Draw, mu: Mutant) -> str:
    """Wrong dtypes and shapes, in safetensors headers, in re-encoded tensors and in typed-JSON markers."""
    variant = pick(d, ["header_dtype", "same_size_dtype", "reshape", "index_log", "leaves", "model_shape", "typed_json"], "variant")
    if variant in ("header_dtype", "same_size_dtype", "reshape"):
        rel = pick_tensor_file(d, mu)
        header, body = split(mu.files[rel])
        name = pick(d, tensors_of(header), "tensor")
        entry = header[name]
        if variant == "header_dtype":
            entry["dtype"] = changed(d, st.one_of(st.sampled_from(sorted(SIZES) + ["F128", "f32", "", "U128", "C64"]), BAD_VALUES), entry["dtype"], "dtype")
        elif variant == "same_size_dtype":
            size = SIZES[entry["dtype"]]
            entry["dtype"] = pick(d, [k for k, v in SIZES.items() if v == size and k != entry["dtype"]], "dtype")
        else:
            numel = 1
            for s in entry["shape"]:
                numel *= s
            entry["shape"] = pick(d, [s for s in ([numel], [1, numel], [numel, 1], [], [1] * 3 + [numel], [0, numel]) if s != entry["shape"]], "shape")
        mu.put(rel, join(header, body), resign_flag(d))
        return f"{variant}: {rel} tensor {name} -> {entry['dtype']!r} {entry['shape']!r}"[:300]
    if variant == "index_log":
        log = mu.honest.log.to_tensors()
        key = pick(d, sorted(log), "tensor")
        how = pick(d, ["int32", "float64", "uint8", "2d", "empty", "missing", "extra", "bool"], "how")
        t = log[key]
        if how == "missing":
            del log[key]
        elif how == "extra":
            log["more"] = t.clone()
        elif how == "2d":
            log[key] = t.reshape(1, -1)
        elif how == "empty":
            log[key] = t[:0]
        else:
            log[key] = t.to(getattr(torch, how))
        mu.put(mu.honest.index_log, index_log_bytes(log), resign_flag(d))
        return f"{variant}: index log {key} {how}"
    if variant == "leaves":
        tensors = ProofReaderless.leaves(mu)
        how = pick(d, ["float32", "int8", "flat", "31", "missing", "transpose", "extra_row"], "how")
        if how == "missing":
            tensors = {"other": tensors}
        elif how == "flat":
            tensors = {pf.LEAVES_KEY: tensors.reshape(-1)}
        elif how == "31":
            tensors = {pf.LEAVES_KEY: tensors[:, :31].contiguous()}
        elif how == "transpose":
            tensors = {pf.LEAVES_KEY: tensors.t().contiguous()}
        elif how == "extra_row":
            tensors = {pf.LEAVES_KEY: torch.cat([tensors, tensors[:1]])}
        else:
            tensors = {pf.LEAVES_KEY: tensors.to(getattr(torch, how))}
        mu.put(mu.honest.leaves, safetensors_bytes(tensors), resign_flag(d))
        return f"{variant}: leaves {how}"
    rel = pick(d, mu.honest.checkpoints, "checkpoint")
    if variant == "model_shape":
        state = dict(mu.honest.states[rel])
        model = dict(state["model"])
        key = pick(d, sorted(model), "tensor")
        t = model[key]
        how = pick(d, [h for h in ["transpose", "extra", "drop", "scalar", "float64", "int64", "missing"]
                       if h != str(t.dtype)[6:] and not (h == "scalar" and t.dim() == 0)], "how")
        if how == "transpose":
            model[key] = t.reshape(-1, 1) if t.dim() < 2 else t.transpose(0, 1).contiguous()
        elif how == "extra":
            model[key] = torch.cat([t.reshape(-1), t.reshape(-1)[:1]])
        elif how == "drop":
            model[key] = t.reshape(-1)[1:]
        elif how == "scalar":
            model[key] = t.reshape(-1)[0].clone()
        elif how == "missing":
            del model[key]
        else:
            model[key] = t.to(getattr(torch, how))
        state["model"] = model
        mu.put(rel, checkpoint_bytes(state))
        return f"{variant}: {rel} model {key} {how}"
    header, body = split(mu.files[rel])
    tree = state_tree(header)
    marker = pick(d, ["ndarray_dtype", "ndarray_shape", "npscalar", "torch_dtype", "tensor_ref"], "marker")
    rng = tree["rng"]
    if marker == "ndarray_dtype":
        value = d.draw(st.one_of(st.sampled_from(["O", "V0", "V8", "(2,)f8", "(100000,100000)f8", "<U3", "M8[s]", ">f8",
                                                  "i4,O", "foo", "", "b1", "<c16", "S0", "|V1099511627776"]), BAD_VALUES), label="dtype")
        rng["numpy"]["__tuple__"][1]["dtype"] = value
    elif marker == "ndarray_shape":
        value = d.draw(st.one_of(st.lists(st.one_of(HUGE, st.integers(-3, 700)), max_size=3), BAD_VALUES), label="shape")
        rng["numpy"]["__tuple__"][1]["shape"] = value
    elif marker == "npscalar":
        value = {"__npscalar__": d.draw(st.one_of(st.sampled_from(["V8", "|V1099511627776", "V", "(100000,100000)f8", "<i4",
                                                                   "O", "M8[s]", "<m8[us]", "S", "U", "T", "p", "foo"]),
                                                   st.text(max_size=6)), label="dtype"),
                 "value": d.draw(st.one_of(HUGE, st.integers(-5, 5), st.text(max_size=3), st.lists(st.integers(0, 3), max_size=2),
                                           st.just({"__float__": "nan"})), label="value")}
        tree["optimizers"][0]["param_groups"][0]["lr"] = value
    elif marker == "torch_dtype":
        value = {"__torch_dtype__": d.draw(st.one_of(st.sampled_from(["load", "_dynamo", "_inductor", "onnx", "testing", "__class__",
                                                                      "has_cuda", "float32", "Tensor", "jit"]), st.text(max_size=6)),
                                           label="name")}
        tree["optimizers"][0]["param_groups"][0]["lr"] = value
    else:
        value = changed(d, st.one_of(st.sampled_from(["rng.torch", "rng.python.state", "model.nope", "", "__metadata__"]), BAD_VALUES),
                        rng["torch"]["__tensor__"], "ref")
        rng["torch"] = {"__tensor__": value}
    mu.put(rel, join(with_state_tree(header, tree), body))
    return f"{variant}/{marker}: {rel} {value!r}"[:300]


class ProofReaderless:
    """Honest tensors decoded once by the parent (mutations edit copies)."""

    @staticmethod
    def leaves(mu: Mutant) -> torch.Tensor:
        from safetensors.torch import load

        return load(mu.honest.raw[mu.honest.leaves])[pf.LEAVES_KEY]


def nonfinite(d: Draw, mu: Mutant) -> str:
    """NaN and Inf: in model tensors, in the state's numbers, in the manifest's numbers."""
    variant = pick(d, ["model_values", "raw_body", "state_json", "manifest_numbers"], "variant")
    value = pick(d, [float("nan"), float("inf"), float("-inf")], "value")
    if variant == "model_values":
        rel = pick(d, mu.honest.checkpoints, "checkpoint")
        state = dict(mu.honest.states[rel])
        model = dict(state["model"])
        key = pick(d, sorted(k for k, t in model.items() if t.is_floating_point()), "tensor")
        t = model[key].clone()
        if d.draw(st.booleans(), label="all"):
            t.fill_(value)
        else:
            t.reshape(-1)[d.draw(st.integers(0, t.numel() - 1), label="pos")] = value
        model[key] = t
        state["model"] = model
        mu.put(rel, checkpoint_bytes(state))
        return f"{variant}: {rel} {key} holds {value}"
    if variant == "raw_body":
        rel = pick(d, mu.honest.checkpoints, "checkpoint")
        header, body = split(mu.files[rel])
        name = pick(d, [n for n in tensors_of(header) if header[n]["dtype"] == "F32" and header[n]["shape"]], "tensor")
        b, e = header[name]["data_offsets"]
        pos = b + 4 * d.draw(st.integers(0, (e - b) // 4 - 1), label="elem")
        body = body[:pos] + struct.pack("<f", value) + body[pos + 4 :]
        mu.put(rel, join(header, body), resign_flag(d))
        return f"{variant}: {rel} {name} byte {pos - b} = {value}"
    if variant == "state_json":
        rel = pick(d, mu.honest.checkpoints, "checkpoint")
        header, body = split(mu.files[rel])
        tree = state_tree(header)
        group = tree["optimizers"][0]["param_groups"][0]
        key = pick(d, ["lr", "momentum", "weight_decay", "initial_lr"], "key")
        literal = d.draw(st.booleans(), label="literal")
        group[key] = value if literal else {"__float__": {float("inf"): "inf", float("-inf"): "-inf"}.get(value, "nan")}
        mu.put(rel, join(with_state_tree(header, tree), body))
        return f"{variant}: {rel} optimizer {key} = {value} ({'JSON literal' if literal else '__float__'})"
    paths: list[list[Any]] = [["every_n_steps"], ["seed"], ["final_step"], ["data", "size"], ["checkpoints", 1, "step"],
                              ["checkpoints", 1, "epoch"], ["files", mu.honest.index_log, "bytes"], ["index_log", 0, "steps"],
                              ["index_log", 0, "first_step"], ["sample_epochs", 0, 0], ["training", "steps_per_epoch"],
                              ["training", "max_steps"], ["training", "accumulate_grad_batches"], ["environment", "torch_threads"],
                              ["format_version"], ["training", "batch_size"], ["module", "hparams", "lr"], ["module", "hparams", "width"],
                              ["training", "gradient_clip_val"], ["init", "params", "std"]]
    path = pick(d, paths, "field")
    number = d.draw(st.one_of(st.just(value), st.sampled_from([1e999, -1e999, -0.0, 1.5, 4.0])), label="number")
    if path == ["training", "gradient_clip_val"] and number == 0.0:
        number = 0.5  # 0.0 clips nothing, as the honest null does
    set_path(mu.m, path, number)
    return f"{variant}: manifest {'.'.join(map(str, path))} = {number}"


def json_attacks(d: Draw, mu: Mutant) -> str:
    """Deeply nested, huge, non-UTF-8 and non-object JSON: the manifest, safetensors headers, checkpoint states."""
    variant = pick(d, ["manifest_nesting", "manifest_huge", "manifest_oversize", "manifest_encoding", "manifest_not_object",
                       "manifest_garbage", "header_nesting", "header_encoding", "header_huge", "state_json"], "variant")
    text = mu.manifest_bytes().decode()
    if variant == "manifest_nesting":
        depth = pick(d, [100, 990, 5_000, 100_000, 2_000_000], "depth")
        kind = pick(d, ["list", "object"], "kind")
        where = pick(d, ["whole", "training", "files", "checkpoints", "module", "sample_epochs", "data"], "where")
        if where == "whole":
            mu.manifest_raw = nested(depth, kind).encode()
        else:
            mu.m[where] = None
            mu.manifest_raw = mu.manifest_bytes().replace(f'"{where}": null'.encode(), f'"{where}": {nested(depth, kind)}'.encode())
        return f"{variant}: {where} nested {depth} deep ({kind})"
    if variant == "manifest_huge":
        size = pick(d, [1 << 20, 8 << 20, 63 << 20], "size")
        shape = pick(d, ["string", "list", "object", "empty_lists"], "shape")
        pad = {"string": '"' + "x" * size + '"', "list": "[" + "0," * (size // 2) + "0]",
               "object": "{" + ",".join(f'"k{i}":0' for i in range(size // 10)) + "}",
               "empty_lists": "[" + "[]," * (size // 3) + "[]]"}[shape]
        # Into fields that are checked: a key the format does not define would be ignored, and prove nothing.
        where = pick(d, ["checkpoints", "sample_epochs", "module.hparams.padding", "files.extra.bin", "data.root"], "where")
        set_path(mu.m, where.split(".", 1) if where.startswith("files") else where.split("."), None)
        key = "extra.bin" if where.startswith("files") else where.rsplit(".", 1)[-1]
        mu.manifest_raw = mu.manifest_bytes().replace(f'"{key}": null'.encode(), f'"{key}": {pad}'.encode(), 1)
        return f"{variant}: {where} = a {shape} of {size} bytes"
    if variant == "manifest_oversize":
        size = pick(d, [(64 << 20) + 1, 1 << 32, 1 << 40], "size")
        mu.post.append(lambda root: os.truncate(root / pf.MANIFEST, size))
        return f"{variant}: manifest.json extended to a sparse {size} bytes"
    if variant == "manifest_encoding":
        how = pick(d, ["utf-16", "utf-32", "utf-8-sig", "invalid_utf8", "latin1_path", "surrogate_key", "surrogate_path",
                       "nul", "control_char", "overlong"], "how")
        if how in ("utf-16", "utf-32", "utf-8-sig"):
            mu.manifest_raw = text.encode(how)
        elif how == "invalid_utf8":
            pos = d.draw(st.integers(0, len(text)), label="pos")
            junk = d.draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80\x80", b"\xfe\xfe"]), label="junk")
            mu.manifest_raw = text[:pos].encode() + junk + text[pos:].encode()
        elif how == "latin1_path":
            mu.manifest_raw = text.replace("batches.safetensors", "batch\u00e9s.safetensors").encode("latin-1")
        elif how == "surrogate_key":
            mu.manifest_raw = text.replace('"seed"', '"se\\ud800ed"', 1).encode()
        elif how == "surrogate_path":
            mu.manifest_raw = text.replace("batches.safetensors", "batches\\udc80.safetensors").encode()
        elif how == "nul":
            mu.manifest_raw = text.replace('"status"', '"sta\x00tus"', 1).encode()
        elif how == "control_char":
            mu.manifest_raw = text.replace('"complete"', '"comp\nlete"', 1).encode()
        else:
            mu.manifest_raw = text.replace('"format"', '"form\xc0\xe1t"', 1).encode("latin-1", "replace")
        return f"{variant}: {how}"
    if variant == "manifest_not_object":
        doc = pick(d, [b"", b"[]", b"null", b"1", b'"proof"', b"true", b"{", b"{}", b"[" + text.encode() + b"]", b"NaN"], "doc")
        mu.manifest_raw = doc
        return f"{variant}: {doc[:20]!r}"
    if variant == "manifest_garbage":
        raw = text.encode()
        pos = d.draw(st.integers(0, len(raw)), label="pos")
        junk = d.draw(st.binary(min_size=1, max_size=16), label="junk")
        mu.manifest_raw = raw[:pos] + junk if d.draw(st.booleans(), label="truncate") else raw[:pos] + junk + raw[pos:]
        if mu.manifest_raw == raw:
            mu.manifest_raw += b"x"
        return f"{variant}: at {pos} {junk!r}"
    rel = pick_tensor_file(d, mu) if variant != "state_json" else pick(d, mu.honest.checkpoints, "checkpoint")
    header, body = split(mu.files[rel])
    if variant == "header_nesting":
        depth = pick(d, [100, 129, 990, 5_000, 100_000], "depth")
        where = pick(d, ["whole", "metadata", "entry", "shape"], "where")
        raw = json.dumps(header, separators=(",", ":"))
        name = tensors_of(header)[0]
        if where == "whole":
            new = nested(depth, "list")
        elif where == "metadata":
            new = raw[:-1] + ',"__metadata__":' + nested(depth, "object") + "}"
        elif where == "entry":
            new = raw[:-1] + ',"extra":' + nested(depth, "object") + "}"
        else:
            new = raw.replace(f'"{name}":{{', f'"{name}":{{"x":{nested(depth, "list")},', 1)
        mu.put(rel, join(new.encode(), body), resign_flag(d))
        return f"{variant}: {rel} {where} nested {depth} deep"
    if variant == "header_encoding":
        raw = json.dumps(header, separators=(",", ":")).encode()
        pos = d.draw(st.integers(0, len(raw)), label="pos")
        junk = d.draw(st.sampled_from([b"\xff", b"\xc3(", b"\xed\xa0\x80", b"\x00", b"\xef\xbb\xbf"]), label="junk")
        mu.put(rel, join(raw[:pos] + junk + raw[pos:], body), resign_flag(d))
        return f"{variant}: {rel} {junk!r} at {pos}"
    if variant == "header_huge":
        # Over the reader's limit: trailing spaces under it are valid safetensors, and would change nothing.
        size = pick(d, [(64 << 20) + 8, (64 << 20) + 4096], "size")
        raw = json.dumps(header, separators=(",", ":")).encode()
        mu.put(rel, join(raw + b" " * size, body), resign_flag(d))
        return f"{variant}: {rel} header padded with {size} spaces"
    how = pick(d, ["nesting", "invalid", "not_object", "huge", "missing_key", "extra_key", "non_string", "empty_metadata"], "how")
    meta = header["__metadata__"]
    tree_text = meta[pf.CHECKPOINT_STATE_KEY]
    if how == "nesting":
        depth = pick(d, [100, 900, 990, 5_000, 100_000], "depth")
        key = pick(d, ["progress", "model", "optimizers", "rng"], "key")
        meta[pf.CHECKPOINT_STATE_KEY] = tree_text[:-1] + f',"{key}":' + nested(depth, pick(d, ["list", "object"], "kind")) + "}"
    elif how == "invalid":
        pos = d.draw(st.integers(0, len(tree_text) - 1), label="pos")  # the whole text would be no truncation
        meta[pf.CHECKPOINT_STATE_KEY] = tree_text[:pos]
    elif how == "not_object":
        meta[pf.CHECKPOINT_STATE_KEY] = pick(d, ["[]", "null", "1", '"x"', "NaN"], "doc")
    elif how == "huge":
        tree = json.loads(tree_text)
        tree["model"][next(iter(tree["model"]))] = {"__tensor__": "x" * pick(d, [1 << 20, 16 << 20], "size")}
        meta[pf.CHECKPOINT_STATE_KEY] = json.dumps(tree)
    elif how == "missing_key":
        header["__metadata__"] = {"other": tree_text}
    elif how == "extra_key":
        meta["__import__"] = "os.system('touch pwned')"
    elif how == "non_string":
        header["__metadata__"] = {pf.CHECKPOINT_STATE_KEY: json.loads(tree_text)}
    else:
        header["__metadata__"] = pick(d, [None, {}, [], "x"], "metadata")
    mu.put(rel, join(header, body))
    return f"state_json/{how}: {rel}"


def links(d: Draw, mu: Mutant) -> str:
    """Symlinks and hard links out of the proof, FIFOs and directories where files belong."""
    variant = pick(d, ["symlink_file", "symlink_dir", "symlink_manifest", "hardlink_outside", "hardlink_inside", "fifo",
                       "dir_in_place"], "variant")
    outside = mu.env.outside / "honest"
    listed = [*mu.honest.raw]
    if variant == "symlink_file":
        rel = pick(d, listed, "file")
        target = pick(d, [str(outside / rel), "/etc/passwd", "/dev/zero", str(mu.env.outside / "missing"), "../" * 6 + "etc/hostname",
                          "self"], "target")

        def link(root: Path) -> None:
            (root / rel).unlink()
            os.symlink(root / rel if target == "self" else target, root / rel)

        mu.post.append(link)
        return f"{variant}: {rel} -> {target}"
    if variant == "symlink_dir":
        sub = pick(d, [p for p in mu.honest.dirs if any(r.startswith(p + "/") for r in listed)], "dir")

        def link_dir(root: Path) -> None:
            for rel in listed:
                if rel.startswith(sub + "/"):
                    (root / rel).unlink()
            os.rmdir(root / sub)
            os.symlink(outside / sub, root / sub)

        mu.post.append(link_dir)
        return f"{variant}: {sub}/ -> {outside / sub}"
    if variant == "symlink_manifest":
        manifest = mu.env.outside / f"manifest-{id(mu)}.json"

        def link_manifest(root: Path) -> None:
            manifest.write_bytes((root / pf.MANIFEST).read_bytes())
            (root / pf.MANIFEST).unlink()
            os.symlink(manifest, root / pf.MANIFEST)

        mu.post.append(link_manifest)
        return f"{variant}: manifest.json -> outside"
    if variant in ("hardlink_outside", "hardlink_inside"):
        rel = pick(d, [pf.MANIFEST, *listed], "file")
        if variant == "hardlink_outside":
            source = outside / rel if rel != pf.MANIFEST else outside / pf.MANIFEST
        else:
            source = Path(pick(d, [r for r in listed if r != rel], "source"))

        def hardlink(root: Path) -> None:
            src = source if source.is_absolute() else root / source
            (root / rel).unlink()
            os.link(src, root / rel)

        mu.post.append(hardlink)
        return f"{variant}: {rel} is a hard link to {source}"
    rel = pick(d, [pf.MANIFEST, *listed], "file")
    if variant == "fifo":
        def fifo(root: Path) -> None:
            (root / rel).unlink()
            os.mkfifo(root / rel)

        mu.post.append(fifo)
        return f"{variant}: {rel} is a FIFO"

    def directory(root: Path) -> None:
        (root / rel).unlink()
        (root / rel).mkdir()

    mu.post.append(directory)
    return f"{variant}: {rel} is a directory"


def entries(d: Draw, mu: Mutant) -> str:
    """Duplicate and missing manifest entries, duplicate JSON keys, unsafe and misdirected paths."""
    variant = pick(d, ["drop_file_entry", "drop_checkpoint", "duplicate_checkpoint", "drop_top_key", "duplicate_json_key",
                       "index_log_entries", "listed_missing", "unsafe_path", "wrong_role", "parent"], "variant")
    m = mu.m
    if variant == "drop_file_entry":
        rel = pick(d, sorted(m["files"]), "file")
        del m["files"][rel]
        return f"{variant}: {rel}"
    if variant == "drop_checkpoint":
        i = d.draw(st.integers(0, len(m["checkpoints"]) - 1), label="i")
        del m["checkpoints"][i]
        if d.draw(st.booleans(), label="drop_file"):
            rel = mu.honest.checkpoints[i]
            del m["files"][rel]
            del mu.files[rel]
        return f"{variant}: checkpoint {i}"
    if variant == "duplicate_checkpoint":
        i, j = d.draw(st.lists(st.integers(0, len(m["checkpoints"]) - 1), min_size=2, max_size=2, unique=True), label="ij")
        how = pick(d, ["repeat", "same_path"], "how")
        if how == "repeat":
            m["checkpoints"].insert(i, copy.deepcopy(m["checkpoints"][i]))
        else:
            m["checkpoints"][j].update(path=m["checkpoints"][i]["path"], sha256=m["checkpoints"][i]["sha256"])
        return f"{variant}: {how} {i} {j}"
    if variant == "drop_top_key":
        # Not created, run_id or parent: nothing checks the first two, and a missing parent means none.
        key = pick(d, sorted(set(m) - {"created", "run_id", "parent"}), "key")
        del m[key]
        return f"{variant}: {key}"
    if variant == "duplicate_json_key":
        text = mu.manifest_bytes().decode()
        where = pick(d, ["top_first", "top_last", "files", "checkpoint", "data"], "where")
        rel = mu.honest.checkpoints[1]
        other = json.dumps({"sha256": "0" * 64, "bytes": 1})
        if where == "top_first":
            key = pick(d, ["final_step", "status", "files", "module", "every_n_steps"], "key")
            text = '{"' + key + '": ' + json.dumps({"final_step": 4, "status": "in_progress", "files": {}, "every_n_steps": 2,
                                                  "module": {"class": "subprocess:Popen", "hparams": {}}}[key]) + ", " + text[1:]
        elif where == "top_last":
            text = text.rstrip()[:-1] + ', "final_step": 8}\n'
        elif where == "files":
            text = text.replace('"files": {', '"files": {"' + rel + '": ' + other + ", ", 1)
        elif where == "checkpoint":
            text = text.replace('"step": 4,', '"step": 4, "step": 8,', 1)
        else:
            text = text.replace('"data": {', '"data": {"size": 1, ', 1)
        mu.manifest_raw = text.encode()
        return f"{variant}: {where}"
    if variant == "index_log_entries":
        how = pick(d, ["drop", "duplicate", "empty_list", "null", "split", "leaves_path"], "how")
        chunks = m["index_log"]
        if how == "drop":
            m["index_log"] = []
        elif how == "duplicate":
            chunks.append(dict(chunks[0], first_step=chunks[0]["steps"]))
        elif how == "empty_list":
            m["index_log"] = [dict(chunks[0], steps=0)]
        elif how == "null":
            m["index_log"] = None
        elif how == "split":
            m["index_log"] = [dict(chunks[0], steps=4), dict(chunks[0], first_step=4, steps=chunks[0]["steps"] - 4)]
        else:
            chunks[0]["path"] = mu.honest.leaves
        return f"{variant}: {how}"
    if variant == "parent":
        # A parent the chain check goes looking for: the honest proof (outside), odd directories, a FIFO manifest.
        path = pick(d, [str(mu.env.outside / "honest"), str(mu.env.outside / "fifo_proof"), "/", "/proc/self", "../..",
                        str(mu.root), "a\x00b", "x" * 5000, 7, None], "path")
        identity = pick(d, [mu.honest.identity, "0" * 64, 5, None], "identity")
        final = mu.honest.manifest["checkpoints"][-1]["sha256"]
        m["parent"] = {"identity": identity, "final_checkpoint_sha256": final, "path": path}
        if d.draw(st.booleans(), label="warm_start"):
            m["init"] = {"strategy": "warm_start", "params": {}}
        return f"{variant}: {str(path)[:60]!r} identity {str(identity)[:16]!r}"
    if variant == "listed_missing":
        rel = pick(d, ["checkpoints/step-000000099.safetensors", "extra.bin", "data/leaves2.safetensors"], "rel")
        m["files"][rel] = {"sha256": "0" * 64, "bytes": d.draw(st.integers(0, 100), label="bytes")}
        if d.draw(st.booleans(), label="as_checkpoint"):
            m["checkpoints"].append({"step": 12, "epoch": 0, "path": rel, "sha256": "0" * 64})
        return f"{variant}: {rel}"
    if variant == "unsafe_path":
        bad = d.draw(st.one_of(st.sampled_from(["../outside.safetensors", "/etc/passwd", "checkpoints/../../x", "a\\b", "", ".",
                                                "checkpoints/.tmp-x", "a//b", "manifest.json", "./batches.safetensors",
                                                "batch\u00e9s", "a\x00b", "x" * 5000, "checkpoints/"]),
                               st.text(max_size=12)), label="path")
        where = pick(d, ["files", "checkpoint", "index_log", "leaves"], "where")
        if where == "files":
            m["files"][bad] = {"sha256": "0" * 64, "bytes": 1}
        elif where == "checkpoint":
            m["checkpoints"][1]["path"] = bad
        elif where == "index_log":
            m["index_log"][0]["path"] = bad
        else:
            m["data"]["leaves"] = bad
        return f"{variant}: {where} {bad[:40]!r}"
    a, b = pick(d, [(mu.honest.leaves, mu.honest.checkpoints[1]), (mu.honest.index_log, mu.honest.leaves),
                    (mu.honest.checkpoints[0], mu.honest.index_log), (mu.honest.checkpoints[2], mu.honest.checkpoints[1])], "roles")
    if a == mu.honest.leaves:
        m["data"]["leaves"] = b
    elif a == mu.honest.index_log:
        m["index_log"][0]["path"] = b
    else:
        i = mu.honest.checkpoints.index(a)
        m["checkpoints"][i].update(path=b, sha256=m["files"][b]["sha256"])
    return f"{variant}: {a} role played by {b}"


def steps(d: Draw, mu: Mutant) -> str:
    """Inconsistent step numbers: checkpoint steps, final_step, k, index-log chunks, sample_epochs, states' counters."""
    variant = pick(d, ["checkpoint_step", "swap_checkpoints", "final_step", "every_n_steps", "range_bomb", "chunk",
                       "sample_epochs", "state_step", "state_counters", "manifest_epoch", "training_counts"], "variant")
    m = mu.m
    if variant == "checkpoint_step":
        i = d.draw(st.integers(0, len(m["checkpoints"]) - 1), label="i")
        value = changed(d, st.one_of(ANY_INT, BAD_VALUES), m["checkpoints"][i]["step"], "step")
        m["checkpoints"][i]["step"] = value
        return f"{variant}: checkpoint {i} step {value!r}"[:200]
    if variant == "swap_checkpoints":
        i, j = d.draw(st.lists(st.integers(0, len(m["checkpoints"]) - 1), min_size=2, max_size=2, unique=True), label="ij")
        what = pick(d, ["step", "path"], "what")
        ci, cj = m["checkpoints"][i], m["checkpoints"][j]
        if what == "step":
            ci["step"], cj["step"] = cj["step"], ci["step"]
        else:
            for k in ("path", "sha256"):
                ci[k], cj[k] = cj[k], ci[k]
        return f"{variant}: {what} of {i} and {j}"
    if variant == "final_step":
        value = changed(d, st.one_of(ANY_INT, BAD_VALUES), m["final_step"], "final")
        m["final_step"] = value
        if d.draw(st.booleans(), label="move_last"):
            m["checkpoints"][-1]["step"] = value
        return f"{variant}: {value!r}"[:200]
    if variant == "every_n_steps":
        value = changed(d, st.one_of(ANY_INT, BAD_VALUES), m["every_n_steps"], "k")
        m["every_n_steps"] = value
        return f"{variant}: {value!r}"[:200]
    if variant == "range_bomb":
        final = d.draw(st.one_of(st.sampled_from([10**7, 10**9, 10**12, 2**63 - 1, 10**30]), HUGE), label="final")
        k = d.draw(st.integers(1, 3), label="k")
        m.update(final_step=final, every_n_steps=k)
        m["checkpoints"] = [m["checkpoints"][0], dict(m["checkpoints"][-1], step=final)]
        return f"{variant}: checkpoints [0, {final}], k = {k}"
    if variant == "chunk":
        key = pick(d, ["first_step", "steps"], "key")
        value = changed(d, st.one_of(ANY_INT, BAD_VALUES), m["index_log"][0][key], "value")
        m["index_log"][0][key] = value
        return f"{variant}: {key} = {value!r}"[:200]
    if variant == "sample_epochs":
        how = pick(d, ["unsorted", "huge_epoch", "within", "huge_first", "empty", "negative", "duplicate", "bad"], "how")
        runs = m["sample_epochs"]
        if how == "unsorted":
            m["sample_epochs"] = [[5, 1], [0, 0]]
        elif how == "huge_epoch":
            runs[0][1] = d.draw(HUGE, label="epoch")
        elif how == "within":
            # A later epoch from mid-run. (Epoch 0 again would claim a resume there: that only loosens the
            # permutation check, as docs/security.md says, and changes nothing a replay can see.)
            runs.append([d.draw(st.integers(1, m["final_step"] - 1), label="first"), d.draw(st.integers(1, 3), label="epoch")])
        elif how == "huge_first":
            runs[0][0] = d.draw(HUGE, label="first")
        elif how == "empty":
            m["sample_epochs"] = []
        elif how == "negative":
            runs[0][0] = -1
        elif how == "duplicate":
            runs.append(list(runs[0]))
        else:
            m["sample_epochs"] = d.draw(BAD_VALUES, label="runs")
        return f"{variant}: {how}"
    if variant in ("state_step", "state_counters"):
        rel = pick(d, mu.honest.checkpoints, "checkpoint")
        header, body = split(mu.files[rel])
        tree = state_tree(header)
        key = "global_step" if variant == "state_step" else pick(d, ["epoch", "batch_idx"], "key")
        value = changed(d, st.one_of(ANY_INT, BAD_VALUES), tree["progress"][key], "value")
        tree["progress"][key] = value
        mu.put(rel, join(with_state_tree(header, tree), body))
        return f"{variant}: {rel} progress.{key} = {value!r}"[:200]
    if variant == "manifest_epoch":
        i = d.draw(st.integers(0, len(m["checkpoints"]) - 1), label="i")
        value = changed(d, st.one_of(ANY_INT, BAD_VALUES), m["checkpoints"][i]["epoch"], "epoch")
        m["checkpoints"][i]["epoch"] = value
        return f"{variant}: checkpoint {i} epoch {value!r}"[:200]
    # Not max_epochs or estimated_stepping_batches: this run stops at max_steps, whatever they say.
    key = pick(d, ["steps_per_epoch", "accumulate_grad_batches", "max_steps", "num_training_batches", "limit_train_batches"], "key")
    if key == "limit_train_batches":  # a limit above the batches an epoch has is no limit: not a lie
        value = changed(d, st.sampled_from([0, 1, 2, 3, 0.5, 0.1, 0.0, -1, 2.0, "x", True, [1]]), m["training"].get(key), "value")
    else:
        value = changed(d, st.one_of(ANY_INT, BAD_VALUES), m["training"].get(key), "value")
    m["training"][key] = value
    return f"{variant}: training.{key} = {value!r}"[:200]


def byte_level(d: Draw, mu: Mutant) -> str:
    """Bit flips, truncations, insertions and overwrites of the safetensors files and the index log."""
    rel = pick(d, [mu.honest.index_log, mu.honest.index_log, mu.honest.leaves, *mu.honest.checkpoints], "file")
    data = bytearray(mu.files[rel])
    (n,) = struct.unpack("<Q", bytes(data[:8]))
    op = pick(d, ["flip", "flip_header", "truncate", "append", "insert", "zero_range", "ff_range"], "op")
    resign = resign_flag(d)
    if op in ("flip", "flip_header"):
        hi = 8 + n - 1 if op == "flip_header" else len(data) - 1
        flips = d.draw(st.lists(st.tuples(st.integers(0, hi), st.integers(0, 7)), min_size=1, max_size=8), label="flips")
        for pos, bit in flips:
            data[pos] ^= 1 << bit
        if bytes(data) == mu.files[rel]:
            data[flips[0][0]] ^= 1 << flips[0][1]
        desc = f"{op} {flips[:3]}"
    elif op == "truncate":
        cut = d.draw(st.integers(0, len(data) - 1), label="cut")
        del data[cut:]
        desc = f"truncate to {cut}"
    elif op == "append":
        extra = d.draw(st.binary(min_size=1, max_size=64), label="extra")
        data += extra
        desc = f"append {len(extra)}"
    elif op == "insert":
        pos = d.draw(st.integers(0, len(data)), label="pos")
        extra = d.draw(st.binary(min_size=1, max_size=64), label="extra")
        data[pos:pos] = extra
        desc = f"insert {len(extra)} at {pos}"
    else:
        a = d.draw(st.integers(0, len(data) - 1), label="a")
        length = d.draw(st.integers(1, 256), label="len")
        fill = 0 if op == "zero_range" else 0xFF
        data[a : a + length] = bytes([fill]) * len(data[a : a + length])
        if bytes(data) == mu.files[rel]:
            data[a] ^= 1
        desc = f"{op} [{a}:{a + length}]"
    mu.put(rel, bytes(data), resign)
    return f"{op}: {rel} {desc}{' (re-signed)' if resign else ''}"


class _Payload:
    """Pickles to a call that creates ``marker``: loading it anywhere would be code execution."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"{sys.executable} -c \"open('{self.marker}', 'w')\"",))


def canary(d: Draw, mu: Mutant) -> str:
    """Attempts at code execution: pickles, torch.save archives, callables and proof-supplied modules as classes."""
    token = f"{os.getpid()}-{id(mu):x}"
    marker = mu.env.canary / f"ran-{token}"
    command = [sys.executable, "-c", f"open({str(marker)!r}, 'w')"]
    variant = pick(d, ["pickle", "torch_save", "class_popen", "class_callable", "class_in_proof", "target_keys",
                       "nested_targets", "markers", "script"], "variant")
    if variant in ("pickle", "torch_save"):
        rel = pick(d, [pf.MANIFEST, *mu.honest.raw], "file")
        if variant == "pickle":
            payload = pickle.dumps(_Payload(marker), protocol=d.draw(st.integers(0, pickle.HIGHEST_PROTOCOL), label="protocol"))
        else:
            import io

            buf = io.BytesIO()
            torch.save({"state": _Payload(marker)}, buf)
            payload = buf.getvalue()
        if rel == pf.MANIFEST:
            mu.manifest_raw = payload
        else:
            mu.put(rel, payload)
        return f"{variant}: {rel} replaced by a payload"
    if variant in ("class_popen", "class_callable", "class_in_proof"):
        where = pick(d, ["module", "datamodule", "optimizer", "scheduler", "callback"], "where")
        hparams: dict[str, Any] = {"args": command}
        if variant == "class_popen":
            cls = pick(d, ["subprocess:Popen", "subprocess.Popen:__init__", "multiprocessing:Process", "threading:Thread",
                           "code:InteractiveInterpreter"], "class")
        elif variant == "class_callable":
            cls = pick(d, ["os:system", "builtins:eval", "builtins:exec", "pickle:loads", "subprocess:run", "os:popen",
                           "builtins:__import__", "importlib:import_module", "posix:system"], "class")
            hparams = {"command": " ".join(command), "source": f"open({str(marker)!r}, 'w')", "args": command}
        else:
            name = f"fuzz_canary_{token.replace('-', '_')}"
            code = f"open({str(marker)!r}, 'w')\nclass Module:\n    pass\n"
            mu.files[f"{name}.py"] = code.encode()
            if d.draw(st.booleans(), label="listed"):
                mu.resign(f"{name}.py")
            mu.on_sys_path = True
            cls = f"{name}:Module"
        if where in ("module", "datamodule"):
            mu.m[where] = {"class": cls, "hparams": hparams}
        elif where == "callback":  # a replayed callback (the manifest's callbacks): Hydra-built or hparams
            instantiator = pick(d, ["hparams", "hydra"], "instantiator")
            mu.m["callbacks"] = [{"class": cls, "hparams": hparams, **({"instantiator": "hydra"} if instantiator == "hydra" else {})}]
        else:
            key = "optimizers" if where == "optimizer" else "lr_schedulers"
            mu.m["training"][key][0]["class"] = cls
        return f"{variant}: {where} class {cls}"
    if variant == "target_keys":
        target = {"_target_": pick(d, ["os.system", "subprocess.Popen", "builtins.eval"], "target"),
                  "_args_": [" ".join(command)], "args": command}
        where = pick(d, ["module_hparams", "datamodule_hparams", "init_params", "training", "state"], "where")
        if where == "module_hparams":
            mu.m["module"]["hparams"]["width"] = target
        elif where == "datamodule_hparams":
            mu.m["datamodule"]["hparams"] = target
        elif where == "init_params":
            mu.m["init"]["params"] = target
        elif where == "training":
            mu.m["training"]["limit_train_batches"] = target
        else:
            rel = pick(d, mu.honest.checkpoints, "checkpoint")
            header, body = split(mu.files[rel])
            tree = state_tree(header)
            tree["lr_schedulers"][0]["extra"] = target
            mu.put(rel, join(with_state_tree(header, tree), body))
        return f"{variant}: {where} {target['_target_']}"
    if variant == "nested_targets":
        return _nested_target(d, mu, marker, command, token)
    if variant == "script":
        return _script_record(d, mu, marker, command, token)
    where = pick(d, ["training", "module_hparams", "init_params", "state"], "where")
    value = pick(d, [{"__torch_dtype__": "_dynamo"}, {"__torch_dtype__": "_inductor"}, {"__torch_dtype__": "onnx"},
                     {"__ndarray__": "x", "dtype": "O", "shape": [1]}, {"__npscalar__": "O", "value": 1},
                     {"__npscalar__": "V8", "value": 2**40}, {"__npscalar__": "<i4", "value": 2**100}], "value")
    if where == "training":
        mu.m["training"]["precision"] = value
    elif where == "module_hparams":
        mu.m["module"]["hparams"]["dropout"] = value
    elif where == "init_params":
        mu.m["init"]["params"] = {"std": value}
    else:
        rel = pick(d, mu.honest.checkpoints, "checkpoint")
        header, body = split(mu.files[rel])
        tree = state_tree(header)
        tree["progress"]["epoch"] = value
        mu.put(rel, join(with_state_tree(header, tree), body))
    return f"markers: {where} {value}"


def _nested_target(d: Draw, mu: Mutant, marker: Path, command: list[str], token: str) -> str:
    """A Hydra-style or LightningCLI-style recipe whose nested target (or instantiator) would run a command."""
    style = pick(d, ["hydra", "lightning_cli"], "style")
    target = pick(d, ["subprocess.Popen", "os.system", "builtins.eval", "builtins.exec", "subprocess:Popen", "os:system",
                      "builtins:eval", "pickle.loads", "in_proof", "instantiator"], "target")
    if target == "in_proof":
        name = f"fuzz_nested_{token.replace('-', '_')}"
        mu.files[f"{name}.py"] = f"open({str(marker)!r}, 'w')\nimport torch\nclass Net(torch.nn.Module):\n    pass\n".encode()
        if d.draw(st.booleans(), label="listed"):
            mu.resign(f"{name}.py")
        mu.on_sys_path = True
        target = f"{name}.Net"
    where = pick(d, ["module", "datamodule"], "where")
    depth = d.draw(st.integers(0, 3), label="depth")
    if style == "hydra":
        node: Any = {"_target_": target, "_args_": [" ".join(command)], "args": command, "_partial_": d.draw(st.booleans())}
        for _ in range(depth):
            node = {"_target_": "torch.nn.Sequential", "_args_": [node]}
        hparams: dict[str, Any] = {"net": node}
    else:
        node = {"class_path": target, "init_args": {"args": command}}
        for _ in range(depth):
            node = {"class_path": "torch.nn.Sequential", "init_args": {"inner": node}}
        hparams = {"_instantiator": "os.system" if target == "instantiator" else "lightning.pytorch.cli.instantiate_module",
                   "net": node, "activation": target}
    mu.m[where] = {"class": mu.m[where]["class"], "hparams": hparams, "instantiator": style}
    return f"nested_targets: {style} {where} {target} at depth {depth}"


def _script_record(d: Draw, mu: Mutant, marker: Path, command: list[str], token: str) -> str:
    """A training script the proof names (issue 35): one the proof ships, one outside the project root, or recorded
    arguments that name code LightningCLI would import and call."""
    name = f"fuzz_script_{token.replace('-', '_')}.py"
    mu.files[name] = f"open({str(marker)!r}, 'w')\nimport lightning.pytorch as pl\nclass Module(pl.LightningModule):\n    pass\n".encode()
    if d.draw(st.booleans(), label="listed"):
        mu.resign(name)
    mu.on_sys_path = True
    path = pick(d, [name, f"../{name}", f"/tmp/{name}", f"{mu.env.outside.name}/{name}", "train.py", "a//b.py"], "path")
    recipe = pick(d, ["classes", "fit"], "recipe")
    argv = pick(d, [[], ["--trainer.callbacks+=subprocess.Popen"], ["builtins.exec", " ".join(command)],
                    [f"--model={{class_path: subprocess.Popen, init_args: {{args: {command!r}}}}}"]], "argv")
    mu.m["script"] = {"path": path, "module": pick(d, [None, "os", "subprocess"], "module"), "argv": argv, "recipe": recipe}
    mu.m["module"] = {"class": "__main__:Module", "hparams": {}, **({"instantiator": "script"} if recipe == "fit" else {})}
    if recipe == "fit":
        mu.m["datamodule"] = None
    return f"script: {path} recipe {recipe} argv {argv[:1]}"


def _pretrained_claim(d: Draw, mu: Mutant) -> str:
    """W_0 claimed (self-consistently, with its own digests) as a pretrained start from weights no verifier added,
    or a declaration malformed in one of its parts."""
    w0 = mu.honest.states[mu.honest.checkpoints[0]]["model"]
    keys = sorted(w0)
    claimed = {k: tensor_digest(w0[k]) for k in keys[: d.draw(st.integers(0, len(keys)), label="claimed")]}
    params: dict[str, Any] = {"root": {"sha256": d.draw(st.text("0123456789abcdef", min_size=64, max_size=64), label="root"),
                                       "file": "published.safetensors"},
                              "prefix": "", "fresh": "pytorch_default", "fresh_params": {}, "redraw": [], "tensors": claimed}
    form = pick(d, ["untrusted", "root", "tensors", "redraw", "fresh", "fresh_params", "prefix"], "form")
    if form != "untrusted":
        params[form] = pick(d, [None, 5, "x", [], {"sha256": 5}, {"a": 1}, [""], {"__tensor__": "model.x"}], "value")
    mu.m["init"] = {"strategy": "pretrained", "params": params}
    return f"pretrained: {len(claimed)} tensors claimed, {form}"


def _code_claim(d: Draw, mu: Mutant) -> str:
    """The code identity, lying in one entry and resealed (its digest recomputed): the code check must reject it."""
    code = mu.m["code"]
    path = pick(d, sorted(code["classes"]), "class")
    form = pick(d, ["sha256", "file", "drop", "distribution", "import"], "form")
    entry = code["classes"][path]
    if form == "sha256":
        entry["sha256"] = changed(d, st.text("0123456789abcdef", min_size=64, max_size=64), entry["sha256"], "sha256")
    elif form == "file":
        entry["file"] = pick(d, ["../../etc/passwd", "/etc/passwd", "x" * 900, "torch/__init__.py"], "file")
    elif form == "drop":
        del code["classes"][path]
    elif form == "distribution":  # another version of the same file: the files decide, and they match
        entry["distribution"], entry["version"] = "torch", "0.0.1"
        entry["sha256"] = "0" * 64
    else:
        code["imports"][pick(d, ["../../etc/passwd", "src/__init__.py", "lightning_pol/__init__.py"], "import")] = "f" * 64
    code["digest"] = hashlib.sha256(canonical_bytes({"classes": code["classes"], "imports": code["imports"]})).hexdigest()
    return f"code: {form} of {path}"


def semantic(d: Draw, mu: Mutant) -> str:
    """Well-formed lies, written as the real writer writes: every one must be rejected by the checks after integrity."""
    variant = pick(d, ["scale_weights", "perturb_one", "optimizer_lr", "momentum_buffer", "rng", "index_swap",
                       "index_replace", "module_hparams", "datamodule_hparams", "data_root", "leaf_change",
                       "init_strategy", "bn_stats", "monitored", "pretrained", "code"], "variant")
    m = mu.m
    if variant == "pretrained":
        return _pretrained_claim(d, mu)
    if variant == "code":
        return _code_claim(d, mu)
    if variant == "monitored":  # a value for a plateau scheduler the declared module does not configure
        step = d.draw(st.integers(1, (m.get("final_step") or 1) + 2), label="step")
        m["monitored"] = [{"step": step, "scheduler": d.draw(st.integers(0, 2), label="scheduler"),
                           "monitor": pick(d, ["val/loss", "train/loss"], "monitor"),
                           "value": d.draw(st.floats(allow_nan=False, allow_infinity=False), label="value")}]
        return f"monitored: a recorded value at step {step}"
    if variant in ("scale_weights", "perturb_one", "optimizer_lr", "momentum_buffer", "rng", "bn_stats"):
        rel = pick(d, mu.honest.checkpoints, "checkpoint")
        state = dict(mu.honest.states[rel])
        if variant in ("scale_weights", "perturb_one", "bn_stats"):
            model = dict(state["model"])
            keys = sorted(k for k, t in model.items() if t.is_floating_point() and ("running" in k) == (variant == "bn_stats"))
            key = pick(d, keys, "tensor")
            t = model[key].clone()
            if variant == "scale_weights":
                factor = d.draw(st.sampled_from([0.0, -1.0, 0.5, 1.0001, 2.0]), label="factor")
                t.mul_(factor)
                if torch.equal(t, model[key]):
                    t.add_(1.0)
            else:
                t.reshape(-1)[d.draw(st.integers(0, t.numel() - 1), label="pos")] += d.draw(st.sampled_from([1e-6, 1e-3, 1.0]), label="eps")
                if torch.equal(t, model[key]):  # lost to float32 rounding
                    t.reshape(-1)[0] += 1.0
            model[key] = t
            state["model"] = model
            desc = f"{rel} {key}"
        elif variant == "optimizer_lr":
            opt = copy.deepcopy(state["optimizers"][0])
            opt["param_groups"][0]["lr"] = changed(d, st.sampled_from([0.0, 1e-10, 0.5, 10.0]), opt["param_groups"][0]["lr"], "lr")
            state["optimizers"] = [opt]
            desc = f"{rel} lr {opt['param_groups'][0]['lr']}"
        elif variant == "momentum_buffer":
            opt = copy.deepcopy(state["optimizers"][0])
            if not opt["state"]:
                opt["param_groups"][0]["momentum"] = 0.5
                desc = f"{rel} momentum 0.5 (no buffers at this step)"
            else:
                pid = pick(d, sorted(opt["state"]), "param")
                opt["state"][pid]["momentum_buffer"] = opt["state"][pid]["momentum_buffer"] * 1.5 + 0.01
                desc = f"{rel} momentum buffer of parameter {pid}"
            state["optimizers"] = [opt]
        else:
            rng = dict(state["rng"])
            t = rng["torch"].clone()
            # Not bytes 24-31, MT19937's state[0]: its twist reads only the top bit of that word, so a flip below it is
            # the same generator (found by seed 22: byte 26 flipped, every segment still bit-exact), not a lie.
            t[d.draw(st.integers(0, 600).filter(lambda pos: not 24 <= pos < 32), label="pos")] ^= 1
            rng["torch"] = t
            state["rng"] = rng
            desc = f"{rel} torch RNG state"
        mu.put(rel, checkpoint_bytes(state))
        return f"{variant}: {desc}"
    if variant in ("index_swap", "index_replace"):
        log = mu.honest.log
        idx = log.indices.clone()
        if variant == "index_swap":
            a = d.draw(st.integers(0, log.steps - 1), label="step_a")
            b = d.draw(st.integers(0, log.steps - 1).filter(lambda s: s != a), label="step_b")
            i, j = int(log.offsets[a]), int(log.offsets[b])
            idx[i], idx[j] = idx[j].clone(), idx[i].clone()
            desc = f"sample {i} of step {a} <-> sample {j} of step {b}"
        else:
            pos = d.draw(st.integers(0, len(idx) - 1), label="pos")
            used = set(idx.tolist())
            new = d.draw(st.integers(0, m["data"]["size"] - 1).filter(lambda v: v not in used), label="index")
            idx[pos] = new
            desc = f"index {pos} -> {new}"
        mu.put(mu.honest.index_log, index_log_bytes(IndexLog(idx, log.offsets, log.batch_offsets).to_tensors()))
        return f"{variant}: {desc}"
    if variant == "module_hparams":
        key, value = pick(d, [("lr", 0.1), ("lr", 0.0501), ("momentum", 0.0), ("weight_decay", 0.0), ("dropout", 0.0),
                              ("dropout", 0.5)], "hparam")
        m["module"]["hparams"][key] = value
        return f"{variant}: {key} = {value}"
    if variant == "datamodule_hparams":
        key, value = pick(d, [("split_seed", 1), ("augment", True), ("val_fraction", 0.1)], "hparam")
        m["datamodule"]["hparams"][key] = value
        return f"{variant}: {key} = {value}"
    if variant == "data_root":
        m["data"]["root"] = d.draw(st.sampled_from(["0" * 64, "f" * 64, m["data"]["root"][::-1]]), label="root")
        return f"{variant}: {m['data']['root'][:16]}"
    if variant == "leaf_change":
        leaves = ProofReaderless.leaves(mu).clone()
        i = d.draw(st.integers(0, len(leaves) - 1), label="leaf")
        leaves[i, 0] ^= 1
        mu.put(mu.honest.leaves, safetensors_bytes({pf.LEAVES_KEY: leaves}))
        m["data"]["root"] = root_of(leaves)
        return f"{variant}: leaf {i} changed, root recomputed"
    # A normal(0, 1) draw is far from PyTorch's default, even for the width-4 CNN's small layers.
    m["init"] = {"strategy": "normal", "params": {"std": 1.0}}
    return f"{variant}: declared normal(0, 1)"


def _tiered(mu: Mutant) -> dict[str, Any]:
    """Make the mutant the tiered proof of the honest training (K = 2k: the checkpoint of step k digest-only, update
    norms on every later one), an honest proof the lies below start from; returns its digest-only entry."""
    m, h = mu.m, mu.honest
    k = m["every_n_steps"]
    m["full_every_n_steps"] = 2 * k
    for before, entry in zip(m["checkpoints"], m["checkpoints"][1:]):
        entry["norms"] = update_norms(h.states[before["path"]]["model"], h.states[entry["path"]]["model"])
    digest_only = m["checkpoints"][1]
    del m["files"][digest_only["path"]], mu.files[digest_only["path"]]
    digest_only["path"] = None
    for entry in m["checkpoints"]:  # the full states, compressed; each entry keeps the digest of the plain file
        if entry["path"] is not None:
            data = compress_checkpoint(mu.files.pop(entry["path"]))
            del m["files"][entry["path"]]
            entry["path"] += pf.COMPRESSED_SUFFIX
            mu.put(entry["path"], data, resign=False)
            m["files"][entry["path"]] = {"sha256": pf.sha256_bytes(data), "bytes": len(data)}
    return digest_only


def _compressed_lie(d: Draw, mu: Mutant) -> str:
    """A full state's compressed file replaced, listed with its own digest (the entry's digest unchanged)."""
    entry = pick(d, [c for c in mu.m["checkpoints"] if c["path"] is not None], "entry")
    good = mu.files[entry["path"]]
    form = pick(d, ["bomb", "truncated", "other_state", "plain", "garbage", "trailing", "empty"], "form")
    other = next(c["path"] for c in mu.m["checkpoints"] if c["path"] not in (None, entry["path"]))
    data = {"bomb": lambda: zlib.compress(b"\0" * (300 << 20), 9), "truncated": lambda: good[: len(good) // 2],
            "other_state": lambda: mu.files[other], "plain": lambda: mu.honest.raw[mu.honest.checkpoints[0]],
            "garbage": lambda: zlib.compress(b"\xff" * 4096), "trailing": lambda: good + b"\0",
            "empty": lambda: b""}[form]()
    mu.put(entry["path"], data, resign=False)
    mu.m["files"][entry["path"]] = {"sha256": pf.sha256_bytes(data), "bytes": len(data)}
    return f"compressed {form} at step {entry['step']}"


def tiers(d: Draw, mu: Mutant) -> str:
    """Tiered proofs (full states every K steps, digests with update norms between): a digest, a norm or the tiers
    lying, on a proof that is otherwise the honest training's tiered proof. Every one must be rejected."""
    digest_only = _tiered(mu)
    m = mu.m
    variant = pick(d, ["digest", "norm", "norm_groups", "full_due", "final_digest", "K", "stray_norms", "missing_norms",
                       "flat_with_null", "bad_norm", "forged_full", "compressed", "compressed_in_flat"], "variant")
    if variant == "digest":
        digest_only["sha256"] = changed(d, st.text("0123456789abcdef", min_size=64, max_size=64), digest_only["sha256"], "sha256")
    elif variant == "norm":
        entry = pick(d, m["checkpoints"][1:], "entry")
        group = pick(d, sorted(entry["norms"]), "group")
        entry["norms"][group] = entry["norms"][group] * d.draw(st.sampled_from([0.0, 0.5, 0.999, 1.001, 2.0]), label="factor") + 1e-9
        variant = f"norm of {group} at step {entry['step']}"
    elif variant == "norm_groups":
        entry = pick(d, m["checkpoints"][1:], "entry")
        how = pick(d, ["drop", "add", "rename"], "how")
        group = sorted(entry["norms"])[0]
        if how == "drop" and len(entry["norms"]) > 1:
            del entry["norms"][group]
        elif how == "rename":
            entry["norms"]["x" + group] = entry["norms"].pop(group)
        else:
            entry["norms"]["extra"] = 0.0
        variant = f"norm groups: {how} at step {entry['step']}"
    elif variant in ("full_due", "final_digest"):
        entry = m["checkpoints"][2 if variant == "full_due" else -1]
        del m["files"][entry["path"]], mu.files[entry["path"]]
        entry["path"] = None
    elif variant == "K":
        m["full_every_n_steps"] = pick(d, [m["every_n_steps"], 3, 0, -8, "8", 8.0, None, 2**70, True], "K")
        variant = f"K = {m['full_every_n_steps']!r}"
    elif variant == "stray_norms":
        m["checkpoints"][0]["norms"] = {"net": 1.0}
    elif variant == "missing_norms":
        del pick(d, m["checkpoints"][1:], "entry")["norms"]
    elif variant == "flat_with_null":
        del m["full_every_n_steps"]
    elif variant == "compressed":
        variant = _compressed_lie(d, mu)
    elif variant == "compressed_in_flat":  # a compressed file where a flat proof has its plain ones
        del m["full_every_n_steps"]
        m["checkpoints"][1].update(path=m["checkpoints"][2]["path"])
    elif variant == "bad_norm":
        entry = pick(d, m["checkpoints"][1:], "entry")
        entry["norms"] = pick(d, [{"net": float("nan")}, {"net": -1.0}, {"net": float("inf")}, {"": 1.0}, {}, [1.0], "1.0",
                                  {f"g{i}": 0.0 for i in range(10_001)}, {"net": True}, {"x" * 600: 1.0}], "norms")
    else:  # the full state of step 2k: the mean of W_0 and the final state, resealed
        first, forged, last = (mu.honest.states[c] for c in (mu.honest.checkpoints[0], mu.honest.checkpoints[2], mu.honest.checkpoints[-1]))
        state = dict(forged)
        state["model"] = {key: (first["model"][key] + last["model"][key]) / 2 if t.is_floating_point() else t
                          for key, t in forged["model"].items()}
        data = compress_checkpoint(checkpoint_bytes(state))
        rel = m["checkpoints"][2]["path"]
        mu.put(rel, data, resign=False)
        m["files"][rel] = {"sha256": pf.sha256_bytes(data), "bytes": len(data)}
        m["checkpoints"][2]["sha256"] = pf.sha256_bytes(checkpoint_bytes(state))
    return f"tiers: {variant}"


def _with_refs(state: dict[str, Any], refs: dict[str, Any]) -> bytes:
    """The checkpoint file of ``state`` with the tensors named in ``refs`` written as those reference objects."""
    return checkpoint_bytes(state, lambda name, tensor: refs.get(name))


def references(d: Draw, mu: Mutant) -> str:
    """Tensor references (docs/proof-format.md, "References") that lie or are malformed, in a later checkpoint's file:
    a tensor claimed unchanged that changed (the entry's digest kept, or resealed around the lie), a digest that
    nothing holds, a step that is not an earlier file, a name that file does not store, a reference to a reference,
    references in a version-2 proof, and broken reference objects. Every one must be rejected."""
    h, m = mu.honest, mu.m
    entries = [c for c in m["checkpoints"][1:] if c["path"] is not None]
    entry = pick(d, entries, "entry")
    earlier = [c for c in m["checkpoints"] if c["step"] < entry["step"] and c["path"] is not None]
    source = pick(d, earlier, "source")
    state, before = h.states[entry["path"]], h.states[source["path"]]
    changed_keys = sorted(k for k, t in state["model"].items() if t.numel() * t.element_size() >= 128 and not torch.equal(t, before["model"][k]))
    key = pick(d, changed_keys, "tensor")
    name = pf.MODEL_PREFIX + key
    digest = tensor_digest(before["model"][key])
    variant = pick(d, ["changed", "changed_resealed", "nothing_holds", "root_in_plain", "later_step", "same_step", "no_such_step",
                       "unstored_name", "ref_to_ref", "version_2", "malformed"], "variant")
    ref: Any = {"__same__": name, "step": source["step"], "sha256": digest}
    if variant == "nothing_holds":
        ref["sha256"] = changed(d, st.text("0123456789abcdef", min_size=64, max_size=64), digest, "sha256")
    elif variant == "root_in_plain":
        ref = {"__root__": digest}
    elif variant == "later_step":
        ref["step"] = m["checkpoints"][-1]["step"] if entry is not m["checkpoints"][-1] else entry["step"] + 1
    elif variant == "same_step":
        ref["step"] = entry["step"]
    elif variant == "no_such_step":
        ref["step"] = pick(d, [source["step"] + 1, 10**9, 2**70], "step")
    elif variant == "unstored_name":
        ref["__same__"] = pick(d, [name + "x", "rng.torch.0", "", "model." + "a" * 300], "name")
    elif variant == "ref_to_ref":  # the source file itself names the tensor by a reference: it stores no bytes of it
        first = m["checkpoints"][0]
        if first is not source:
            mu.put(source["path"], _with_refs(before, {name: {"__same__": name, "step": first["step"], "sha256": digest}}), resign=False)
            mu.m["files"][source["path"]] = {"sha256": pf.sha256_bytes(mu.files[source["path"]]), "bytes": len(mu.files[source["path"]])}
    elif variant == "version_2":
        m["format_version"] = 2
    elif variant == "malformed":
        ref = pick(d, [{**ref, "extra": 1}, {**ref, "step": True}, {**ref, "step": -1}, {**ref, "step": float(ref["step"])},
                       {**ref, "sha256": digest.upper()}, {**ref, "sha256": digest[:63]}, {**ref, "__same__": 5},
                       {"__same__": name, "sha256": digest}, {"__root__": digest, "step": 0}, {"__root__": None},
                       {"__root__": digest, "__same__": name, "step": 0, "sha256": digest}, {"__same__": {"__tensor__": name}, "step": 0, "sha256": digest}],
                   "ref")
    data = _with_refs(state, {name: ref})
    mu.put(entry["path"], data, resign=False)
    mu.m["files"][entry["path"]] = {"sha256": pf.sha256_bytes(data), "bytes": len(data)}
    if variant == "changed_resealed":  # the entry's digest is the state the lie resolves to: the replay must catch it
        lie = dict(state)
        lie["model"] = {**state["model"], key: before["model"][key]}
        entry["sha256"] = pf.sha256_bytes(checkpoint_bytes(lie))
    return f"references: {variant} ({name} at step {entry['step']})"


CLASSES: dict[str, Callable[[Draw, Mutant], str]] = {
    "tensor_size": tensor_size,
    "offsets": offsets,
    "dtype_shape": dtype_shape,
    "nonfinite": nonfinite,
    "json": json_attacks,
    "links": links,
    "entries": entries,
    "steps": steps,
    "bytes": byte_level,
    "canary": canary,
    "semantic": semantic,
    "tiers": tiers,
    "references": references,
}
