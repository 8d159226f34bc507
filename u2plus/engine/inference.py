"""Using a trained checkpoint: evaluation on a split, prediction on arbitrary images."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from ..config import config_from_checkpoint, load_config
from ..data import cam_quality_set, eval_data_cfg
from ..data.base import list_images, read_image
from ..data.domains import is_domain_adaptive
from ..data.transforms import Normalize
from ..errors import DataError
from ..methods import method_class
from ..models import build_segmentor
from ..viz import colorize, overlay, palette_for, save_png
from .checkpoint import check_model, evaluated_weights, load_run_checkpoint, load_weights
from .distributed import resolve_device
from .evaluate import predict_logits
from .cam_quality import run_cam_quality
from .crf import require_crf
from .trainer import build_eval_loader, normalisation, run_evaluation


def load_trained_model(cfg, state: dict, device: torch.device, source: str = "the checkpoint"):
    """The network the checkpoint's run evaluated (its EMA teacher or its student), built from
    ``cfg.model``, in eval mode on ``device``."""
    num_classes = int(state.get("num_classes", cfg.data.num_classes))
    model_cfg = cfg.model.copy()
    model_cfg.pretrained = "none"  # the checkpoint holds every weight
    # with the heads the checkpoint's method trains (e.g. the weakly-supervised classifier and affinity)
    model = method_class(cfg).prepare_student(build_segmentor(model_cfg, num_classes), cfg)
    load_weights(model, evaluated_weights(state), source)
    return model.to(device).eval()


def checkpoint_config(state: dict, checkpoint: str, config: str | None = None, overrides=None):
    """The config to use a trained checkpoint with: its own, or the file ``config`` when that
    describes the same model (else one line naming the differing keys); ``overrides`` on top."""
    if config is None:
        return config_from_checkpoint(state, overrides)
    cfg = load_config(config, overrides)
    check_model(state, checkpoint, cfg, config, hint="; leave out the config to use the checkpoint's own")
    return cfg


def evaluate_checkpoint(checkpoint: str, split: str | None = None, config: str | None = None,
                        overrides=None) -> dict:
    """The checkpoint's scores on ``split`` (default: the evaluated domain's val split) with its
    own config or ``config``: with ``eval.crf`` also after the dense CRF (``"crf"``), with
    ``data.supervision: tags`` also the CAM quality (``"cam"``)."""
    state = load_run_checkpoint(checkpoint)
    cfg = checkpoint_config(state, checkpoint, config, overrides)
    device = resolve_device(cfg.device)
    if cfg.eval.crf:
        require_crf()
    model = load_trained_model(cfg, state, device, checkpoint)
    mean, std = normalisation(cfg, model)
    dataset, loader = build_eval_loader(cfg, split, mean, std)
    result = run_evaluation(cfg, model, loader, dataset, device, crf=cfg.eval.crf)
    cam_set = cam_quality_set(cfg.data) if cfg.data.supervision == "tags" else None
    if cam_set is not None:
        result["cam"] = run_cam_quality(cfg, model, cam_set, mean, std, device)
    result["split"] = split or (is_domain_adaptive(cfg.data) and cfg.data.target.val_split) or cfg.data.val_split
    return result


def collect_inputs(inputs: list[str]) -> list[Path]:
    paths: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = list_images(p)
            if not found:
                raise DataError(f"no images found in {p}")
            paths += found
        elif p.is_file():
            paths.append(p)
        else:
            raise DataError(f"input not found: {p}")
    return paths


def load_for_inference(checkpoint: str, device: str = "auto"):
    """(checkpoint state, its config, the model to run, its input normalisation, device)."""
    state = load_run_checkpoint(checkpoint)
    cfg = config_from_checkpoint(state)
    dev = resolve_device(device)
    model = load_trained_model(cfg, state, dev, checkpoint)
    mean, std = normalisation(cfg, model)
    return state, cfg, model, Normalize(mean, std), dev


def rescale_image(image: torch.Tensor, factor: float, size=None) -> torch.Tensor:
    """The fixed training-time rescale (``data.resize_factor``, or the fixed ``data.resize``
    ``size``) of a uint8 image [3, H, W]."""
    h, w = image.shape[1:]
    size = list(size) if size else [max(1, round(h * factor)), max(1, round(w * factor))]
    if size == [h, w]:
        return image
    return F.interpolate(image[None].float(), size=size, mode="bilinear", antialias=True,
                         align_corners=False)[0].clamp(0, 255).round().to(torch.uint8)


@torch.inference_mode()
def predict_paths(checkpoint: str, inputs: list[str], out_dir: str, mode: str | None = None,
                  device: str = "auto") -> int:
    """Segment every input image; write ``<stem>_mask.png`` (colours), ``<stem>_overlay.png`` and
    ``<stem>_labels.png`` (train ids) at the image's own resolution. Returns the image count."""
    state, cfg, model, normalize, dev = load_for_inference(checkpoint, device)
    mode = mode or ("whole" if cfg.eval.mode == "center_crop" else cfg.eval.mode)
    class_names = state.get("class_names")
    data_cfg = eval_data_cfg(cfg.data)  # the evaluated domain's settings (the target's in DA)
    palette = palette_for(model.num_classes, data_cfg.dataset)
    out = Path(out_dir)
    paths = collect_inputs(inputs)
    for path in paths:
        image = read_image(path)
        h, w = image.shape[1:]
        x = normalize(rescale_image(image, data_cfg.resize_factor, data_cfg.resize))[None].to(dev)
        logits = predict_logits(model.predict, x, model.num_classes, mode=mode,
                                crop_size=tuple(cfg.eval.crop_size),
                                stride=tuple(cfg.eval.stride) if cfg.eval.stride else None,
                                scales=tuple(cfg.eval.scales), flip=cfg.eval.flip and mode == "multiscale")
        logits = F.interpolate(logits.float(), size=(h, w), mode="bilinear", align_corners=False)
        labels = logits.max(1).indices[0].cpu().numpy().astype("uint8")
        rgb = image.permute(1, 2, 0).numpy()
        stem = path.stem
        save_png(colorize(labels, palette), out / f"{stem}_mask.png")
        save_png(overlay(rgb, labels, palette), out / f"{stem}_overlay.png")
        save_png(labels, out / f"{stem}_labels.png")
    if class_names:
        (out / "classes.txt").write_text("\n".join(class_names) + "\n")
    return len(paths)
