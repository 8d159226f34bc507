"""SupOnly on CamVid in a plain ~60-line loop, outside the u2plus trainer: a cross-check of
the trainer and of the model against segmentation-models-pytorch, on the recipe of issue 2's
reference point (DeepLabv3+ on EfficientNet-Lite0 with ImageNet weights, half resolution,
random 160x224 crops + flip, batch 8, SGD lr 0.01 momentum 0.9 wd 1e-4, x10 decoder, poly 0.9).

    python bench/plain_loop.py --model ours             # u2plus's Segmentor (configs/camvid)
    python bench/plain_loop.py --model smp              # smp.DeepLabV3Plus("tu-tf_efficientnet_lite0")
    python bench/plain_loop.py --model ours --set model.output_stride=8 --lr 0.03

Data are decoded once into memory (PIL: bilinear image / nearest mask to 240x180); no scale
augmentation, no data loader. Val mIoU from one confusion matrix over the 101 val images
(whole image, void ignored), plus mIoU on the labeled training images themselves. Appends a
row to bench/RESULTS.md unless --no-record. ~12-17 min per 600 steps on 1 thread of this CPU.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from camvid import SECTIONS, add_to_section, machine  # noqa: E402  (also sets U2PLUS_DATA here)
from u2plus.paths import data_dir  # noqa: E402

NUM_CLASSES, VOID, SIZE, CROP = 11, 11, (240, 180), (160, 224)


def load_pair(root: Path, split: str, image_id: str) -> tuple[torch.Tensor, torch.Tensor]:
    image = Image.open(root / split / f"{image_id}.png").convert("RGB").resize(SIZE, Image.BILINEAR)
    mask = Image.open(root / f"{split}annot" / f"{image_id}.png").resize(SIZE, Image.NEAREST)
    x = (np.asarray(image, np.float32) / 255 - 0.5) / 0.5  # EfficientNet-Lite normalisation
    y = np.asarray(mask).astype(np.int64)
    y[y == VOID] = 255
    return torch.from_numpy(x).permute(2, 0, 1).contiguous(), torch.from_numpy(y)


def build_model(kind: str, overrides: list[str]):
    """(model, encoder parameters, forward returning logits of any stride)."""
    from u2plus.models.encoders import bundled_weight_file, load_state_dict_file, pair_by_order

    classifier = timm.create_model("tf_efficientnet_lite0")
    weights = pair_by_order(load_state_dict_file(bundled_weight_file("tf_efficientnet_lite0")), classifier)
    if kind == "smp":
        import segmentation_models_pytorch as smp

        model = smp.DeepLabV3Plus("tu-tf_efficientnet_lite0", encoder_weights=None, classes=NUM_CLASSES)
        own = model.encoder.model.state_dict()
        result = model.encoder.model.load_state_dict({k: v for k, v in weights.items() if k in own}, strict=False)
        assert all(k.endswith("num_batches_tracked") for k in result.missing_keys), result.missing_keys

        def forward(x):  # smp needs sides divisible by 16: pad bottom/right, crop the output
            h, w = x.shape[-2:]
            return model(F.pad(x, (0, (-w) % 16, 0, (-h) % 16)))[..., :h, :w]

        return model, list(model.encoder.parameters()), forward
    from u2plus.config import load_config
    from u2plus.models.segmentor import build_segmentor

    cfg = load_config(str(REPO / "configs/camvid/suponly_1-8.yaml"), overrides)
    model = build_segmentor(cfg.model, NUM_CLASSES)
    return model, list(model.encoder.parameters()), lambda x: model(x)["logits"]


@torch.no_grad()
def miou(forward, pairs) -> tuple[float, list[float], float]:
    """(mIoU, per-class IoU, mean class accuracy), all in percent. Deliberately independent of
    ``u2plus.engine.evaluate``: this script cross-checks u2plus."""
    cm = torch.zeros(NUM_CLASSES, NUM_CLASSES, dtype=torch.long)
    for x, y in pairs:
        pred = F.interpolate(forward(x[None]), size=y.shape, mode="bilinear", align_corners=False).argmax(1)[0]
        valid = y != 255
        cm += torch.bincount(y[valid] * NUM_CLASSES + pred[valid], minlength=NUM_CLASSES**2).view(NUM_CLASSES, -1)
    iou = cm.diag() / (cm.sum(0) + cm.sum(1) - cm.diag()).clamp_min(1)
    class_acc = cm.diag() / cm.sum(1).clamp_min(1)  # recall: the "class average accuracy" of SegNet tables
    return iou.mean().item() * 100, [round(v * 100, 1) for v in iou.tolist()], class_acc.mean().item() * 100


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=("ours", "smp"), default="ours")
    ap.add_argument("--labeled", default=str(REPO / "u2plus/splits/camvid/1-8/labeled.txt"),
                    help="labeled id list (default: the shipped 1/8 partition); 'all' for every train image")
    ap.add_argument("--root", default=str(data_dir() / "camvid"), help="CamVid folder (default: camvid in the data directory)")
    ap.add_argument("--iters", type=int, default=600)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--set", nargs="*", default=[], metavar="key=value", help="u2plus config overrides (--model ours)")
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    if args.set and args.model != "ours":
        ap.error("--set applies to --model ours only")

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    root = Path(args.root)
    if not (root / "train").is_dir():
        sys.exit(f"CamVid not found at {root}")
    ids = (sorted(p.stem for p in (root / "train").glob("*.png")) if args.labeled == "all"
           else Path(args.labeled).read_text().split())
    train = [load_pair(root, "train", i) for i in ids]
    val = [load_pair(root, "val", p.stem) for p in sorted((root / "val").glob("*.png"))]
    model, encoder_params, forward = build_model(args.model, args.set)
    enc_ids = {id(p) for p in encoder_params}
    optimizer = torch.optim.SGD(
        [{"params": encoder_params, "lr": args.lr},
         {"params": [p for p in model.parameters() if id(p) not in enc_ids], "lr": args.lr * 10}],
        lr=args.lr, momentum=0.9, weight_decay=1e-4)
    base_lrs = [g["lr"] for g in optimizer.param_groups]

    t0 = time.time()
    model.train()
    for it in range(args.iters):
        xs, ys = [], []
        for _ in range(8):
            x, y = train[random.randrange(len(train))]
            top, left = random.randint(0, SIZE[1] - CROP[0]), random.randint(0, SIZE[0] - CROP[1])
            x, y = x[:, top:top + CROP[0], left:left + CROP[1]], y[top:top + CROP[0], left:left + CROP[1]]
            if random.random() < 0.5:
                x, y = x.flip(-1), y.flip(-1)
            xs.append(x)
            ys.append(y)
        x, y = torch.stack(xs), torch.stack(ys)
        for group, base in zip(optimizer.param_groups, base_lrs):
            group["lr"] = base * (1 - it / args.iters) ** 0.9
        logits = F.interpolate(forward(x), size=y.shape[-2:], mode="bilinear", align_corners=False)
        loss = F.cross_entropy(logits, y, ignore_index=255)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if it % 50 == 0:
            print(f"step {it} loss {loss.item():.4f} {time.time() - t0:.0f}s", flush=True)
    minutes = (time.time() - t0) / 60
    model.eval()
    val_miou, per_class, val_macc = miou(forward, val)
    train_miou, _, _ = miou(forward, train)
    print(f"{args.model} labeled={len(ids)} val mIoU {val_miou:.2f} mAcc {val_macc:.2f} per class {per_class} "
          f"train-image mIoU {train_miou:.2f} ({minutes:.1f} min)")
    if not args.no_record:
        cmd = "python bench/plain_loop.py " + " ".join(sys.argv[1:])
        add_to_section(
            f"\n### {time.strftime('%Y-%m-%d %H:%M')} — plain loop (`bench/plain_loop.py`)\n"
            f"Machine: {machine()}\n\n| model | labeled | steps | lr | overrides | val mIoU | val mAcc | "
            f"mIoU on its labeled images | wall (min) | command |\n|---|---|---|---|---|---|---|---|---|---|\n"
            f"| {args.model} | {len(ids)} | {args.iters} | {args.lr} | {' '.join(args.set) or '-'} | "
            f"{val_miou:.2f} | {val_macc:.2f} | {train_miou:.2f} | {minutes:.1f} | `{cmd}` |\n", SECTIONS["suponly"])


if __name__ == "__main__":
    main()
