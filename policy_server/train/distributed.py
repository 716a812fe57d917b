"""Data-parallel training under `torchrun` (PyTorch elastic): process group, rank and device.

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; without them training is one process. Each
step every rank draws the same global batch (one seeded generator, identical on all ranks),
computes its slice, and DDP averages the gradients, so W processes take the same steps as one
process on the whole batch up to float summation order. gloo on CPU, nccl on CUDA.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

__all__ = ["World", "setup", "teardown"]


@dataclass(frozen=True)
class World:
    rank: int
    size: int
    device: str

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, batch: int) -> slice:
        """This rank's rows of a global batch of `batch` rows (contiguous, sizes differing by at most one)."""
        per, extra = divmod(batch, self.size)
        start = self.rank * per + min(self.rank, extra)
        return slice(start, start + per + (1 if self.rank < extra else 0))


def setup(device: str) -> World:
    """Join torchrun's process group when launched by it; one process otherwise."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World(0, 1, device)
    import torch.distributed as dist

    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        device = f"cuda:{local % max(1, torch.cuda.device_count())}"
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return World(dist.get_rank(), dist.get_world_size(), device)


def teardown(world: World) -> None:
    if world.size > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
