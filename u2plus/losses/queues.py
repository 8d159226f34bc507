"""Per-class memory banks ``Q_c`` of negative keys as fixed-size ring buffers (Sec. 3.5.1)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["ClassQueues"]


def _ring_write_plan(classes: Tensor, ptr: Tensor, size: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Where each of ``N`` keys (arrival order = row order) goes in the per-class ring buffers.

    Returns ``(cls [N], slot [N], src [N], n_new [C])``: row ``src[i]`` is written to
    ``keys[cls[i], slot[i]]``. Keys are stably sorted by class; the within-class arrival rank
    ``o`` gives slot ``(ptr[c] + o) % size``. When a slot is hit several times (more than
    ``size`` keys of a class), every write to it carries the *newest* key's row, so the result
    does not depend on the order in which a parallel device performs duplicate writes.
    """
    C = ptr.shape[0]
    n = classes.shape[0]
    dev = classes.device
    sorted_cls, order = torch.sort(classes, stable=True)
    n_new = torch.zeros(C, dtype=torch.long, device=dev).index_add_(0, classes, torch.ones_like(classes))
    starts = torch.cumsum(n_new, 0) - n_new
    offset = torch.arange(n, device=dev) - starts[sorted_cls]  # within-class arrival rank
    n_c = n_new[sorted_cls]
    # newest key sharing the slot: the largest o' = o + k*size with o' < n_c
    winner = offset + size * torch.div(n_c - 1 - offset, size, rounding_mode="floor")
    src = order[starts[sorted_cls] + winner]
    slot = (ptr[sorted_cls] + offset) % size
    return sorted_cls, slot, src, n_new


class ClassQueues(nn.Module):
    """Per-class FIFO memory banks ``Q_c`` as fixed-size ring buffers (Sec. 3.5.1).

    Buffers (saved in checkpoints): ``keys [C, size, D]``, ``ptr [C]`` (next write slot) and
    ``count [C]`` (valid entries, capped at ``size``). Entries of class ``c`` occupy slots
    ``[0, count[c])`` until the ring is full, then all slots; the oldest are overwritten.
    """

    keys: Tensor
    ptr: Tensor
    count: Tensor

    def __init__(self, num_classes: int, dim: int, size: int = 30000) -> None:
        super().__init__()
        if size <= 0:
            raise ValueError(f"queue size must be positive, got {size}")
        self.num_classes = num_classes
        self.dim = dim
        self.size = size
        self.register_buffer("keys", torch.zeros(num_classes, size, dim))
        self.register_buffer("ptr", torch.zeros(num_classes, dtype=torch.long))
        self.register_buffer("count", torch.zeros(num_classes, dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, keys: Tensor, classes: Tensor) -> None:
        """Push ``keys [N, D]`` into the queues of ``classes [N]`` (arrival order = row order).

        Vectorised, O(N): the keys are stably sorted by class; the within-class offset ``o`` of
        a key is its rank among the keys of its class; it goes to slot ``(ptr[c] + o) % size``.
        When more than ``size`` keys of one class arrive only the newest ``size`` survive:
        every key whose slot is also the target of a newer key writes that newer key's value,
        so duplicate writes are identical and the result does not depend on write order.
        """
        if keys.shape[0] == 0:
            return
        dev = self.keys.device
        keys = keys.detach().to(device=dev, dtype=self.keys.dtype)
        cls, slot, src, n_new = _ring_write_plan(classes.to(dev).long(), self.ptr, self.size)
        self.keys[cls, slot] = keys.index_select(0, src)
        self.ptr.copy_((self.ptr + n_new) % self.size)
        self.count.copy_(torch.clamp(self.count + n_new, max=self.size))

    @torch.no_grad()
    def sample(self, classes: Tensor, uniforms: Tensor) -> Tensor:
        """Keys of the queues of ``classes [A]``, one per entry of ``uniforms [A, n]`` (in
        ``[0, 1)``): entry ``u`` picks slot ``floor(u * count_c)``, i.e. uniform sampling with
        replacement among the valid entries of the class's own queue, in one gather.

        The caller guarantees ``count > 0`` for those classes (an empty queue yields zero keys).

        Returns:
            ``[A, n, D]``.
        """
        dev = self.keys.device
        classes = classes.to(dev).long()
        cnt = self.count[classes].clamp_min(1)
        idx = torch.minimum((uniforms.to(dev) * cnt.unsqueeze(1)).long(), (cnt - 1).unsqueeze(1))
        rows = (classes.unsqueeze(1) * self.size + idx).reshape(-1)  # index_select: one fast gather
        return self.keys.view(-1, self.dim).index_select(0, rows).view(idx.shape[0], idx.shape[1], self.dim)

    @torch.no_grad()
    def reset(self) -> None:
        self.keys.zero_()
        self.ptr.zero_()
        self.count.zero_()
