"""Several training processes: setup from torchrun's environment, the sampler that splits
each global batch over them, and the few collectives the engine needs.

`affcli train ... --nproc K` relaunches itself under `torch.distributed.run` (torchrun), so a
single-node run and a multi-node run started by hand with torchrun take the same path: the
environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, ...) says where a process stands.
NCCL carries the CUDA tensors when the processes own GPUs, gloo everything else (the CPU
tensors and Python objects of the collectives below, and all of it on the CPU). A process
torchrun started joins a process group even when it is the only one, so one GPU runs the path
several take (DistributedDataParallel, NCCL): what `affcli doctor --gpu` checks.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from affcli.errors import AffError

TORCHRUN_ENV = "TORCHELASTIC_RUN_ID"  # set by torchrun in every process it starts


@dataclass(frozen=True)
class Process:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    grouped: bool = False  # in a process group although alone (started by torchrun)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1 or self.grouped


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise AffError("--device", f"unknown device {name!r} (cpu, cuda, cuda:N or auto)"
                       ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise AffError("--device", "CUDA was asked for but no GPU is visible",
                           hint="use --device cpu (or auto)")
        if device.index is None:
            device = torch.device("cuda", local_rank % torch.cuda.device_count())
    return device


def setup(device: str) -> Process:
    """This process's place: from torchrun's environment when present, else a single process.
    Starts the process group when there is more than one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    launched = TORCHRUN_ENV in os.environ
    if (world > 1 or launched) and not dist.is_initialized():
        # NCCL takes CUDA tensors only: the CPU tensors and objects the engine all-reduces
        # and gathers (losses, flags, predictions) need gloo beside it
        backend = "cpu:gloo,cuda:nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend=backend)
        # processes on one machine share its cores: do not each spawn a thread per core
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
        if dev.type == "cpu":
            share = max(1, (os.cpu_count() or 1) // local_world)
            torch.set_num_threads(share)
            _limit_numba_threads(share)
    return Process(rank=rank, world=world, local_rank=local_rank, device=dev,
                   grouped=launched and dist.is_initialized())


def _limit_numba_threads(n: int) -> None:
    """At most n numba threads in this process (the CPU ops' loops), when numba allows it."""
    try:
        import numba

        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    except (ImportError, ValueError):
        pass


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(proc: Process) -> None:
    if proc.distributed:
        dist.barrier()


def mean_over_processes(proc: Process, value: float) -> float:
    """The mean of a float over all processes (every process gets it)."""
    if not proc.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t) / proc.world


def any_process(proc: Process, flag: bool) -> bool:
    """True on every process when `flag` is true on any (e.g. one of them saw Ctrl-C)."""
    if not proc.distributed:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int64)
    dist.all_reduce(t)
    return bool(t.item())


def max_over_processes(proc: Process, value: int) -> int:
    """The largest int over all processes (every process gets it)."""
    if not proc.distributed:
        return value
    t = torch.tensor([value], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def gather(proc: Process, obj: Any) -> list[Any] | None:
    """Every process's `obj`, in rank order, on rank 0 (None elsewhere)."""
    if not proc.distributed:
        return [obj]
    out: list[Any] = [None] * proc.world
    dist.all_gather_object(out, obj)
    return out if proc.main else None


def broadcast(proc: Process, obj: Any) -> Any:
    """Rank 0's `obj` on every process."""
    if not proc.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class GlobalBatchSampler(Sampler[list[int]]):
    """Batches of a global size, each split in equal consecutive parts over the processes.

    One process sees the same global batches a K-process run sees together (same order, same
    membership), which is what makes a K-process run compute the 1-process run's steps. The
    order comes from (seed, epoch) alone, so a resumed run replays it; `start` skips the
    batches an interrupted epoch had already done.
    """

    def __init__(self, n: int, batch_size: int, proc: Process, shuffle: bool, seed: int,
                 drop_last: bool) -> None:
        if batch_size % proc.world:
            raise AffError("--batch-size", f"the global batch {batch_size} does not split "
                           f"evenly over {proc.world} processes")
        self.n, self.batch_size, self.proc = n, batch_size, proc
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def _order(self) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.n)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return torch.randperm(self.n, generator=g)

    def num_batches(self) -> int:
        full, rest = divmod(self.n, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def __len__(self) -> int:
        return max(self.num_batches() - self.start, 0)

    def __iter__(self) -> Iterator[list[int]]:
        order = self._order().tolist()
        per = self.batch_size // self.proc.world
        for b in range(self.start, self.num_batches()):
            batch = order[b * self.batch_size:(b + 1) * self.batch_size]
            if len(batch) < self.batch_size:  # the last, short batch (drop_last False)
                per = -(-len(batch) // self.proc.world)
            part = batch[self.proc.rank * per:(self.proc.rank + 1) * per]
            if part:
                yield part


class ShardSampler(Sampler[list[int]]):
    """Evaluation: process r takes samples r, r + K, r + 2K, ... in batches."""

    def __init__(self, n: int, batch_size: int, proc: Process) -> None:
        self.indices = list(range(proc.rank, n, proc.world))
        self.batch_size = batch_size

    def __len__(self) -> int:
        return -(-len(self.indices) // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        for i in range(0, len(self.indices), self.batch_size):
            yield self.indices[i:i + self.batch_size]


def launch_command(nproc: int, argv: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """The command line and environment that run `affcli <argv>` in `nproc` processes under
    torchrun on this machine."""
    if nproc < 1:
        raise AffError("--nproc", f"must be at least 1, got {nproc}")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={nproc}", "-m", "affcli", *argv]
    env = dict(os.environ)
    share = str(max(1, (os.cpu_count() or 1) // nproc))
    # both thread pools: numba's CPU ops would otherwise each take every core as well
    env.setdefault("OMP_NUM_THREADS", share)
    env.setdefault("NUMBA_NUM_THREADS", share)
    return cmd, env


def launch(nproc: int, argv: Sequence[str]) -> int:
    """Run `affcli <argv>` in `nproc` processes under torchrun on this machine; returns its
    exit code."""
    cmd, env = launch_command(nproc, argv)
    return subprocess.call(cmd, env=env)
