"""Multi-process training with ``torchrun`` (PyTorch DDP): process group set-up and the few
collectives the method needs so that every hyper-parameter means the same at 1 and N processes.

Launch: ``torchrun --nproc_per_node=N -m u2plus train CONFIG ...``. The backend is chosen from
the device: NCCL for CUDA, gloo otherwise. ``data.batch_size`` and ``data.unlabeled_batch_size``
are *global* batches, split evenly over the processes.

The losses take a :class:`u2plus.comm.Comm` for the global quantities; each process returns
its share of the global-mean loss, the shares add up to the global loss, and the trainer
multiplies by ``world_size`` before ``backward`` because DDP averages gradients.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..comm import LOCAL, Comm, TorchComm

__all__ = ["DistInfo", "init_distributed", "resolve_device", "shutdown_distributed"]


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
