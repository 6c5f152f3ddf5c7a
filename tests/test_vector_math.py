"""The hand-written float64 exp and log of the CPU kernels against numpy, over their whole input range; where numba
caches the kernels."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numba
import numpy as np
import pytest

import sparse_detector
from sparse_detector.attention import vector_math


@numba.njit(fastmath={"reassoc", "contract", "nsz"}, error_model="numpy")  # as the kernels call them
def _exp(x: np.ndarray) -> np.ndarray:
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        out[i] = vector_math.exp(x[i])
    return out


@numba.njit(fastmath={"reassoc", "contract", "nsz"}, error_model="numpy")
def _log(x: np.ndarray) -> np.ndarray:
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        out[i] = vector_math.log(x[i])
    return out


def _ulps(ours: np.ndarray, reference: np.ndarray) -> float:
    return float((np.abs(ours - reference) / np.spacing(np.abs(reference))).max())


def test_exp_within_two_ulps_over_its_range() -> None:
    rng = np.random.default_rng(0)
    x = np.concatenate(
        [
            rng.uniform(vector_math.EXP_LOW, vector_math.EXP_HIGH, 200_000),
            rng.uniform(-1.0, 1.0, 100_000),
            rng.uniform(-1e-8, 1e-8, 10_000),
            np.arange(-708.0, 709.0),  # integers: k·ln 2 splits at every exponent
            [0.0, -0.0, vector_math.EXP_LOW, vector_math.EXP_HIGH],
        ]
    )
    assert _ulps(_exp(x), np.exp(x)) <= 2.0
    special = np.array([-np.inf, -1e300, -709.0, 710.0, 1e300, np.inf, np.nan])
    out = _exp(special)
    assert (out[:3] == 0.0).all()
    assert (out[3:6] == np.inf).all()
    assert np.isnan(out[6])


def test_log_within_two_ulps_over_its_range() -> None:
    rng = np.random.default_rng(1)
    x = np.concatenate(
        [
            np.exp(rng.uniform(-708.0, 709.0, 200_000)),
            rng.uniform(0.5, 2.0, 100_000),  # around 1, where log is small
            1.0 + rng.uniform(-1e-6, 1e-6, 10_000),
            [vector_math.LOG_LOW, 1.0, np.sqrt(0.5), np.sqrt(2.0), np.finfo(np.float64).max],
        ]
    )
    reference = np.log(x)
    ours = _log(x)
    assert _ulps(ours[reference != 0.0], reference[reference != 0.0]) <= 2.0
    assert ours[reference == 0.0].tolist() == [0.0] * int((reference == 0.0).sum())
    below = _log(np.array([0.0, 5e-324, 1e-310]))  # zero and subnormals give the log of the smallest normal
    assert (below == vector_math.LOG_MIN).all()


def _f32_ulps(ours: np.ndarray, reference: np.ndarray) -> float:
    """Error in float32 ulps of the float64 ``reference``."""
    return float((np.abs(ours - reference) / np.spacing(np.abs(reference).astype(np.float32))).max())


def test_float32_exp_and_log_within_two_ulps() -> None:
    rng = np.random.default_rng(2)
    x = np.concatenate(
        [rng.uniform(-87.0, 88.0, 200_000), rng.uniform(-1.0, 1.0, 100_000), np.arange(-87.0, 89.0)]
    ).astype(np.float32)
    assert _exp(x).dtype == np.float32
    assert _f32_ulps(_exp(x), np.exp(x.astype(np.float64))) <= 2.0
    special = _exp(np.array([-np.inf, -88.0, 89.0, np.inf, np.nan], dtype=np.float32))
    assert special[:2].tolist() == [0.0, 0.0] and special[2:4].tolist() == [np.inf, np.inf] and np.isnan(special[4])
    y = np.concatenate(
        [np.exp(rng.uniform(-87.0, 88.0, 200_000)), rng.uniform(0.5, 2.0, 100_000), 1.0 + rng.uniform(-1e-6, 1e-6, 100)]
    ).astype(np.float32)
    reference = np.log(y.astype(np.float64))
    ours = _log(y)
    assert ours.dtype == np.float32
    nonzero = reference != 0.0
    assert _f32_ulps(ours[nonzero], reference[nonzero]) <= 2.0
    assert (ours[~nonzero] == 0.0).all()


def test_numba_caches_in_a_temporary_folder_where_the_install_and_home_are_read_only(tmp_path: Path, monkeypatch):
    """With the package installed read-only and no writable home (a container's user), importing the attention maps
    failed: numba's 'cannot cache function '_log_or_never': no locator available for file .../entmax_cpu.py'. numba
    then caches in a folder of the temporary directory, the user's own; NUMBA_CACHE_DIR, where set, wins."""
    import numba

    from sparse_detector.attention import numba_cache

    monkeypatch.setattr(numba.config, "CACHE_DIR", "")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert numba_cache.ensure_cache_dir() is None  # numba has a place of its own here

    def no_locator(*args, **kwargs):
        raise RuntimeError("cannot cache function '_probe': no locator available for file 'numba_cache.py'")

    monkeypatch.setattr(numba, "njit", no_locator)
    folder = numba_cache.ensure_cache_dir()
    assert folder == tmp_path / f"sparse-detector-numba-{os.getuid()}" and str(folder) == numba.config.CACHE_DIR
    assert folder.stat().st_mode & 0o777 == 0o700
    folder.chmod(0o777)  # a folder anyone may write to holds no code this process loads
    monkeypatch.setattr(numba.config, "CACHE_DIR", "")
    other = numba_cache.ensure_cache_dir()
    assert other != folder and other.parent == tmp_path and str(other) == numba.config.CACHE_DIR
    monkeypatch.setattr(numba.config, "CACHE_DIR", "/chosen")
    assert numba_cache.ensure_cache_dir() is None and numba.config.CACHE_DIR == "/chosen"


@pytest.mark.skipif(
    sys.platform != "linux" or os.geteuid() != 0 or shutil.which("unshare") is None,
    reason="needs Linux, root and unshare for a read-only bind mount",
)
def test_the_attention_maps_import_from_a_read_only_install_without_a_writable_home(tmp_path: Path):
    """The same on a real read-only mount (the package's copy and the home folder), in a mount namespace of its own."""
    package = Path(sparse_detector.__file__).parent
    shutil.copytree(package, tmp_path / "site" / "sparse_detector", ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "home").mkdir()
    read_only = " && ".join(
        f"mount --bind {folder} {folder} && mount -o remount,ro,bind {folder}"
        for folder in (tmp_path / "site", tmp_path / "home")
    )
    script = "import sparse_detector.attention, numba; print(numba.config.CACHE_DIR)"
    command = f"{read_only} && cd {tmp_path / 'home'} && {shlex.quote(sys.executable)} -c {shlex.quote(script)}"
    environment = {**os.environ, "HOME": str(tmp_path / "home"), "PYTHONPATH": str(tmp_path / "site")}
    environment.pop("NUMBA_CACHE_DIR", None)
    environment.pop("XDG_CACHE_HOME", None)
    environment["TMPDIR"] = str(tmp_path)
    done = subprocess.run(["unshare", "-m", "sh", "-c", command], capture_output=True, text=True, env=environment)
    if "mount" in done.stderr and done.returncode:
        pytest.skip(f"no read-only bind mount here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(tmp_path / f"sparse-detector-numba-{os.getuid()}")
