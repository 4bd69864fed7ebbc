"""Every fenced code block of README.md, docs/drop-in.md and docs/attestations.md runs, as a reader would run it.

The convention: an HTML comment on the line before a ```python, ```bash or ```yaml block (blank
lines between are allowed) says how it runs. A block without one fails
``test_every_block_says_how_it_runs``, so a new block cannot be skipped silently:

``<!-- run: SESSION -->``
    The block runs in SESSION's directory; the blocks of one session run in document order in
    one directory, so later blocks see the files and proofs of earlier ones (sessions are
    independent of each other). The first block of a session may add, after ``;``:
    ``project=NAME``: the directory starts as a copy of ``tests/projects/NAME`` (``copy_project``);
    ``link=A,B``: it holds links to these entries of the repository (``examples``), for blocks
    written to run from the repository root (the README's), which would otherwise write
    ``runs/`` and ``proof/`` into the checkout.

    - A block whose first line is ``# PATH`` (a relative path ending in .py, .yaml or .yml) is a
      file: it is written to PATH, whole. In a session copied from a project that has PATH, the
      block must be the project's file: equal to it once the path line and the lines ending in
      ``# <- added`` (the doc's additions) are removed. So the docs' YAML is what trains, and what
      the docs show of a fixture is the fixture.
    - Any other python block runs as ``python -c BLOCK`` in the directory (a Python session
      started there: the directory is on ``sys.path``).
    - A bash block runs as one ``bash -e -o pipefail`` script in the directory, with the venv's
      interpreter first on PATH (``python`` is ``sys.executable``) and no PYTHONPATH (python
      blocks too), so lightning-pol comes from the venv's install, as after the README's setup,
      and the project must be importable the way the doc says. Environment setup is the one substitution:
      in each ``&&``-chain, creating a venv (``python3.11 -m venv .venv``) and ``pip install``
      are dropped, and ``.venv/bin/python`` is that interpreter. (The README's two top commands
      are "create a venv, pip install, run": the test runs their non-setup part.)
    - Every command must exit 0.

``<!-- run by: tests/test_x.py::name[, name2] -->``
    Another test module already runs this command (with these options and possibly more): for
    each command of the block, every argument after ``python`` is among the string literals of
    those functions (a ``KEY=VALUE`` whose VALUE is a placeholder such as ``DIR`` needs a literal
    starting with ``KEY=``; ``-m lightning_pol.X`` may be ``"X"`` given to a helper). Checked here,
    not run again: the heavy runs stay in one place.

``<!-- not run: REASON -->``
    For the few that cannot run inside the suite: a GPU, a download, an install, the suite itself.

Blocks marked ```text (output) or with no language are not code and not run; any other language
fails the test. Inline code in the prose is not run. The sessions take about 1 to 2 minutes on
2 CPU cores (the README's main example, 3 epochs with a verification, is half of it).
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.projects.runner import PROJECTS, copy_project

REPO = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "docs/drop-in.md", "docs/attestations.md")
CODE = {"python", "bash", "yaml"}
KNOWN = CODE | {"", "text"}
FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w+-]*)[ \t]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.MULTILINE | re.DOTALL)
DIRECTIVE = re.compile(r"<!--\s*(run by|not run|run):\s*(.*?)\s*-->\s*$", re.DOTALL)
FILE_LINE = re.compile(r"^#\s*([\w./-]+\.(?:py|ya?ml))\s*$")
SETUP = re.compile(r"^(python3(\.\d+)?\s+-m\s+venv\b|(\S*/)?pip3?\s+install\b)")
ADDED = "# <- added"
TIMEOUT = 600


@dataclass
class Block:
    doc: str
    line: int
    lang: str
    body: str
    kind: str | None  # "run", "run by", "not run", or None (no directive)
    arg: str = ""

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"

    @property
    def path(self) -> str | None:
        """The file this block is, from its ``# PATH`` first line."""
        match = FILE_LINE.match(self.body.split("\n", 1)[0])
        return match.group(1) if match and self.lang in ("python", "yaml") else None


@dataclass
class Session:
    doc: str
    name: str
    project: str | None = None
    links: list[str] = field(default_factory=list)
    blocks: list[Block] = field(default_factory=list)

    @property
    def id(self) -> str:
        return f"{Path(self.doc).stem}:{self.name}"


def blocks(doc: str) -> list[Block]:
    text = (REPO / doc).read_text()
    found = []
    for m in FENCE.finditer(text):
        before = text[: m.start()].rstrip()
        directive = DIRECTIVE.search(before[before.rfind("\n") + 1 :])  # the last line before the fence
        body = textwrap.dedent(m.group("body")) if m.group("indent") else m.group("body")
        line = text.count("\n", 0, m.start()) + 1
        kind, arg = (directive.group(1), directive.group(2).strip()) if directive else (None, "")
        found.append(Block(doc, line, m.group("lang"), body, kind, arg))
    return found


def sessions() -> list[Session]:
    out: dict[tuple[str, str], Session] = {}
    for doc in DOCS:
        for b in blocks(doc):
            if b.kind != "run":
                continue
            name, *options = [part.strip() for part in b.arg.split(";")]
            session = out.get((doc, name))
            if session is None:
                session = out[(doc, name)] = Session(doc, name)
                for option in options:
                    key, _, value = option.partition("=")
                    if key == "project":
                        session.project = value
                    elif key == "link":
                        session.links = [v.strip() for v in value.split(",")]
                    else:
                        raise AssertionError(f"{b.where}: unknown option {option!r}")
            elif options:
                raise AssertionError(f"{b.where}: options only on the first block of session {name!r}")
            session.blocks.append(b)
    return list(out.values())


# ---------------------------------------------------------------- checks that run nothing


def all_blocks() -> list[Block]:
    return [b for doc in DOCS for b in blocks(doc)]


def test_every_block_says_how_it_runs():
    found = all_blocks()
    assert len([b for b in found if b.lang in CODE]) >= 20, "the docs lost their code blocks, or the parser its way"
    problems = []
    for b in found:
        if b.lang not in KNOWN:
            problems.append(f"{b.where}: ```{b.lang} is not one of {sorted(KNOWN)} (python, bash, yaml run; text is output)")
        elif b.lang in CODE and b.kind is None:
            problems.append(f"{b.where}: a ```{b.lang} block without <!-- run: ... -->, <!-- run by: ... --> or <!-- not run: REASON -->")
        elif b.lang not in CODE and b.kind is not None:
            problems.append(f"{b.where}: a directive on a ```{b.lang or '(plain)'} block, which is never run")
        elif b.kind == "not run" and len(b.arg) < 10:
            problems.append(f"{b.where}: <!-- not run: --> needs its reason")
        elif b.kind == "run by" and b.lang != "bash":
            problems.append(f"{b.where}: <!-- run by: --> is for commands (```bash)")
        elif b.kind == "run" and b.lang == "yaml" and b.path is None:
            problems.append(f"{b.where}: a yaml block runs as a file: its first line must be '# PATH'")
    assert not problems, "\n".join(problems)


def fixture_text(block: Block) -> str:
    """The block as the project's file would read: without its path line and the lines the doc adds."""
    lines = block.body.split("\n")[1:]
    return "\n".join(line for line in lines if not line.rstrip().endswith(ADDED))


@pytest.mark.parametrize("session", [s for s in sessions() if s.project], ids=lambda s: s.id)
def test_the_docs_show_the_fixture_projects_as_they_are(session):
    root = PROJECTS / session.project
    shown = [b for b in session.blocks if b.path and (root / b.path).exists()]
    assert shown, f"{session.id} shows none of {root}'s files"
    for b in shown:
        assert fixture_text(b).rstrip("\n") == (root / b.path).read_text().rstrip("\n"), (
            f"{b.where}: {b.path} differs from tests/projects/{session.project}/{b.path} "
            f"(beyond the path line and the lines marked '{ADDED}')"
        )


def string_literals(test_file: Path, names: list[str]) -> set[str]:
    tree = ast.parse(test_file.read_text())
    functions = {n.name: n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    missing = [n for n in names if n not in functions]
    assert not missing, f"{test_file.name} has no function {missing}"
    return {c.value for n in names for c in ast.walk(functions[n]) if isinstance(c, ast.Constant) and isinstance(c.value, str)}


def commands(body: str) -> list[list[str]]:
    """The commands of a bash block, as argument lists (line continuations joined, comments dropped)."""
    out = []
    for line in body.replace("\\\n", " ").splitlines():
        for part in line.split("&&"):
            args = shlex.split(part, comments=True)
            if args:
                out.append(args)
    return out


def uncovered(args: list[str], literals: set[str]) -> list[str]:
    """The arguments of ``python ...`` that no literal of the test covers."""
    while args and re.match(r"^\w+=", args[0]):  # leading environment assignments
        args = args[1:]
    assert args and args[0] in ("python", ".venv/bin/python"), f"not a python command: {args}"
    missing, rest = [], iter(args[1:])
    for arg in rest:
        if arg == "-m":
            module = next(rest)
            if module not in literals and module.rpartition(".")[2] not in literals:
                missing.append(f"-m {module}")
            continue
        key, eq, value = arg.partition("=")
        if eq and re.fullmatch(r"[A-Z][A-Z_]*", value):  # a placeholder: the test gives its own value
            if not any(s.startswith(f"{key}=") for s in literals):
                missing.append(arg)
        elif arg not in literals:
            missing.append(arg)
    return missing


def test_blocks_run_elsewhere_are_run_there():
    claims = [b for b in all_blocks() if b.kind == "run by"]
    assert claims
    for b in claims:
        target, _, names = b.arg.partition("::")
        literals = string_literals(REPO / target, [n.strip() for n in names.split(",")])
        for args in commands(b.body):
            missing = uncovered(args, literals)
            assert not missing, f"{b.where}: {b.arg} does not run {' '.join(args)!r}: {missing} not among its arguments"


# ---------------------------------------------------------------- running the sessions


def setup_free(body: str) -> str:
    """A bash block without its environment setup (see the module docstring)."""
    lines = []
    for line in body.splitlines():
        parts = [p.strip() for p in line.split("&&")]
        kept = [p for p in parts if not SETUP.match(p)]
        if kept:
            lines.append(" && ".join(kept).replace(".venv/bin/python", "python"))
    return "\n".join(lines) + "\n"


def environment() -> dict[str, str]:
    env = dict(os.environ)
    for name in ("PYTHONPATH", "PROJECT_ROOT"):  # a reader's shell has neither; the docs say what to set
        env.pop(name, None)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def run_block(b: Block, cwd: Path) -> None:
    if b.path:
        target = cwd / b.path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(b.body)
        return
    if b.lang == "python":
        cmd = [sys.executable, "-c", b.body]
    elif b.lang == "bash":
        cmd = ["bash", "-e", "-o", "pipefail", "-c", setup_free(b.body)]
    else:
        raise AssertionError(f"{b.where}: a ```{b.lang} block runs only as a file ('# PATH' first line)")
    done = subprocess.run(cmd, check=False, cwd=cwd, env=environment(), capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, (
        f"{b.where}: exit {done.returncode}\n--- block\n{b.body}--- stdout (end)\n{done.stdout[-3000:]}\n"
        f"--- stderr (end)\n{done.stderr[-5000:]}"
    )


@pytest.mark.parametrize("session", sessions(), ids=lambda s: s.id)
def test_the_docs_code_runs(session, tmp_path):
    if session.project is not None:
        cwd = copy_project(session.project, tmp_path)
    else:
        cwd = tmp_path / session.name
        cwd.mkdir()
    for name in session.links:
        assert (REPO / name).exists(), f"{session.id}: link={name}: no {name} in the repository"
        (cwd / name).symlink_to(REPO / name, target_is_directory=(REPO / name).is_dir())
    for b in session.blocks:
        run_block(b, cwd)
