"""Multi-process training with ``torchrun`` (PyTorch DDP): process group set-up and the few
collectives the method needs so that every hyper-parameter means the same at 1 and N processes.

Launch: ``torchrun --nproc_per_node=N -m u2plus train CONFIG ...``. The backend is chosen from
the device: NCCL for CUDA, gloo otherwise. ``data.batch_size`` and ``data.unlabeled_batch_size``
are *global* batches, split evenly over the processes.

The losses take a :class:`Comm` (``LOCAL`` at one process, where every collective is the
identity) and use it for the global quantities of docs/method.md: the entropy quantile gamma_t over
the global unlabeled batch, prototype sums and counts, the memory-bank keys of a step (one
padded all-gather) and the normalising counts of each loss term. Each process returns its share
of the global-mean loss (``local sum / global count``); the shares add up to the global loss,
and the trainer multiplies by ``world_size`` before ``backward`` because DDP averages gradients.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["LOCAL", "Comm", "DistInfo", "TorchComm", "init_distributed", "resolve_device", "shutdown_distributed"]


class Comm:
    """Collectives of a single process: every operation is the identity."""

    rank = 0
    world_size = 1

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """Element-wise sum over processes."""
        return t

    def cat(self, t: torch.Tensor) -> torch.Tensor:
        """Concatenate equal-shape tensors of all processes along dim 0 (rank order)."""
        return t

    def cat_rows(self, t: torch.Tensor) -> torch.Tensor:
        """Concatenate ``[n_r, ...]`` tensors whose row counts differ between processes (rank
        order): one tiny all-gather of the counts, then one all-gather of padded tensors."""
        return t

    def barrier(self) -> None:
        pass


class TorchComm(Comm):
    """Collectives over the default ``torch.distributed`` process group."""

    def __init__(self):
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        out = t.clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    def cat(self, t: torch.Tensor) -> torch.Tensor:
        t = t.contiguous()
        out = t.new_empty((self.world_size * t.shape[0],) + tuple(t.shape[1:]))
        dist.all_gather_into_tensor(out, t)
        return out

    def cat_rows(self, t: torch.Tensor) -> torch.Tensor:
        n = torch.tensor([t.shape[0]], dtype=torch.long, device=t.device)
        counts = self.cat(n).tolist()
        longest = max(counts)
        padded = t.new_zeros((longest,) + tuple(t.shape[1:]))
        padded[: t.shape[0]] = t
        gathered = self.cat(padded).view((self.world_size, longest) + tuple(t.shape[1:]))
        return torch.cat([gathered[r, :c] for r, c in enumerate(counts)])

    def barrier(self) -> None:
        dist.barrier()


LOCAL = Comm()


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when available, else CPU; otherwise the named device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def comm(self) -> Comm:
        return TorchComm() if self.enabled else LOCAL


def init_distributed(device_setting: str) -> tuple[DistInfo, torch.device]:
    """Join the process group that ``torchrun`` describes in the environment (``WORLD_SIZE``,
    ``RANK``, ``LOCAL_RANK``); a plain process gets ``DistInfo()``.

    Returns the process's device: ``cuda:LOCAL_RANK`` when the config asks for CUDA (or
    ``auto`` finds it), else CPU. The backend is NCCL on CUDA and gloo on CPU.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(device_setting)
    if world <= 1:
        return DistInfo(), device
    info = DistInfo(rank=int(os.environ["RANK"]), local_rank=int(os.environ.get("LOCAL_RANK", "0")),
                    world_size=world)
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=60), **kwargs)
    return info, device


def shutdown_distributed(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
