"""What every training method shares: the student, the supervised loss and the step context.

A method is an ``nn.Module`` holding all of its trainable and stateful parts (student, teacher,
criterion with its prototypes and queues), so one ``state_dict`` checkpoints all of them. It
declares what the engine needs to know, and the engine knows nothing else of it: its data
``streams`` (``labeled`` alone, ``labeled`` + ``unlabeled``, or ``source`` + ``target``), the
``supervision`` its training images carry (``pixels`` or image-level ``tags``), its optimiser
:meth:`param_groups` and the ``progress_fields`` of the progress bar. The engine calls
``training_step`` (returns the loss to back-propagate and logs) and, after the optimiser step,
``after_optimizer_step``.

Under ``torchrun`` the engine attaches the process group's collectives (``self.comm``) and the
DDP-wrapped student (used by :meth:`Method.student_forward`); every loss is then this process's
share of the global-batch mean (local sum / global count), see :mod:`u2plus.engine.distributed`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..comm import LOCAL, Comm
from ..losses.supervised import ohem_cross_entropy, pixel_cross_entropy, weighted_pixel_count


@dataclass
class StepContext:
    step: int  # 0-based iteration
    max_iters: int
    iters_per_epoch: int

    @property
    def progress(self) -> float:
        """t / T in epochs (Eq. 13), in [0, 1]."""
        epochs = self.max_iters / max(self.iters_per_epoch, 1)
        return min((self.step // max(self.iters_per_epoch, 1)) / max(epochs, 1e-12), 1.0)


class Method(nn.Module):
    # data streams the method trains on; an epoch is one pass over the last of them
    streams: tuple[str, ...] = ("labeled",)
    # log key -> short name shown in the progress bar (beside the total loss and the lr)
    progress_fields: dict[str, str] = {}
    # what its training images carry: "pixels" (masks) or "tags" (image-level labels, data.supervision)
    supervision: str = "pixels"

    @property
    def loss_terms(self) -> tuple[str, ...]:
        """The loss terms a training step logs once the method is fully on (after any warm-up)."""
        return ("loss_sup",)

    @classmethod
    def prepare_student(cls, student: nn.Module, cfg) -> nn.Module:
        """The network as this method trains it (e.g. with extra heads); before weights are loaded."""
        return student

    def __init__(self, cfg, student: nn.Module):
        super().__init__()
        self.cfg = cfg
        self.student = self.prepare_student(student, cfg)
        self.ignore_index = cfg.data.ignore_index
        self.comm: Comm = LOCAL
        self.__dict__["_student_runner"] = None  # the DDP wrapper (kept out of state_dict)
        # L_s class weights (train.class_weights), set by the engine; recomputed from the
        # config on resume, so not part of the checkpoint
        self.register_buffer("class_weights", None, persistent=False)

    def set_class_weights(self, weights: torch.Tensor | None) -> None:
        """Weights ``[C]`` of the classes in L_s (None: plain mean)."""
        self.class_weights = None if weights is None else weights.detach().float().clone()

    def attach_distributed(self, comm: Comm, student_runner: nn.Module | None) -> None:
        """Use ``comm`` for global quantities and ``student_runner`` (the DDP-wrapped student,
        whose forward synchronises gradients) for the student's training forwards."""
        self.comm = comm
        self.__dict__["_student_runner"] = student_runner

    def student_forward(self, x: torch.Tensor, **outputs: bool) -> dict[str, torch.Tensor]:
        """The student's forward (through DDP under torchrun); ``outputs``: e.g. ``with_rep=True``,
        ``with_features=True`` (the encoder's maps), ``with_cam=True`` (the weakly-supervised heads)."""
        runner = self.__dict__["_student_runner"] or self.student
        return runner(x, **outputs)

    def param_groups(self) -> list[dict]:
        """Optimiser groups: ``params`` and ``lr_mult`` (times ``train.lr``): the encoder at 1,
        decoder and heads at ``train.head_lr_mult`` (x10 in the paper)."""
        encoder, heads = self.student.param_groups()
        return [{"name": "encoder", "params": encoder, "lr_mult": 1.0},
                {"name": "decoder_heads", "params": heads, "lr_mult": self.cfg.train.head_lr_mult}]

    def supervised_loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """L_s (Eq. 3), OHEM when ``train.ohem``: mean over the valid pixels of the global batch
        (weighted by ``train.class_weights`` when set)."""
        t = self.cfg.train
        if t.ohem:
            return ohem_cross_entropy(logits, target, t.ohem_thresh, t.ohem_min_kept, self.ignore_index,
                                      comm=self.comm)
        w = self.class_weights
        count = (self.comm.sum(weighted_pixel_count(target, self.ignore_index, w))
                 if self.comm.world_size > 1 else None)
        return pixel_cross_entropy(logits, target, self.ignore_index, count_override=count, class_weights=w)

    def train(self, mode: bool = True):
        super().train(mode)
        m = self.cfg.model
        if mode and (m.freeze_bn or m.freeze_encoder_bn):  # BN layers keep their running statistics
            frozen = self.student if m.freeze_bn else self.student.encoder
            for module in frozen.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def training_step(self, labeled: dict, unlabeled: dict | None, ctx: StepContext):
        raise NotImplementedError

    def after_optimizer_step(self, ctx: StepContext) -> None:
        pass

    def eval_model(self) -> nn.Module:
        """The network evaluated and exported (the student; EMA methods may pick the teacher)."""
        return self.student
