"""Distribution alignment of the teacher's probabilities (beyond the paper; ReMixMatch's rule at
pixel level).

With few labels, self-training drifts towards the classes the teacher already predicts often: a
thin or rare class (pole, sign, pedestrian, bicyclist) gets few confident pixels, so few
pseudo-labels, so the student predicts it even less. Distribution alignment rescales every pixel's
class probabilities by ``prior_labeled / prior_teacher`` and renormalises, where ``prior_labeled``
is the class frequency of labeled pixels and ``prior_teacher`` the teacher's mean probability on
unlabeled pixels (both running means): a class the teacher under-predicts against the labels is
raised everywhere before the entropy partition and the pseudo-labels are taken.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["align_distribution", "class_frequencies", "mean_probabilities"]


def align_distribution(prob: Tensor, target_prior: Tensor, current_prior: Tensor, eps: float = 1e-6) -> Tensor:
    """``normalize_c(p_c * target_c / current_c)`` for ``prob`` ``[B, C, H, W]`` (softmax over C)
    and priors ``[C]``; a class with no mass in ``current_prior`` keeps its factor at
    ``target_c / eps`` capped by renormalisation."""
    ratio = target_prior.to(prob) / current_prior.to(prob).clamp_min(eps)
    aligned = prob * ratio.view(1, -1, *([1] * (prob.dim() - 2)))
    return aligned / aligned.sum(dim=1, keepdim=True).clamp_min(eps)


def class_frequencies(labels: Tensor, num_classes: int, ignore_index: int) -> Tensor:
    """``[C]`` pixel counts of each class in ``labels`` (ignored pixels left out), float."""
    known = labels[labels != ignore_index].long()
    return torch.bincount(known, minlength=num_classes)[:num_classes].float()


def mean_probabilities(prob: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """(``[C]`` sum of ``prob`` ``[B, C, H, W]`` over the ``valid`` ``[B, H, W]`` pixels, their
    count): the parts of the mean, to be summed over processes before dividing."""
    w = valid.unsqueeze(1).to(prob)
    return (prob * w).sum(dim=(0, *range(2, prob.dim()))), w.sum()
