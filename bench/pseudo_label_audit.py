"""Where the pseudo-labels of a class go: a checkpoint's predictions on a labeled split, read as
the teacher's pseudo-labels would be (entropy partition, Eq. 11-13), per true class.

    python bench/pseudo_label_audit.py runs/bench/suponly_1-8_it3000_s1/step_1000.pt --alpha 0.133

For every class c, over the pixels whose true class is c:

- ``predicted``: share the model predicts as c (its recall, any confidence);
- ``reliable``: share predicted as c *and* reliable under one entropy threshold per batch of
  ``--batch`` images (the paper's partition, the ``(1 - alpha)`` quantile);
- ``reliable_classwise``: the same with one threshold per predicted class
  (``method.classwise_partition``);
- ``wrong_reliable``: share given another class's reliable pseudo-label.

So a class whose pixels are mostly ``predicted`` but not ``reliable`` loses its pseudo-labels to
the threshold; one that is not even ``predicted`` loses them to its neighbours. The ``--alpha``
of a run at its first semi-supervised step is ``alpha_0 * (1 - t / T)`` (0.2 x 2/3 at step 1000 of
3000). Images are predicted whole, as in evaluation (training thresholds are taken over crops).
"""

from __future__ import annotations

import argparse
import json

import torch

from u2plus.engine.inference import load_for_inference
from u2plus.engine.trainer import build_eval_loader, normalisation
from u2plus.losses.entropy import pixel_entropy
from u2plus.losses.partition import classwise_entropy_threshold, entropy_threshold, reliable_mask


KINDS = ("pixels", "predicted", "reliable", "reliable_classwise", "wrong_reliable")


def audit_counts(prob: torch.Tensor, mask: torch.Tensor, alpha: float, ignore_index: int = 255) -> dict:
    """Pixel counts per true class of one batch (``prob`` [B, C, H, W], ``mask`` [B, H, W]), one
    entropy threshold over the batch's labeled pixels: ``pixels``, ``predicted`` (right),
    ``reliable`` (right and reliable), ``reliable_classwise`` (the same, thresholds per predicted
    class) and ``wrong_reliable`` (another class's reliable pseudo-label)."""
    c = prob.shape[1]
    entropy, predicted = pixel_entropy(prob), prob.argmax(1)
    valid = mask != ignore_index
    reliable = reliable_mask(entropy, entropy_threshold(entropy, alpha, valid))
    reliable_cw = reliable_mask(entropy, classwise_entropy_threshold(entropy, predicted, alpha, c, valid)[predicted])
    right = predicted == mask
    selections = (valid, valid & right, valid & right & reliable, valid & right & reliable_cw, valid & ~right & reliable)
    return {k: torch.bincount(mask[sel], minlength=c)[:c].cpu() for k, sel in zip(KINDS, selections)}


@torch.no_grad()
def audit(checkpoint: str, alpha: float, batch: int, split: str | None) -> dict:
    _, cfg, model, _, device = load_for_inference(checkpoint, "cpu")
    cfg.eval.batch_size = batch
    dataset, loader = build_eval_loader(cfg, split, *normalisation(cfg, model))
    model.eval()
    counts = {k: torch.zeros(dataset.num_classes, dtype=torch.long) for k in KINDS}
    for data in loader:
        image, mask = data["image"].to(device), data["mask"].to(device)
        prob = model(image)["logits"].float().softmax(1)
        prob = torch.nn.functional.interpolate(prob, size=mask.shape[-2:], mode="bilinear", align_corners=False)
        for k, v in audit_counts(prob, mask, alpha, dataset.ignore_index).items():
            counts[k] += v
    n = counts["pixels"].clamp_min(1).double()
    return {"checkpoint": checkpoint, "alpha": alpha, "images": len(dataset), "per_class": {
        name: {"pixel_share": round(float(counts["pixels"][i]) / float(counts["pixels"].sum()), 4),
               **{k: round(float(counts[k][i] / n[i]), 3) for k in KINDS[1:]}}
        for i, name in enumerate(dataset.class_names)}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("--alpha", type=float, default=0.2, help="unreliable share (alpha_t)")
    p.add_argument("--batch", type=int, default=4, help="images per threshold (the unlabeled batch)")
    p.add_argument("--split", default=None, help="labeled split to read (default: the run's val split)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = audit(args.checkpoint, args.alpha, args.batch, args.split)
    print(json.dumps(out))
    print(f"{'class':<14}{'share':>7}{'predicted':>10}{'reliable':>9}{'classwise':>10}{'wrong_rel':>10}")
    for name, r in out["per_class"].items():
        print(f"{name:<14}{r['pixel_share']:>7.3f}{r['predicted']:>10.3f}{r['reliable']:>9.3f}"
              f"{r['reliable_classwise']:>10.3f}{r['wrong_reliable']:>10.3f}")


if __name__ == "__main__":
    main()
