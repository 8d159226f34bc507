"""Collectives for global quantities: the ground floor every layer may use.

Losses, the criterion and the methods take a :class:`Comm` (``LOCAL`` at one process, where every
collective is the identity) for the global quantities of the method: the entropy quantile
gamma_t over the global unlabeled batch, prototype sums and counts, the memory-bank keys of a
step (one padded all-gather) and the normalising counts of each loss term. Each process returns
its share of the global-mean loss (``local sum / global count``). :mod:`u2plus.engine.distributed`
sets up the process group and hands out a :class:`TorchComm`.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = ["LOCAL", "Comm", "TorchComm"]


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
