"""U2PL+ in a plain PyTorch loop: a segmentation-models-pytorch DeepLabV3+ with a small
representation head, an EMA teacher and ``u2plus.U2PLPlusCriterion``, on the CamVid subset that
ships inside u2plus (31 labeled + 92 unlabeled images). Nothing else of u2plus is used but the
CutMix box helpers.

    python examples/plain_pytorch.py --steps 200
"""

import argparse
import copy
from pathlib import Path

import numpy as np
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision import tv_tensors
from torchvision.transforms import v2

import u2plus
from u2plus import CriterionConfig, U2PLPlusCriterion
from u2plus.mixing import apply_cutmix, cutmix_masks, cutmix_partners

DATA = Path(u2plus.__file__).parent / "demo_data" / "camvid_half"
SPLITS = Path(u2plus.__file__).parent / "splits" / "camvid_demo"
NUM_CLASSES, CROP = 11, (128, 160)


class Net(nn.Module):
    """DeepLabV3+ whose decoder map also feeds a representation head (L2-normalised per pixel)."""

    def __init__(self):
        super().__init__()
        self.seg = smp.DeepLabV3Plus("tu-tf_efficientnet_lite0", encoder_weights=None, classes=NUM_CLASSES,
                                     upsampling=1)  # logits at stride 4, like the decoder map
        self.rep = nn.Sequential(nn.Conv2d(256, 128, 3, padding=1, bias=False), nn.BatchNorm2d(128), nn.ReLU(),
                                 nn.Conv2d(128, 64, 1))

    def forward(self, x):
        fmap = self.seg.decoder(self.seg.encoder(x))
        return self.seg.segmentation_head(fmap), F.normalize(self.rep(fmap), dim=1)


def load(ids, with_masks):
    """Random 128x160 crops with flips of the given training images (and of their masks)."""
    crop = v2.Compose([v2.RandomCrop(CROP), v2.RandomHorizontalFlip()])
    images, masks = [], []
    for i in ids:
        img = v2.functional.to_image(Image.open(DATA / "train" / f"{i}.jpg").convert("RGB"))
        if with_masks:
            mask = v2.functional.to_image(np.array(Image.open(DATA / "trainannot" / f"{i}.png")))
            img, mask = crop(img, tv_tensors.Mask(mask))
            masks.append(mask[0].long().masked_fill(mask[0] == 11, 255))  # 11 = void
        else:
            img = crop(img)
        images.append(v2.functional.normalize(img.float() / 255, [0.5] * 3, [0.5] * 3))
    return torch.stack(images), torch.stack(masks) if masks else None


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch", type=int, default=4)
    args = p.parse_args()
    torch.manual_seed(0)
    labeled_ids = (SPLITS / "labeled.txt").read_text().split()
    unlabeled_ids = (SPLITS / "unlabeled.txt").read_text().split()
    student = Net()
    teacher = copy.deepcopy(student).eval().requires_grad_(False)
    criterion = U2PLPlusCriterion(CriterionConfig(prototype_momentum=0.99), NUM_CLASSES, rep_dim=64)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    strong = v2.Compose([v2.RandomApply([v2.ColorJitter(0.5, 0.5, 0.5, 0.25)], p=0.8), v2.RandomGrayscale(0.2)])
    for step in range(args.steps):
        pick = torch.randint(len(labeled_ids), (args.batch,)).tolist()
        x_l, y_l = load([labeled_ids[i] for i in pick], with_masks=True)
        pick = torch.randint(len(unlabeled_ids), (args.batch,)).tolist()
        x_u, _ = load([unlabeled_ids[i] for i in pick], with_masks=False)
        with torch.no_grad():  # teacher on labeled + weak unlabeled; CutMix of the strong view
            t_logits, t_rep = teacher(torch.cat([x_l, x_u]))
            box = cutmix_masks(args.batch, *CROP, prob=0.5)
            partner = cutmix_partners(args.batch)
            x_mix = apply_cutmix(box, partner, strong(x_u))[0]
        s_logits, s_rep = student(torch.cat([x_l, x_mix]))
        b = args.batch
        loss_sup = F.cross_entropy(F.interpolate(s_logits[:b], size=CROP, mode="bilinear"), y_l, ignore_index=255)
        out = criterion(labels=y_l, teacher_logits_l=t_logits[:b], teacher_logits_u=t_logits[b:],
                        teacher_rep_l=t_rep[:b], teacher_rep_u=t_rep[b:], student_logits_u=s_logits[b:],
                        student_rep_l=s_rep[:b], student_rep_u=s_rep[b:], progress=step / args.steps,
                        cutmix=(box, partner), seed=step)
        loss = loss_sup + out["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():  # EMA teacher (Eq. 2), ramped up over the first steps
            m = min(1 - 1 / (step + 1), 0.99)
            for t, s in zip(teacher.state_dict().values(), student.state_dict().values()):
                t.copy_(t * m + s * (1 - m) if t.is_floating_point() else s)
        print(f"step {step}: L_s {loss_sup.item():.3f}  L_u {out['loss_unsup'].item():.3f}  "
              f"L_c {out['loss_contrastive'].item():.3f}  reliable {out['reliable_fraction']:.2f}", flush=True)


if __name__ == "__main__":
    main()
