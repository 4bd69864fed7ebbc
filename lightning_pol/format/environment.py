"""The software and hardware a proof records, and a verifier compares with its own before expecting exact replay."""

from __future__ import annotations

import functools
import os
import platform
import sys
from typing import Any

import lightning
import numpy as np
import safetensors
import torch


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.lru_cache(maxsize=1)
def _installed() -> dict[str, Any]:
    """What cannot change while the process runs, read once (never mutated: callers copy it).

    The CUDA and cuDNN queries and /proc/cpuinfo cost milliseconds, at every fit of a sweep.
    """
    cuda = torch.cuda.is_available()
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "numpy": np.__version__,
        "safetensors": safetensors.__version__,
        "cuda": torch.version.cuda,
        "cudnn": _cudnn_version(cuda),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "gpus": tuple(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())) if cuda else (),
    }


def _cudnn_version(cuda: bool) -> int | None:
    """cuDNN's version as ``torch.backends.cudnn.version()`` gives it. Asking for it loads the library (53 MB of
    memory, on a machine with no GPU too): without a GPU, which cannot use it, the version torch was built with."""
    if not torch.backends.cudnn.is_available():
        return None
    if cuda:
        return torch.backends.cudnn.version()
    try:
        major, minor, patch = torch._C._cudnn.getCompileVersion()
    except (AttributeError, RuntimeError, TypeError, ValueError):
        return None
    return major * 10000 + minor * 100 + patch if major >= 9 else major * 1000 + minor * 100 + patch


def environment() -> dict[str, Any]:
    """Software and hardware that bear on bit-exact replay."""
    installed = _installed()
    return {
        **{k: v for k, v in installed.items() if k != "gpus"},
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "gpus": list(installed["gpus"]),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cudnn_deterministic": bool(torch.backends.cudnn.deterministic),
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "byteorder": sys.byteorder,
    }
