"""Device selection and seeding."""

from __future__ import annotations

import contextlib
import random
import sys
from collections.abc import Iterator

import numpy as np
import torch

#: The device types the package runs on (``--device``, ``train.device``); torch knows more (``xpu``, ``meta``, ...).
SUPPORTED_DEVICE_TYPES = ("cpu", "cuda", "mps")


def resolve_device(name: str = "auto", setting: str = "device") -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then the CPU; other names are checked to be one of those (torch's other
    device types, ``xpu``, ``meta``, ..., are not supported) and available. Errors name ``setting``, where the user
    gave the device (``train.device``, ``--device``)."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    assign = f"{setting} " if setting.startswith("-") else f"{setting}="  # how the user writes it: --device cpu
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"{setting}: {name!r} is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type not in SUPPORTED_DEVICE_TYPES:
        raise ValueError(f"{setting}: {name!r} is not supported; use auto, cpu, cuda, cuda:N or mps")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"{setting}: {name!r} asked for, but CUDA is not available; use {assign}auto or cpu")
    if device.type == "cuda" and device.index is not None and device.index >= (count := torch.cuda.device_count()):
        raise RuntimeError(
            f"{setting}: {name!r} asked for, but this machine has {count} CUDA device(s) (cuda:0 to cuda:{count - 1}); "
            f"use {assign}cuda or cuda:N with N below {count}"
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError(f"{setting}: {name!r} asked for, but MPS is not available; use {assign}auto or cpu")
    return device


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory in MiB (the logged ``peak_memory_mb``): on CUDA the tensors allocated on ``device``, elsewhere the
    process's peak resident memory (``ru_maxrss``, in kilobytes on Linux but bytes on macOS); NaN on Windows."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource
    except ImportError:  # not on Windows
        return float("nan")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's random generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def subnormals_flushed(device: torch.device) -> Iterator[None]:
    """Subnormal floats flushed to zero on the CPU while the block runs (in gradients and Adam's states they make CPU
    arithmetic many times slower), then kept again, torch's default: the setting is process-wide, so it must not
    outlive training in a user's process."""
    if device.type != "cpu":
        yield
        return
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool) -> Iterator[None]:
    """``torch.use_deterministic_algorithms`` (and cuDNN without autotuning) while the block runs when ``enabled``,
    then the process's previous settings again: they are process-wide, so they must not outlive training in a
    user's process."""
    if not enabled:
        yield
        return
    previous = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    benchmark = torch.backends.cudnn.benchmark
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.backends.cudnn.benchmark = benchmark
