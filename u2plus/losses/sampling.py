"""Reproducible pixel sampling that does not depend on the process count (Algorithm 1's draws).

Every random choice of the contrastive loss (which anchors, which negatives enter a queue, which
keys an anchor draws) is a function of a step seed and the *global* id of a pixel, so one process
with batch 2B and two with B each make the same choices.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..comm import LOCAL, Comm

__all__ = ["arrival_order", "class_counts", "gather_pixels", "hash31", "merge_keys", "pixel_keys",
           "positions_by_class", "select_lowest_per_class", "uniform_draws"]

_M31 = 0x7FFFFFFF
_KEY_MAX = torch.iinfo(torch.int64).max
# salts that separate the random streams of one step
SALT_ANCHORS, SALT_NEGATIVES, SALT_DRAWS = 0x1B873593, 0x2C1B3C6D, 0x297A2D39


def hash31(x: Tensor) -> Tensor:
    """A 31-bit integer hash of int64 tensors (xor-shift-multiply rounds; products stay below
    2**63, so nothing overflows)."""
    x = x & _M31
    for _ in range(3):
        x = (((x >> 16) ^ x) * 0x45D9F3B) & _M31
    return x


def _seed31(seed: int, salt: int) -> int:
    """:func:`hash31` of a Python int (any size), mixed with a salt."""
    x = ((seed ^ salt) ^ (seed >> 31)) & _M31  # fold the high bits of a large seed in
    for _ in range(3):
        x = (((x >> 16) ^ x) * 0x45D9F3B) & _M31
    return x


def pixel_keys(seed: int, salt: int, classes: Tensor, pixel_ids: Tensor) -> Tensor:
    """Reproducible random sort keys of ``(class, pixel)`` pairs.

    ``pixel_ids`` are *global* ids (image index in the global batch x H*W + pixel, < 2**31), so
    a pair gets the same key whichever process holds it: sampling "the k pairs of class c with
    the lowest keys" is then the same at any process count. The low 31 bits are the pixel id,
    which makes keys unique within a class.
    """
    s = _seed31(seed, salt)
    h = hash31(hash31(pixel_ids ^ s) ^ ((classes.long() * 0x9E3779B1) & _M31))
    return (h << 31) | (pixel_ids & _M31)


def uniform_draws(seed: int, salt: int, classes: Tensor, pixel_ids: Tensor, n: int) -> Tensor:
    """``[len(pixel_ids), n]`` reproducible uniforms in ``[0, 1)``, a function of (pair, j) only."""
    base = pixel_keys(seed, salt, classes, pixel_ids) >> 31
    j = torch.arange(1, n + 1, device=pixel_ids.device, dtype=torch.long)
    bits = hash31(hash31(base.unsqueeze(1) ^ ((j * 0x27D4EB2F) & _M31).unsqueeze(0)) ^ j)
    return bits.double().div(2.0 ** 31).float().clamp_max(1.0 - 2.0 ** -24)


def select_lowest_per_class(keys: Tensor, classes: Tensor, k: int | None, num_classes: int,
                            comm: Comm = LOCAL) -> Tensor:
    """Bool mask of the entries whose key is among the ``k`` lowest of their class *over all
    processes* (every entry when ``k`` is None or a class has fewer).

    Each process ranks its own entries per class; the local top-``k`` keys of every class go
    to all processes in one fixed-size all-gather ``[C, k]``, which gives each class's global
    ``k``-th key.
    """
    if k is None:
        return torch.ones_like(classes, dtype=torch.bool)
    n = keys.shape[0]
    dev = keys.device
    o1 = torch.argsort(keys)
    o2 = torch.sort(classes[o1], stable=True).indices
    order = o1[o2]
    counts = class_counts(classes, num_classes)
    starts = torch.cumsum(counts, 0) - counts
    rank_in_class = torch.empty(n, dtype=torch.long, device=dev)
    rank_in_class[order] = torch.arange(n, device=dev) - starts[classes[order]]
    keep = rank_in_class < k
    if comm.world_size == 1:
        return keep
    table = torch.full((num_classes, k), _KEY_MAX, dtype=torch.long, device=dev)
    table[classes[keep], rank_in_class[keep]] = keys[keep]
    everyone = comm.cat(table.unsqueeze(0))  # [W, C, k]
    kth = everyone.permute(1, 0, 2).reshape(num_classes, -1).sort(dim=1).values[:, k - 1]
    return keep & (keys <= kth[classes])


def positions_by_class(mask: Tensor) -> tuple[Tensor, Tensor]:
    """True positions of ``mask [B, C, H, W]`` as ``(flat index into B*H*W, class)``, sorted by
    class, then by flat index."""
    C = mask.shape[1]
    nz = mask.transpose(0, 1).reshape(C, -1).nonzero()
    return nz[:, 1], nz[:, 0]


def class_counts(classes: Tensor, C: int) -> Tensor:
    return torch.zeros(C, dtype=torch.long, device=classes.device).index_add_(
        0, classes, torch.ones_like(classes)
    )


def gather_pixels(z: Tensor, flat: Tensor) -> Tensor:
    """Rows ``[K, D]`` of the feature map ``z [B, D, H, W]`` at flat pixel indices."""
    # channels-last rows + one index_select: contiguous [K, D] rows (cheap to normalise), ~3x
    # faster on CPU than advanced indexing of [B, D, H*W] for the ~10^4 negative candidates
    return z.permute(0, 2, 3, 1).reshape(-1, z.shape[1]).index_select(0, flat)


def arrival_order(keys: Tensor, classes: Tensor) -> Tensor:
    """Permutation putting ``(key, class)`` rows in queue arrival order: by class, then by key."""
    o1 = torch.argsort(keys)
    return o1[torch.sort(classes[o1], stable=True).indices]


def merge_keys(feats: Tensor, keys: Tensor, classes: Tensor, comm: Comm) -> tuple[Tensor, Tensor, Tensor]:
    """All processes' ``(feature, key, class)`` rows in one padded all-gather (the features'
    float32 bits, the int64 keys and the classes packed into one int32 tensor)."""
    if comm.world_size == 1:
        return feats, keys, classes
    D = feats.shape[1]
    packed = torch.cat([feats.float().contiguous().view(torch.int32),
                        keys.contiguous().view(torch.int32).view(-1, 2),
                        classes.to(torch.int32).unsqueeze(1)], dim=1)
    rows = comm.cat_rows(packed)
    return (rows[:, :D].contiguous().view(torch.float32), rows[:, D:D + 2].contiguous().view(torch.int64)[:, 0],
            rows[:, D + 2].long())
