"""Encoder gradient norm of one semi-supervised step with and without ``model.freeze_encoder_bn``.

Each arm starts from a SupOnly checkpoint trained its own way (4 labeled images per step, 800 steps;
run first: ``python bench/camvid.py configs/camvid/suponly_1-8.yaml --seeds 0 --set
model.freeze_encoder_bn=true data.batch_size=4 --tag feb_b4`` and ``... --seeds 1 --set
data.batch_size=4 --tag _b4``), loads it into student and teacher, and takes one real CamVid batch
(4 labeled + 4 unlabeled images) at step 100, after the warm-up. Prints the L2 norm of the encoder
gradient of the whole step and of L_s alone, for u2pl_plus and selftrain.

    python bench/bn_grad_probe.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from u2plus.config import load_config  # noqa: E402
from u2plus.data import build_train_sets  # noqa: E402
from u2plus.data.sampler import collate  # noqa: E402
from u2plus.data.transforms import TrainTransform  # noqa: E402
from u2plus.engine.checkpoint import network_weights  # noqa: E402
from u2plus.engine.trainer import normalisation  # noqa: E402
from u2plus.methods import StepContext, build_method  # noqa: E402
from u2plus.models import build_segmentor  # noqa: E402
from u2plus.paths import use_data_dir_if_unset  # noqa: E402

use_data_dir_if_unset(REPO.parent / "shared" / "data")  # this machine's data directory, unless U2PLUS_DATA is set

CHECKPOINTS = {True: REPO / "runs/bench/suponly_1-8feb_b4_s0/last.pt",
               False: REPO / "runs/bench/suponly_1-8_b4_s1/last.pt"}


def grad_norm(loss: torch.Tensor, params: list) -> float:
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return torch.sqrt(sum((g ** 2).sum() for g in grads if g is not None)).item()


def main() -> None:
    torch.set_num_threads(1)
    for frozen, path in CHECKPOINTS.items():
        student = network_weights(torch.load(path, weights_only=True, map_location="cpu"), "student")
        for name in ("u2pl_plus", "selftrain"):
            cfg = load_config(REPO / "configs/camvid/u2pl_plus_1-8.yaml",
                              [f"method.name={name}", f"model.freeze_encoder_bn={str(frozen).lower()}"])
            torch.manual_seed(0)
            model = build_segmentor(cfg.model, cfg.data.num_classes)
            model.load_state_dict(student)
            method = build_method(cfg, model)
            method.teacher.load_state_dict(student)
            labeled, unlabeled = build_train_sets(cfg.data, True)
            mean, std = normalisation(cfg, model)
            labeled.transform = TrainTransform(cfg.data, mean, std)
            unlabeled.transform = TrainTransform(cfg.data, mean, std, strong=True)
            torch.manual_seed(1)
            batch_l = collate([labeled[i] for i in range(4)])
            batch_u = collate([unlabeled[i] for i in range(4)])
            method.train()
            encoder = list(model.encoder.parameters())
            loss, logs = method.training_step(batch_l, batch_u, StepContext(100, 800, 12))
            whole = grad_norm(loss, encoder)
            sup = grad_norm(method.supervised_loss(method.student(batch_l["image"])["logits"], batch_l["mask"]),
                            encoder)
            print(f"freeze_encoder_bn={frozen} {name}: encoder grad norm, whole step {whole:.3f}, "
                  f"L_s alone {sup:.3f} | loss_sup {logs['loss_sup']:.3f} loss_unsup {logs['loss_unsup']:.3f}",
                  flush=True)


if __name__ == "__main__":
    main()
