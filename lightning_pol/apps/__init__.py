"""The command-line apps: Hydra entry points, thin over the library.

``python -m lightning_pol.train`` (:mod:`.train`), ``verify`` (:mod:`.verify`,
with :mod:`.shards` merging a multirun), ``reproduce`` (:mod:`.reproduce`) and
``attacks`` (:mod:`.attacks`). Their configs are the repository's ``conf/`` (:func:`conf_dir`).

Exit status of every app (:func:`exit_code`): 0 success (a valid proof), 1 a
proof rejected, 2 unusable input (a wrong config, a malformed or hostile proof,
a missing dataset, a path the system refuses: one ``error:`` line on stderr),
3 a crash (a bug in lightning-pol: its traceback on stderr, never a verdict).
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from lightning_pol.errors import PoLError, one_line


def conf_dir() -> Path:
    """The directory of the apps' Hydra configs: the installed package's ``lightning_pol/conf``, else ``<repo>/conf``.

    The repository's top-level ``conf/`` is the one source of the configs. A wheel (a regular ``pip install .``)
    carries it as package data in ``lightning_pol/conf`` (pyproject.toml maps the package ``lightning_pol.conf``
    to ``conf/``), as there is no repository next to site-packages; an editable install or a plain checkout has no
    ``lightning_pol/conf`` and reads the checkout's ``conf/`` itself, so an edit there takes effect at once.
    """
    package = Path(__file__).resolve().parents[1]
    installed = package / "conf"
    return installed if installed.is_dir() else package.parent / "conf"


CONF_DIR = str(conf_dir())  # a string: hydra.main's config_path (absolute, so any working directory will do)

EXIT_VALID, EXIT_REJECTED, EXIT_BAD_INPUT, EXIT_CRASH = 0, 1, 2, 3


def exit_code(body: Callable[[], int], on_error: Callable[[str, int], None] | None = None) -> int:
    """Run an app's ``body`` (which returns 0 or 1); a bad input is exit 2 with one line, anything else exit 3 with
    its traceback. ``on_error(message, code)`` is told of either before the app exits (a multirun job's error file)."""
    from hydra.errors import InstantiationException
    from omegaconf.errors import OmegaConfBaseException

    try:
        return body()
    except InstantiationException as e:  # a config value its target refused (pol.max_pending=0): the target's reason
        message, code = one_line(e.__cause__ or e), EXIT_BAD_INPUT
        if e.__cause__ is not None and not isinstance(e.__cause__, (PoLError, OmegaConfBaseException, OSError, ImportError, TypeError, ValueError)):
            traceback.print_exception(e.__cause__)
            message, code = f"crash: {one_line(e.__cause__)}", EXIT_CRASH
    except (PoLError, OmegaConfBaseException, OSError) as e:  # OSError: a path not writable, a full disk
        message, code = one_line(e), EXIT_BAD_INPUT
    except Exception as e:  # noqa: BLE001 - a bug: never a verdict, never "bad input"
        traceback.print_exc()
        message, code = f"crash: {type(e).__name__}: {one_line(e)} (a bug in lightning-pol; the traceback is above)", EXIT_CRASH
    print(f"error: {message}", file=sys.stderr)
    if on_error is not None:
        on_error(message, code)
    return code
