"""Which metric is a quoted CamVid number? Every common reading of "mIoU" on trained run folders.

    python bench/metric_candidates.py runs/bench/suponly_1-8_it600_s1 runs/bench/suponly_1-8_s1

For each run folder (its ``last.pt``) the val split is predicted once, with the run's own
eval settings, and one JSON line is printed with:

- ``mIoU``: u2plus's metric, one confusion matrix over the whole split (as ``u2plus eval``);
- ``mAcc`` / ``aAcc``: mean class accuracy (recall) and pixel accuracy from the same matrix;
- ``fwIoU``: IoU weighted by each class's share of ground-truth pixels;
- ``per_image_mIoU``: mIoU of each image (classes absent from both its ground truth and
  prediction left out), averaged over images;
- ``per_image_mIoU_absent_as_1``: the same with absent classes counted as IoU 1 (the
  ``zero_division=1`` default of ``segmentation_models_pytorch.metrics``);
- ``per_image_mAcc``: mean class accuracy per image, averaged;
- ``per_batch8_mIoU``: mIoU of each batch of 8 images, averaged (a running mean over a loader).

A number quoted without its script can then be matched to the reading it agrees with.
"""

from __future__ import annotations

import argparse
import json

import torch

from u2plus.engine.evaluate import accuracy_from_confusion, iou_from_confusion
from u2plus.engine.inference import load_for_inference
from u2plus.engine.trainer import build_eval_loader, normalisation, run_evaluation


def per_image_confusions(run: str) -> list[torch.Tensor]:
    """One confusion matrix per val image, predicted as ``u2plus eval`` does (the run's eval mode)."""
    _, cfg, model, _, device = load_for_inference(f"{run}/last.pt", "cpu")
    cfg.eval.batch_size = 1
    dataset, loader = build_eval_loader(cfg, cfg.data.val_split, *normalisation(cfg, model))
    return [torch.tensor(run_evaluation(cfg, model, [batch], dataset, device)["confusion"]) for batch in loader]


def candidates(confs: list[torch.Tensor]) -> dict:
    total = torch.stack(confs).sum(0)
    iou, miou = iou_from_confusion(total)
    _, macc, aacc = accuracy_from_confusion(total)
    share = total.sum(1).double() / total.sum()
    per_image = [iou_from_confusion(c)[0] for c in confs]
    batches = [torch.stack(confs[i:i + 8]).sum(0) for i in range(0, len(confs), 8)]
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return {
        "mIoU": miou, "mAcc": macc, "aAcc": aacc,
        "fwIoU": float((share * iou.nan_to_num(0.0)).sum()),
        "per_image_mIoU": mean([float(i[~i.isnan()].mean()) for i in per_image]),
        "per_image_mIoU_absent_as_1": mean([float(i.nan_to_num(100.0).mean()) for i in per_image]),
        "per_image_mAcc": mean([accuracy_from_confusion(c)[1] for c in confs]),
        "per_batch8_mIoU": mean([iou_from_confusion(b)[1] for b in batches]),
        "images": len(confs),
        "image_class_pairs_absent": int(sum(int(i.isnan().sum()) for i in per_image)),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run folders holding config.yaml and last.pt")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    for run in args.runs:
        out = {k: round(v, 2) if isinstance(v, float) else v for k, v in candidates(per_image_confusions(run)).items()}
        print(json.dumps({"run": run, **out}), flush=True)


if __name__ == "__main__":
    main()
