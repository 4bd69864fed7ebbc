"""The code a proof's import paths find on this machine, hashed without running any of it.

Both sides call :func:`installed_code` on :func:`named_classes` of one manifest: the prover at fit start (what
trained), the verifier before the class gate imports anything (what would replay). A module this process has
imported is the file it was loaded from; any other is found the way the import system would find it (the
top-level package through ``sys.meta_path``, submodules through their package's ``__path__``) and read, never
executed; a re-export (``from .adam import Adam``) is followed in the source to the file that defines the class.

Code from an installed distribution (site-packages) and the standard library is identified by the class's
own file and the distribution's name and version; the project's own source tree, by every file of it that
those files import (their package ``__init__.py`` files included), found in their source. lightning-pol's
own files are the verifier's code, not the prover's: identified like an installed distribution's.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import hashlib
import importlib.machinery
import importlib.metadata
import importlib.util
import sys
import sysconfig
from collections.abc import Iterable, Iterator
from importlib.machinery import ModuleSpec
from pathlib import Path

from lightning_pol.format.code_identity import ClassSource, CodeIdentity
from lightning_pol.format.manifest import Manifest
from lightning_pol.format.script_record import names_script_class
from lightning_pol.format.state_codec import decode_state
from lightning_pol.runtime.recreation import cli_targets, hydra_targets
from lightning_pol.runtime.training_script import TrainingScript, on_sys_path

#: Most files of a project's own source tree followed through its imports (a runaway tree stops here).
MAX_IMPORTED_FILES = 2000
_REEXPORT_DEPTH = 8


def named_classes(manifest: Manifest) -> list[str]:
    """Every import path the manifest names as code the replay builds or compares: module, datamodule and the
    replayed callbacks, the targets nested in their recipes, optimizers, schedulers, dataset and samplers."""
    paths: list[str] = []
    specs = [manifest.module, *([manifest.datamodule] if manifest.datamodule else []), *manifest.callbacks]
    for spec in specs:
        paths.append(spec.import_path)
        try:
            arguments = spec.arguments()
        except (ValueError, RecursionError):  # malformed: the class gate says so
            continue
        paths += [t for _, t in hydra_targets(arguments) if isinstance(t, str)]
        paths += [t for w, t in cli_targets(arguments) if isinstance(t, str) and w.endswith("class_path")]
    try:
        training = decode_state({}, manifest.training)
    except (ValueError, RecursionError):
        training = {}
    for key in ("optimizers", "lr_schedulers"):
        entries = training.get(key)
        paths += [e["class"] for e in (entries if isinstance(entries, list) else []) if isinstance(e, dict) and isinstance(e.get("class"), str)]
    paths += [training[k] for k in ("dataset", "sampler", "batch_sampler") if isinstance(training.get(k), str)]
    return sorted(set(paths))


def installed_code(paths: Iterable[str], script: TrainingScript | None = None) -> CodeIdentity:
    """The code identity of ``paths`` (``module:QualName`` or dotted) as this machine's files give it; with the
    training ``script`` (its file, and the project files it imports) when the proof records one, every path found
    as the script finds it (its directory first on ``sys.path``)."""
    with on_sys_path(script.directory) if script is not None else contextlib.nullcontext():
        return _installed_code(paths, script)


def _installed_code(paths: Iterable[str], script: TrainingScript | None) -> CodeIdentity:
    classes: dict[str, ClassSource] = {}
    project_files: dict[str, Path] = {}
    if script is not None:
        project_files[script.record.path] = script.file
    for path in sorted(set(paths)):
        if names_script_class(path):  # the script's: its file, under its path from the project root
            classes[path] = ClassSource(script.record.path, file_digest(script.file)) if script is not None else ClassSource(None, None)
            continue
        found = _defining_module(path)
        if found is None:
            classes[path] = ClassSource(None, None)
            continue
        name, spec = found
        file = _file(spec)
        if file is None:
            classes[path] = ClassSource(None, None)
            continue
        rel = relative_file(name, spec)
        dist = _distribution(file, name)
        classes[path] = ClassSource(rel, file_digest(file), *(dist or (None, None)))
        if dist is None and is_project_file(file):
            project_files[rel] = file
            for pkg_name, pkg_spec in _packages_of(name):
                init = _file(pkg_spec)
                if init is not None and is_project_file(init):
                    project_files[relative_file(pkg_name, pkg_spec)] = init
    if script is not None and script.record.module is not None:  # python -m pkg.train ran pkg/__init__.py first
        for pkg_name, pkg_spec in _packages_of(script.record.module):
            init = _file(pkg_spec)
            if init is not None and is_project_file(init):
                project_files[relative_file(pkg_name, pkg_spec)] = init
    imports = _project_closure(project_files, script)
    class_files = {s.file for s in classes.values()}
    return CodeIdentity(classes, {rel: sha for rel, sha in imports.items() if rel not in class_files})


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def relative_file(name: str, spec: ModuleSpec) -> str:
    """The file of module ``name`` relative to its import root: ``src/models/mnist_module.py``."""
    parts = name.split(".")
    base = Path(str(spec.origin)).name
    return "/".join((parts if spec.submodule_search_locations is not None else parts[:-1]) + [base])


# ---------------------------------------------------------------- finding modules without importing them


def find_module(name: str) -> ModuleSpec | None:
    """The spec of module ``name``: the one it was loaded with, when this process has imported it (the code that
    runs), else the one the import system would use, found without executing anything of it or its parents."""
    loaded = sys.modules.get(name)
    spec = getattr(loaded, "__spec__", None) if loaded is not None else None
    if isinstance(spec, ModuleSpec) and _file(spec) is not None:
        return spec
    parts = name.split(".")
    try:
        spec = importlib.util.find_spec(parts[0])  # a top-level name: finders only, nothing runs
    except (ImportError, ValueError, AttributeError):
        return None
    for i in range(1, len(parts)):
        if spec is None or spec.submodule_search_locations is None:
            return None
        try:
            spec = importlib.machinery.PathFinder.find_spec(".".join(parts[: i + 1]), list(spec.submodule_search_locations))
        except (ImportError, ValueError):
            return None
    return spec


def _defining_module(path: str) -> tuple[str, ModuleSpec] | None:
    """The module whose file defines what ``path`` names, following re-exports in the source."""
    if path.startswith("__main__"):  # a script's: found through the manifest's script, not an import path
        return None
    if ":" in path:
        module, _, qualname = path.partition(":")
        spec = find_module(module)
    else:  # dotted (Hydra, jsonargparse): the longest prefix that is a module
        parts = path.split(".")
        for i in range(len(parts) - 1, 0, -1):
            module, qualname = ".".join(parts[:i]), ".".join(parts[i:])
            spec = find_module(module)
            if spec is not None:
                break
        else:
            return None
    if spec is None:
        return None
    name = qualname.split(".")[0]
    for _ in range(_REEXPORT_DEPTH):
        source = _source(spec)
        origin = _reexported_from(source, module, spec, name) if source is not None else None
        if origin is None:
            break
        target = find_module(origin[0])
        if target is None:
            break
        module, spec, name = origin[0], target, origin[1]
    return module, spec


def _reexported_from(source: ast.Module, module: str, spec: ModuleSpec, name: str) -> tuple[str, str] | None:
    """``(module, name)`` a top-level ``from X import Y as name`` binds ``name`` to, unless the module defines it itself."""
    origin = None
    for node in source.body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
            return None
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if (alias.asname or alias.name) == name:
                    base = _absolute(node, module, spec)
                    if base is not None:
                        # ``from pkg import sub`` where sub is a module names the module, not a re-export
                        origin = None if find_module(f"{base}.{alias.name}") is not None else (base, alias.name)
    return origin


def _absolute(node: ast.ImportFrom, module: str, spec: ModuleSpec) -> str | None:
    if not node.level:
        return node.module
    package = module if spec.submodule_search_locations is not None else module.rpartition(".")[0]
    parts = package.split(".") if package else []
    if node.level - 1 > len(parts):
        return None
    base = parts[: len(parts) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else [])) or None


def _packages_of(name: str) -> Iterator[tuple[str, ModuleSpec]]:
    """The packages importing ``name`` runs the ``__init__`` of: ``a`` and ``a.b`` for ``a.b.c``."""
    parts = name.split(".")
    for i in range(1, len(parts)):
        spec = find_module(".".join(parts[:i]))
        if spec is not None:
            yield ".".join(parts[:i]), spec


def _file(spec: ModuleSpec) -> Path | None:
    if not spec.has_location or spec.origin in (None, "built-in", "frozen"):
        return None
    path = Path(str(spec.origin))
    return path if path.is_file() else None


def _source(spec: ModuleSpec) -> ast.Module | None:
    file = _file(spec)
    if file is None or file.suffix != ".py":
        return None
    try:
        return ast.parse(file.read_bytes(), str(file))
    except (SyntaxError, ValueError, OSError):
        return None


# ---------------------------------------------------------------- whose code a file is


@functools.lru_cache(maxsize=1)
def _installed_roots() -> tuple[Path, ...]:
    paths = sysconfig.get_paths()
    roots = {paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths}
    try:
        import site

        roots.update(site.getsitepackages())
        roots.add(site.getusersitepackages())
    except AttributeError:  # a virtualenv's old site module
        pass
    return tuple(Path(r).resolve() for r in roots if r)


@functools.lru_cache(maxsize=1)
def _own_root() -> Path:
    return Path(__file__).resolve().parents[1]  # lightning_pol/


def is_project_file(file: Path) -> bool:
    """A file of the project's own source tree: not installed, not the standard library, not lightning-pol."""
    resolved = file.resolve()
    return not any(resolved.is_relative_to(r) for r in (*_installed_roots(), _own_root()))


@functools.lru_cache(maxsize=1)
def _top_level_distributions() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


@functools.lru_cache(maxsize=None)
def _distribution_of(top: str) -> str | None:
    """The distribution that installs the top-level package ``top``.

    ``packages_distributions()`` reads the file list of every installed distribution (0.7 s at a fit's start in a
    fresh process here). Most packages ship as a distribution of their own name (``torch``, ``lightning``): that
    one is asked first, and taken if its ``top_level.txt`` or file list has ``top``; the full scan is the fallback.
    """
    try:
        dist = importlib.metadata.distribution(top)
    except (importlib.metadata.PackageNotFoundError, ValueError):
        dist = None
    if dist is not None:
        listed = dist.read_text("top_level.txt")
        if listed is not None and top in listed.split():
            return dist.metadata["Name"]
        record = "\n" + (dist.read_text("RECORD") or "")
        if f"\n{top}/" in record or f"\n{top}.py," in record:  # its files (a package, or a one-file module)
            return dist.metadata["Name"]
    names = _top_level_distributions().get(top) or []
    return names[0] if names else None


def _distribution(file: Path, module: str) -> tuple[str, str] | None:
    """The distribution (name, version) an installed file comes from; None for a source tree."""
    resolved = file.resolve()
    if resolved.is_relative_to(_own_root()):
        return "lightning-pol", _version("lightning-pol")
    if not any(resolved.is_relative_to(r) for r in _installed_roots()):
        return None
    stdlib = Path(sysconfig.get_paths()["stdlib"]).resolve()
    if resolved.is_relative_to(stdlib) and "site-packages" not in resolved.parts and "dist-packages" not in resolved.parts:
        return "python", ".".join(map(str, sys.version_info[:3]))
    name = _distribution_of(module.split(".")[0])
    return (name, _version(name)) if name else ("unknown", "unknown")


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


# ---------------------------------------------------------------- the project's files, through their imports


def _project_closure(start: dict[str, Path], script: TrainingScript | None) -> dict[str, str]:
    """``start`` and every project file their source imports, transitively: file -> SHA-256."""
    seen: dict[str, Path] = dict(start)
    queue = list(start.items())
    while queue and len(seen) < MAX_IMPORTED_FILES:
        rel, file = queue.pop()
        if script is not None and rel == script.record.path:  # found by its path, named as it ran
            name = script.record.module or file.stem
            spec = importlib.util.spec_from_file_location(name, file)
        else:
            name = _module_name(rel)
            spec = find_module(name) if name else None
        source = _source(spec) if spec is not None else None
        if source is None:
            continue
        for imported in _imported_modules(source, name, spec):  # type: ignore[arg-type]
            for mod in [*(_prefixes(imported))]:
                mspec = find_module(mod)
                mfile = _file(mspec) if mspec is not None else None
                if mspec is None or mfile is None or not is_project_file(mfile):
                    continue
                mrel = relative_file(mod, mspec)
                if mrel not in seen:
                    seen[mrel] = mfile
                    queue.append((mrel, mfile))
    return {rel: file_digest(file) for rel, file in sorted(seen.items())}


def _module_name(rel: str) -> str:
    parts = rel.split("/")
    last = parts[-1].split(".")[0]
    return ".".join(parts[:-1] if last == "__init__" else parts[:-1] + [last])


def _prefixes(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def _imported_modules(source: ast.Module, module: str, spec: ModuleSpec) -> Iterator[str]:
    """Every module an ``import`` anywhere in ``source`` may load (``from pkg import name``: ``pkg.name`` too)."""
    for node in ast.walk(source):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, module, spec)
            if base is None:
                continue
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names if alias.name != "*")


def unidentified(identity: CodeIdentity) -> list[str]:
    """The named classes no file defines (a script's, a built-in): the code check cannot cover them."""
    return [path for path, source in sorted(identity.classes.items()) if source.file is None]
