"""SupOnly: the student trained on labeled images alone with L_s (the paper's baseline)."""

from __future__ import annotations

from .base import Method, StepContext


class SupOnly(Method):
    def training_step(self, labeled: dict, unlabeled: dict | None, ctx: StepContext):
        logits = self.student_forward(labeled["image"])["logits"]
        loss = self.supervised_loss(logits, labeled["mask"])
        return loss, {"loss_sup": loss.detach()}
