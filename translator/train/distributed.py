"""This process's place in a torchrun job: rank, world size, backend, and the few
collectives training needs (a barrier, and "did any rank ask to stop?")."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor

from translator.errors import TranslatorError


@dataclass
class Dist:
    """This process's place in a torchrun job (world 1 when not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str = "gloo"

    @property
    def enabled(self) -> bool:
        """Whether this is one of several processes."""
        return self.world > 1

    @property
    def collective_device(self) -> torch.device:
        """Where a tensor handed to a collective must live: nccl takes only this rank's GPU,
        gloo only the CPU. Every collective goes through `tensor`, so none gets it wrong."""
        return torch.device("cuda", self.local_rank) if self.backend == "nccl" else \
            torch.device("cpu")

    def tensor(self, values: list[float]) -> Tensor:
        """A float tensor on `collective_device`, ready for a collective."""
        return torch.tensor(values, dtype=torch.float32, device=self.collective_device)

    @property
    def main(self) -> bool:
        """Only the main process logs, validates and writes files."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait for every rank (a no-op when not distributed)."""
        if self.enabled:
            dist.barrier()

    def any(self, flag: bool) -> bool:
        """True on every rank if `flag` is true on any rank (stops are taken together)."""
        if not self.enabled:
            return flag
        t = self.tensor([1.0 if flag else 0.0])
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def shutdown(self) -> None:
        """Leave the process group together (a no-op when not distributed)."""
        if self.enabled:
            dist.barrier()
            dist.destroy_process_group()


def init_distributed(timeout_s: float) -> Dist:
    """Join the process group torchrun describes in the environment (RANK, WORLD_SIZE,
    LOCAL_RANK, MASTER_ADDR/PORT): nccl on GPUs, gloo on CPU, with a setup timeout."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local)
        try:
            dist.init_process_group(backend, rank=rank, world_size=world,
                                    timeout=timedelta(seconds=timeout_s))
        except Exception as exc:  # a timeout or refused rendezvous: say so in one line
            raise TranslatorError(f"distributed setup failed on rank {rank}: {exc}") from None
    return Dist(rank, world, local, dist.get_backend())


def launch_torchrun(nproc: int, argv: list[str]) -> int:
    """Run the `translator` command `argv` (without the program name) again under torchrun
    with `nproc` processes, leaving out its `--nproc`; returns torchrun's exit code."""
    import subprocess
    import sys

    rest: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            rest.append(arg)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", "-m", "translator", *rest]
    print(f"launching: {' '.join(cmd)}", file=sys.stderr, flush=True)
    return subprocess.call(cmd)
