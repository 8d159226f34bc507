"""Is a semi-supervised run's val dip in its weights or in its BatchNorm running statistics?

    python bench/bn_recalibration_probe.py runs/x/last.pt [--images 120] [--threads 1]

During semi-supervised steps the student's BatchNorm layers normalise a batch of labeled images
*and* strongly augmented CutMix images (colour jitter, grayscale, blur, pasted boxes), so their
running statistics, and the teacher's (an EMA of the student's buffers, ``ema_update``), drift
towards the strong views' statistics, while evaluation feeds clean images. This evaluates the
checkpoint's teacher and student on the run's val split as stored, then again after re-estimating
every BatchNorm layer's running mean and variance (cumulative average, ``momentum=None``) from
``--images`` clean, unaugmented images of the train split (labels unused). A large gain after
recalibration says the dip is a statistics mismatch, not what the weights learnt.
Prints one JSON object: val mIoU per network, stored and recalibrated, and the per-class IoU.
"""

from __future__ import annotations

import argparse
import itertools
import json

import torch

from u2plus.engine.checkpoint import load_weights, network_weights
from u2plus.engine.inference import load_for_inference
from u2plus.engine.trainer import build_eval_loader, normalisation, run_evaluation


@torch.no_grad()
def recalibrate_batchnorm(model: torch.nn.Module, loader, images: int, device) -> int:
    """Re-estimate the running statistics of every BatchNorm layer of ``model`` from the first
    ``images`` images of ``loader`` (cumulative average); returns how many images were used."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    seen = 0
    for data in itertools.takewhile(lambda _: seen < images, loader):
        model(data["image"].to(device))
        seen += data["image"].shape[0]
    for m, momentum in zip(norms, saved):
        m.momentum = momentum
    model.eval()
    return seen


def rounded(per_class: dict) -> dict:
    return {k: None if v is None else round(v, 2) for k, v in per_class.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint")
    p.add_argument("--images", type=int, default=120, help="clean train images for the statistics")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    state, cfg, model, _, device = load_for_inference(args.checkpoint, "cpu")
    mean, std = normalisation(cfg, model)
    val_set, val_loader = build_eval_loader(cfg, None, mean, std)
    _, train_loader = build_eval_loader(cfg, "train", mean, std)
    networks = {name: network_weights(state, name) for name in ("teacher", "student")}
    out = {"checkpoint": args.checkpoint, "step": state.get("step"), "recalibration_images": args.images}
    for name, w in networks.items():
        if not w:
            continue
        load_weights(model, w, f"{args.checkpoint} ({name})")
        stored = run_evaluation(cfg, model, val_loader, val_set, device)
        used = recalibrate_batchnorm(model, train_loader, args.images, device)
        recal = run_evaluation(cfg, model, val_loader, val_set, device)
        out[name] = {"stored": round(stored["mIoU"], 2), "recalibrated": round(recal["mIoU"], 2), "images": used,
                     "per_class_stored": rounded(stored["per_class"]), "per_class_recalibrated": rounded(recal["per_class"])}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
