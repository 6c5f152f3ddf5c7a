"""torch.distributed set-up from the launcher's environment: torchrun (``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK``) or
SLURM's ``srun`` alone (``SLURM_PROCID`` / ``SLURM_NTASKS`` / ``SLURM_LOCALID``); a plain process runs alone.

NCCL on CUDA, gloo on the CPU. Rank 0 writes logs and checkpoints; the others compute."""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

DEFAULT_MASTER_PORT = "29500"
T = TypeVar("T")


@dataclass(frozen=True)
class DistributedContext:
    """This process's place in a torch.distributed job (rank 0 of 1 when there is none)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def first_slurm_host(nodelist: str) -> str:
    """The first host of a SLURM node list (``node[03-05,9],gpu1`` -> ``node03``).

    Hand-written because ``scontrol show hostnames`` is often missing inside containers."""
    match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if match is None:
        raise ValueError(f"cannot read the SLURM node list {nodelist!r}; set MASTER_ADDR")
    prefix, ranges = match.groups()
    if not ranges:
        return prefix
    return prefix + ranges.split(",")[0].split("-")[0]


def context_from_environment(env: Mapping[str, str] | None = None) -> DistributedContext:
    """Rank and world size from torchrun's variables, else from SLURM's (several tasks of one ``srun``)."""
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistributedContext(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)))
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:
        return DistributedContext(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0)))
    return DistributedContext()


def init_distributed(device: torch.device, timeout_s: float = 1800) -> tuple[DistributedContext, torch.device]:
    """Join the process group the environment describes (no-op for a single process); returns the context and
    this process's device (``cuda:LOCAL_RANK`` on CUDA)."""
    context = context_from_environment()
    if not context.enabled or (dist.is_available() and dist.is_initialized()):
        return context, device
    if not dist.is_available():
        raise RuntimeError("this PyTorch build has no torch.distributed; run a single process")
    if "MASTER_ADDR" not in os.environ:  # srun without torchrun: rendezvous on the job's first node
        os.environ["MASTER_ADDR"] = first_slurm_host(os.environ.get("SLURM_JOB_NODELIST", "127.0.0.1"))
    os.environ.setdefault("MASTER_PORT", DEFAULT_MASTER_PORT)
    if device.type == "cuda":
        device = torch.device("cuda", context.local_rank)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(
        backend, rank=context.rank, world_size=context.world_size, timeout=datetime.timedelta(seconds=timeout_s)
    )
    global _watch
    _watch = ErrorWatch(timeout_s)
    _watch.start()
    return context, device


PEER_REPORT_S = 5.0  # how long a rank left by another one waits for that one to report an error of its own
PEER_POLL_S = 0.5  # how often each rank looks for another rank's error report
# how long a rank that saw another's error report may still run before it ends itself: longer than rank 0, having
# reported, keeps its store up for the others (PEER_REPORT_S), whose collectives then meet its exit
PEER_EXIT_S = 2 * PEER_REPORT_S
FAILED_STATUS = 2  # the exit status of a rank ended by another rank's error (the CLI's for an error)


class ErrorWatch(threading.Thread):
    """Each rank's look-out for another rank's error: a daemon thread that looks in the store every
    :data:`PEER_POLL_S` seconds for an error reported by :func:`report_error`. A rank waiting for the failed one in a
    collective then stops on its own where the backend notices that one left (gloo, once it exits), and prints
    nothing (the failed rank printed its error); one still running :data:`PEER_EXIT_S` seconds later (NCCL does not
    notice, nor does any backend while the failed process has not exited) is ended here with exit status
    :data:`FAILED_STATUS`, instead of waiting for the process group's timeout. Its store client, made while the store
    is surely up, serves :func:`report_error` too: a new one would try to reach a store whose host (rank 0 without
    torchrun's agent) is gone for a minute."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__(name="sparse_detector-error-watch", daemon=True)
        self.store = _error_store(timeout_s)
        self.peer_reported = threading.Event()  # another rank's error was seen
        self.stopped = threading.Event()  # this process reports an error itself, or the process group is gone

    def run(self) -> None:
        while not self.stopped.wait(PEER_POLL_S):
            try:
                if not self.store.check(["reported"]):
                    continue
            except Exception:  # noqa: BLE001 - the store's host is gone: its rank's collectives say so
                return
            self.peer_reported.set()
            if not self.stopped.wait(PEER_EXIT_S):  # still running: waiting for the failed rank in a collective
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(FAILED_STATUS)
            return


_watch: ErrorWatch | None = None  # this process's, while it is in a process group


def report_error(message: str, show: Callable[[], None], peer_gone: bool = False, wait_s: float = 30.0) -> None:
    """Call ``show`` (which prints this process's error ``message``) if this process of a distributed run prints it:
    the first rank to report an error prints it, and the others with the same error stay quiet (an error every rank
    hits is printed once). None waits for another's verdict: that one may be waiting for this one in a collective,
    which only this process's exit ends. ``peer_gone``: the error is that another rank left; printed only when no
    rank reports an error of its own within :data:`PEER_REPORT_S` seconds (that one was killed). The ranks compare
    through the key-value store their process group met on (joined here when the error came before it, so that the
    ranks that did not fail are not left waiting for this one to join)."""
    context = context_from_environment()
    if not context.enabled:
        show()
        return
    joined, store = False, None
    try:
        if not dist.is_initialized():
            init_distributed(torch.device("cpu"), timeout_s=wait_s)  # gloo: only its store is used
            joined = True
        watch = _watch or ErrorWatch(wait_s)  # none where the process group was joined elsewhere
        watch.stopped.set()  # this process is stopping: the error it sees in the store may be its own
        store = watch.store
        if peer_gone:
            prints = not (watch.peer_reported.is_set() or _has_keys(store, ["reported"], PEER_REPORT_S))
        else:
            store.set("reported", "")
            prints = store.add(f"printed/{hashlib.sha256(message.encode()).hexdigest()}", 1) == 1
        store.set(f"done{context.rank}", "")
    except Exception:  # no store: say it here rather than not at all
        prints = True
    if prints:
        show()
    # rank 0 hosts the store unless torchrun's agent does (torch's env:// rule): it stays up a while for the others
    if store is not None and context.is_main and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        with contextlib.suppress(Exception):
            _has_keys(store, [f"done{rank}" for rank in range(1, context.world_size)], PEER_REPORT_S)
    if joined:
        shutdown_distributed()


def _has_keys(store: dist.Store, keys: list[str], wait_s: float) -> bool:
    """Whether all of ``keys`` are in ``store`` within ``wait_s`` seconds (polled: a ``store.wait`` that times out
    prints c10d's socket warnings)."""
    deadline = time.monotonic() + wait_s
    while not store.check(keys):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _error_store(wait_s: float) -> dist.Store:
    """A client of the store at ``MASTER_ADDR:MASTER_PORT`` (rank 0's or torchrun's agent's, which the process group
    met on), its keys under this launch attempt's own prefix (torchrun's agent keeps its store across restarts)."""
    client = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        is_master=False,
        timeout=datetime.timedelta(seconds=wait_s),
    )
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return dist.PrefixStore(f"sparse_detector/error/{attempt}/", client)


def shutdown_distributed() -> None:
    """Destroy the process group, if one was initialised, and stop its :class:`ErrorWatch`."""
    global _watch
    if _watch is not None:
        _watch.stopped.set()
        _watch = None
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    """Whether this process is one of several in an initialised process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def mean_across_ranks(values: Mapping[str, float], device: torch.device) -> dict[str, float]:
    """The mean over ranks of each value (the values themselves for one process)."""
    if not is_distributed() or not values:
        return dict(values)
    keys = sorted(values)
    tensor = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    tensor /= dist.get_world_size()
    return dict(zip(keys, tensor.tolist(), strict=True))


def gathered(value: T) -> list[T]:
    """Every rank's ``value`` (picklable), in rank order (a collective); ``[value]`` for one process."""
    if not is_distributed():
        return [value]
    values: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(values, value)
    return values


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Rank 0's buffers (batch-norm running statistics) on every rank (a collective). DDP broadcasts them before each
    training forward, after which every rank's own batch updates its copy; evaluating with those would score a
    different model on each rank than the one rank 0 saves."""
    if is_distributed():
        for buffer in module.buffers():
            dist.broadcast(buffer, 0)


def any_across_ranks(flag: bool, device: torch.device) -> bool:
    """Whether ``flag`` is set on any rank (a collective: every rank must call it at the same point)."""
    if not is_distributed():
        return flag
    tensor = torch.tensor([float(flag)], device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())


def barrier() -> None:
    """Wait for every rank (nothing in a single process)."""
    if is_distributed():
        dist.barrier()
