"""Evaluation: confusion matrix, IoU, and whole / centre-crop / sliding / multi-scale inference.

The mIoU is computed from ONE confusion matrix accumulated over the whole split (never an
average of per-image scores); pixels labelled ``ignore_index`` (or any value outside
``0..C-1``) are skipped. IoUs are reported in percent; a class that appears neither in the
ground truth nor in the prediction has IoU NaN and is left out of the mean.

Inference modes (:func:`predict_logits`):

* ``"whole"``: one forward pass on the whole image.
* ``"center_crop"``: the caller crops image AND label with :func:`center_crop` first (as
  :func:`evaluate` does); the prediction itself is then a ``"whole"`` pass.
* ``"sliding"``: ``crop_size`` windows every ``stride`` pixels (default: 2/3 of the crop), the
  image zero-padded bottom/right when smaller than the crop, logits averaged where windows
  overlap; several windows go through the model in one stacked forward.
* ``"multiscale"``: for each scale the image is resized (bilinear), predicted with sliding
  windows when it exceeds the crop in either side (whole otherwise), optionally also flipped;
  every prediction is resized back, turned into softmax probabilities and averaged; the log of
  the mean probability is returned.

``flip=True`` with ``"whole"`` / ``"sliding"`` averages the logits with those of the
horizontally flipped image (flipped back). ``model_fn(x)`` may answer at any resolution; its
logits are upsampled (bilinear, ``align_corners=False``) to the size of ``x``.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "MODES",
    "confusion_matrix",
    "iou_from_confusion",
    "accuracy_from_confusion",
    "center_crop",
    "predict_logits",
    "evaluate",
    "format_iou_table",
    "scores_from_confusion",
]

MODES = ("whole", "center_crop", "sliding", "multiscale")

SizeLike = Union[int, Sequence[int]]


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


def confusion_matrix(
    pred: Tensor, target: Tensor, num_classes: int, ignore_index: int = 255
) -> Tensor:
    """Confusion matrix ``[C, C]`` (int64, on ``target``'s device) of one or more images.

    Rows are ground truth, columns prediction. Pixels whose target is ``ignore_index`` or
    outside ``0..C-1`` are skipped. A prediction outside ``0..C-1`` on a counted pixel is an
    error (it would otherwise silently vanish from the counts).
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    pred = pred.reshape(-1).to(device=target.device, dtype=torch.int64)
    target = target.reshape(-1).to(torch.int64)
    valid = (target != ignore_index) & (target >= 0) & (target < num_classes)
    target = target[valid]
    pred = pred[valid]
    if pred.numel() and bool(((pred < 0) | (pred >= num_classes)).any()):
        raise ValueError(f"prediction outside 0..{num_classes - 1} on a labelled pixel")
    counts = torch.bincount(target * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def iou_from_confusion(
    conf: Tensor, classes: Optional[Sequence[int]] = None
) -> tuple[Tensor, float]:
    """Per-class IoU and mIoU, both in percent, from a confusion matrix (rows = ground truth).

    Returns ``(iou, miou)``: ``iou`` is a float64 CPU tensor ``[C]`` with NaN for a class
    absent from both ground truth and prediction; ``miou`` is the mean over the non-NaN
    classes, restricted to ``classes`` when given (e.g. SYNTHIA's 16-class mIoU), or NaN when
    no class is left.
    """
    if conf.ndim != 2 or conf.shape[0] != conf.shape[1]:
        raise ValueError(f"confusion matrix must be square [C, C], got {tuple(conf.shape)}")
    conf = conf.detach().to("cpu", torch.float64)
    tp = conf.diagonal()
    union = conf.sum(0) + conf.sum(1) - tp
    iou = torch.where(union > 0, tp / union.clamp_min(1.0), torch.full_like(tp, math.nan)) * 100.0
    sel = iou
    if classes is not None:
        idx = torch.as_tensor(list(classes), dtype=torch.int64)
        if idx.numel() and (idx.min() < 0 or idx.max() >= iou.numel()):
            raise ValueError(f"eval classes {list(classes)} outside 0..{iou.numel() - 1}")
        sel = iou[idx]
    sel = sel[~torch.isnan(sel)]
    miou = float(sel.mean()) if sel.numel() else math.nan
    return iou, miou


def accuracy_from_confusion(
    conf: Tensor, classes: Optional[Sequence[int]] = None
) -> tuple[Tensor, float, float]:
    """Per-class accuracy, mean class accuracy (mAcc) and overall pixel accuracy (aAcc), in percent.

    Per-class accuracy is recall, ``tp / (ground-truth pixels of the class)``: NaN for a class
    absent from the ground truth, left out of mAcc. aAcc is ``sum(tp) / counted pixels``. With
    ``classes`` both means use only those classes' ground-truth rows. Many CamVid/SegNet tables
    report mAcc ("class average accuracy") beside or instead of mIoU; it is always >= the mIoU
    of the same classes, often by 10 points, so the two must not be compared with each other.
    """
    if conf.ndim != 2 or conf.shape[0] != conf.shape[1]:
        raise ValueError(f"confusion matrix must be square [C, C], got {tuple(conf.shape)}")
    conf = conf.detach().to("cpu", torch.float64)
    tp = conf.diagonal()
    rows = conf.sum(1)
    acc = torch.where(rows > 0, tp / rows.clamp_min(1.0), torch.full_like(tp, math.nan)) * 100.0
    if classes is not None:
        idx = torch.as_tensor(list(classes), dtype=torch.int64)
        if idx.numel() and (idx.min() < 0 or idx.max() >= acc.numel()):
            raise ValueError(f"eval classes {list(classes)} outside 0..{acc.numel() - 1}")
        sel, tp, rows = acc[idx], tp[idx], rows[idx]
    else:
        sel = acc
    sel = sel[~torch.isnan(sel)]
    macc = float(sel.mean()) if sel.numel() else math.nan
    aacc = float(tp.sum() / rows.sum() * 100.0) if rows.sum() > 0 else math.nan
    return acc, macc, aacc


# --------------------------------------------------------------------------------------------
# Inference
# --------------------------------------------------------------------------------------------


def _pair(v: SizeLike, what: str) -> tuple[int, int]:
    if isinstance(v, int):
        out = (v, v)
    else:
        out = tuple(int(s) for s in v)
        if len(out) != 2:
            raise ValueError(f"{what} must be an int or (h, w), got {v!r}")
    if min(out) < 1:
        raise ValueError(f"{what} must be positive, got {v!r}")
    return out  # type: ignore[return-value]


def center_crop(
    images: Tensor, labels: Optional[Tensor], crop_size: SizeLike
) -> tuple[Tensor, Optional[Tensor]]:
    """Crop the central ``crop_size`` region of images ``[..., H, W]`` and labels ``[..., H, W]``.

    A crop side larger than the image keeps that whole side (no padding). The offset is
    ``(H - h) // 2`` (the extra pixel of an odd margin goes to the bottom / right).
    """
    ch, cw = _pair(crop_size, "crop_size")
    H, W = images.shape[-2:]
    if labels is not None and tuple(labels.shape[-2:]) != (H, W):
        raise ValueError(
            f"image size {(H, W)} != label size {tuple(labels.shape[-2:])} for centre crop"
        )
    h, w = min(ch, H), min(cw, W)
    top, left = (H - h) // 2, (W - w) // 2
    images = images[..., top : top + h, left : left + w]
    if labels is not None:
        labels = labels[..., top : top + h, left : left + w]
    return images, labels


def _forward(model_fn: Callable[[Tensor], Tensor], x: Tensor, num_classes: int) -> Tensor:
    """``model_fn(x)`` as float32 logits at the size of ``x``."""
    out = model_fn(x)
    if not isinstance(out, Tensor) or out.ndim != 4:
        raise TypeError("model_fn must return a logits tensor [B, C, h, w]")
    if out.shape[0] != x.shape[0] or out.shape[1] != num_classes:
        raise ValueError(
            f"model_fn returned {tuple(out.shape)} for input {tuple(x.shape)}, "
            f"expected [{x.shape[0]}, {num_classes}, h, w]"
        )
    out = out.float()
    if out.shape[-2:] != x.shape[-2:]:
        out = F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return out


def _window_starts(size: int, crop: int, stride: int) -> list[int]:
    """Window offsets along one axis of length ``size >= crop``; the last one ends at the edge."""
    n = -(-max(size - crop, 0) // stride) + 1
    return sorted({min(i * stride, size - crop) for i in range(n)})


def _sliding(
    model_fn: Callable[[Tensor], Tensor],
    x: Tensor,
    num_classes: int,
    crop: tuple[int, int],
    stride: tuple[int, int],
    window_batch: int,
) -> Tensor:
    B, _, H, W = x.shape
    ch, cw = crop
    Hp, Wp = max(H, ch), max(W, cw)
    if (Hp, Wp) != (H, W):
        x = F.pad(x, (0, Wp - W, 0, Hp - H))  # zeros, bottom / right
    boxes = [
        (y, xx) for y in _window_starts(Hp, ch, stride[0]) for xx in _window_starts(Wp, cw, stride[1])
    ]
    logits = torch.zeros(B, num_classes, Hp, Wp, dtype=torch.float32, device=x.device)
    count = torch.zeros(1, 1, Hp, Wp, dtype=torch.float32, device=x.device)
    per_forward = max(1, window_batch // B)
    for i in range(0, len(boxes), per_forward):
        chunk = boxes[i : i + per_forward]
        crops = torch.cat([x[:, :, y : y + ch, xx : xx + cw] for y, xx in chunk])
        out = _forward(model_fn, crops, num_classes).view(len(chunk), B, num_classes, ch, cw)
        for k, (y, xx) in enumerate(chunk):
            logits[:, :, y : y + ch, xx : xx + cw] += out[k]
            count[:, :, y : y + ch, xx : xx + cw] += 1
    return (logits / count)[:, :, :H, :W]


def predict_logits(
    model_fn: Callable[[Tensor], Tensor],
    images: Tensor,
    num_classes: int,
    mode: str = "whole",
    crop_size: SizeLike = (513, 513),
    stride: Optional[SizeLike] = None,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    window_batch: int = 8,
) -> Tensor:
    """Class scores ``[B, C, H, W]`` (float32) for normalised images ``[B, 3, H, W]``.

    ``"whole"``, ``"center_crop"`` (image already cropped by the caller) and ``"sliding"``
    return logits (averaged with the flipped prediction's logits when ``flip``);
    ``"multiscale"`` returns the log of the softmax probabilities averaged over
    ``scales`` x flips. ``stride`` defaults to ``round(2/3 * crop)`` per side and may not exceed
    the crop; ``window_batch`` is the most images+windows stacked in one sliding forward.
    """
    if mode not in MODES:
        raise ValueError(f"unknown eval mode {mode!r}; expected one of {', '.join(MODES)}")
    if images.ndim != 4:
        raise ValueError(f"images must be [B, 3, H, W], got {tuple(images.shape)}")
    crop = _pair(crop_size, "crop_size")
    if stride is None:
        strides = (max(1, round(crop[0] * 2 / 3)), max(1, round(crop[1] * 2 / 3)))
    else:
        strides = _pair(stride, "stride")
    if strides[0] > crop[0] or strides[1] > crop[1]:
        raise ValueError(f"stride {strides} larger than crop {crop} would leave pixels unseen")
    if window_batch < 1:
        raise ValueError(f"window_batch must be >= 1, got {window_batch}")
    if not images.is_floating_point():
        images = images.float()

    def single(x: Tensor, sliding: bool) -> Tensor:
        if sliding:
            return _sliding(model_fn, x, num_classes, crop, strides, window_batch)
        return _forward(model_fn, x, num_classes)

    if mode != "multiscale":
        sliding = mode == "sliding"
        out = single(images, sliding)
        if flip:
            out = (out + single(images.flip(-1), sliding).flip(-1)) / 2
        return out

    if not scales:
        raise ValueError("multiscale inference needs at least one scale")
    H, W = images.shape[-2:]
    acc: Optional[Tensor] = None
    n = 0
    for s in scales:
        if not s > 0:
            raise ValueError(f"scales must be positive, got {s}")
        size = (max(1, round(H * s)), max(1, round(W * s)))
        x = images
        if size != (H, W):
            x = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
        sliding = size[0] > crop[0] or size[1] > crop[1]
        for flipped in (False, True) if flip else (False,):
            out = single(x.flip(-1) if flipped else x, sliding)
            if flipped:
                out = out.flip(-1)
            if size != (H, W):
                out = F.interpolate(out, size=(H, W), mode="bilinear", align_corners=False)
            logp = out.log_softmax(1)
            # running log(sum of probabilities), numerically stable (no log(0))
            acc = logp if acc is None else torch.logaddexp(acc, logp)
            n += 1
    assert acc is not None
    return acc - math.log(n)


# --------------------------------------------------------------------------------------------
# Split evaluation
# --------------------------------------------------------------------------------------------


def evaluate(
    model_fn: Callable[[Tensor], Tensor],
    loader: Iterable[dict],
    num_classes: int,
    mode: str = "whole",
    crop_size: SizeLike = (513, 513),
    stride: Optional[SizeLike] = None,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    ignore_index: int = 255,
    device: Union[str, torch.device] = "cpu",
    class_names: Optional[Sequence[str]] = None,
    eval_classes: Optional[Sequence[int]] = None,
    progress: bool = False,
    window_batch: int = 8,
    crf: Optional[Callable[[Tensor, Tensor], Tensor]] = None,
) -> dict:
    """mIoU of ``model_fn`` over a loader of ``{"image": [B,3,H,W] float, "mask": [B,H,W]}``.

    One confusion matrix is accumulated over the whole split. When ``model_fn`` is an
    ``nn.Module`` in training mode it is switched to eval mode for the run and restored after.
    ``crf(images, scores) -> labels`` (e.g. :func:`u2plus.engine.crf.crf_labels`) also scores the
    post-processed predictions of the same forward passes, under ``"crf"``.

    Returns ``{"mIoU": float (percent; NaN if nothing was counted), "per_class": {name: IoU
    percent or None}, "mAcc": mean class accuracy, "aAcc": pixel accuracy, "per_class_acc":
    {name: accuracy percent or None} (see :func:`accuracy_from_confusion`), "num_images": int,
    "confusion": [[int]] (rows = ground truth), "eval_classes": list[int] | None}``; with ``crf``
    also ``"crf": {"mIoU", "per_class", "mAcc", "aAcc", "per_class_acc"}``.
    """
    if mode not in MODES:
        raise ValueError(f"unknown eval mode {mode!r}; expected one of {', '.join(MODES)}")
    if class_names is None:
        names = [str(i) for i in range(num_classes)]
    else:
        names = [str(n) for n in class_names]
        if len(names) != num_classes:
            raise ValueError(f"{len(names)} class names for {num_classes} classes")
        if len(set(names)) != len(names):
            raise ValueError("class names must be unique")
    device = torch.device(device)

    was_training = isinstance(model_fn, torch.nn.Module) and model_fn.training
    if was_training:
        model_fn.eval()
    conf = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    conf_crf = conf.clone()
    num_images = 0
    batches: Iterable[dict] = loader
    if progress:
        from tqdm import tqdm

        batches = tqdm(loader, desc=f"eval ({mode})", unit="batch", dynamic_ncols=True)
    try:
        with torch.inference_mode():
            for batch in batches:
                if "image" not in batch or "mask" not in batch:
                    raise KeyError("evaluation batches need 'image' and 'mask' entries")
                images = torch.as_tensor(batch["image"]).as_subclass(Tensor).to(device)
                masks = torch.as_tensor(batch["mask"]).as_subclass(Tensor).to(device)
                if images.ndim == 3:
                    images = images.unsqueeze(0)
                if masks.ndim == images.ndim:  # [B, 1, H, W]
                    masks = masks.squeeze(1)
                elif masks.ndim == 2:
                    masks = masks.unsqueeze(0)
                images = images.float()
                masks = masks.long()
                run_mode = mode
                if mode == "center_crop":
                    images, masks = center_crop(images, masks, crop_size)
                    run_mode = "whole"
                logits = predict_logits(
                    model_fn, images, num_classes, mode=run_mode, crop_size=crop_size,
                    stride=stride, scales=scales, flip=flip, window_batch=window_batch,
                )
                conf += confusion_matrix(logits.max(1).indices, masks, num_classes, ignore_index)
                if crf is not None:
                    conf_crf += confusion_matrix(crf(images, logits), masks, num_classes, ignore_index)
                num_images += images.shape[0]
    finally:
        if was_training:
            model_fn.train()
        if progress:
            batches.close()  # type: ignore[union-attr]

    result = {
        **scores_from_confusion(conf, names, eval_classes),
        "num_images": num_images,
        "confusion": conf.cpu().tolist(),
        "eval_classes": None if eval_classes is None else [int(c) for c in eval_classes],
    }
    if crf is not None:
        result["crf"] = scores_from_confusion(conf_crf, names, eval_classes)
    return result


def scores_from_confusion(conf: Tensor, names: Sequence[str], eval_classes: Optional[Sequence[int]] = None) -> dict:
    """``{"mIoU", "per_class", "mAcc", "aAcc", "per_class_acc"}`` of a confusion matrix (percent;
    None for a class without pixels)."""
    iou, miou = iou_from_confusion(conf, eval_classes)
    acc, macc, aacc = accuracy_from_confusion(conf, eval_classes)

    def per_class(values: Tensor) -> dict:
        return {n: (None if math.isnan(v) else float(v)) for n, v in zip(names, values.tolist())}

    return {"mIoU": miou, "per_class": per_class(iou), "mAcc": macc, "aAcc": aacc, "per_class_acc": per_class(acc)}


def format_iou_table(result: dict) -> str:
    """A text table: one class a line with its IoU and, when the result has them, its accuracy
    (2 decimals, ``n/a`` for absent), then the mIoU line (with mAcc and aAcc beside it).

    Classes outside ``result["eval_classes"]`` (when set) are marked as not in the mean.
    """
    per_class = result["per_class"]
    per_acc = result.get("per_class_acc")
    subset = result.get("eval_classes")
    names = list(per_class)
    in_mean = set(range(len(names))) if subset is None else set(subset)
    label = "mIoU" if subset is None else f"mIoU{len(in_mean)}"
    width = max([len("class"), len(label)] + [len(n) for n in names])

    def fmt(v) -> str:
        return "n/a" if v is None or math.isnan(v) else f"{v:.2f}"

    header = f"{'class':<{width}}  {'IoU':>6}" + (f"  {'Acc':>6}" if per_acc else "")
    rule = "-" * len(header)
    lines = [header, rule]
    for i, name in enumerate(names):
        acc_cell = f"  {fmt(per_acc.get(name)):>6}" if per_acc else ""
        note = "" if i in in_mean else "  (not in mean)"
        lines.append(f"{name:<{width}}  {fmt(per_class[name]):>6}{acc_cell}{note}")
    lines.append(rule)
    summary = f"{label:<{width}}  {fmt(result['mIoU']):>6}"
    if "mAcc" in result:
        summary += f"  (mAcc {fmt(result['mAcc'])}, aAcc {fmt(result.get('aAcc'))})"
    lines.append(summary)
    if "num_images" in result:
        lines.append(f"({result['num_images']} images)")
    return "\n".join(lines)
