"""CAM quality: how good the CAM pseudo-labels are, on the training images that have masks (as
weakly-supervised papers report it beside the segmentation mIoU).

For each whole image (no crop, no augmentation) the evaluated model's CAMs are turned into
pseudo-labels exactly as training does (:func:`u2plus.ws_criterion.cam_pseudo_label_maps`:
normalisation per tagged class, random walk, PAR, thresholds) and compared with the mask:

- ``mIoU``: on the pixels the pseudo-labels label (the ignore band between the two thresholds is
  left out), with ``labelled_fraction`` the share of pixels labelled;
- ``mIoU_dense``: every pixel labelled with the single threshold ``method.cam_beta`` (Eq. 8).
"""

from __future__ import annotations

import torch

from ..data.sampler import collate
from ..data.transforms import EvalTransform
from ..losses.cam import cam_pseudo_labels
from ..methods.weakly_supervised import ws_criterion_config
from ..ws_criterion import WSCriterionConfig, cam_pseudo_label_maps, thresholds
from .evaluate import confusion_matrix, scores_from_confusion

__all__ = ["evaluate_cam_quality", "run_cam_quality"]


def run_cam_quality(cfg, model, dataset, mean, std, device) -> dict:
    """CAM quality of ``model`` on ``dataset`` (the tagged training images with masks,
    :func:`u2plus.data.cam_quality_set`), whole images normalised with ``mean``/``std``, with the
    knobs of ``cfg.method``."""
    dataset = dataset.with_items(dataset.items)
    dataset.transform = EvalTransform(mean, std)
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, num_workers=min(cfg.data.num_workers, 2),
                                         collate_fn=collate)
    return evaluate_cam_quality(model, loader, ws_criterion_config(cfg.method), dataset.num_classes,
                                dataset.class_names, cfg.data.ignore_index, device)


@torch.inference_mode()
def evaluate_cam_quality(model, loader, cfg: WSCriterionConfig, num_classes: int, class_names, ignore_index: int = 255,
                         device="cpu") -> dict:
    """CAM quality of ``model`` (a Segmentor with the weakly-supervised heads, put in eval mode)
    over a loader of ``{"image", "mask", "tags"}``; see the module docstring."""
    model.eval()
    conf = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    conf_dense = conf.clone()
    labelled = counted = images_seen = 0
    fg, bg = thresholds(cfg)
    for batch in loader:
        images, masks, tags = (batch[k].to(device) for k in ("image", "mask", "tags"))
        out = model(images.float(), with_cam=True)
        _, walked = cam_pseudo_label_maps(images, out["cams"], tags, out["affinity"], cfg)
        labels = cam_pseudo_labels(walked, fg, bg, ignore_index)
        known = (labels != ignore_index) & (masks != ignore_index)
        conf += confusion_matrix(labels[known], masks[known], num_classes, ignore_index)
        conf_dense += confusion_matrix(cam_pseudo_labels(walked, cfg.cam_beta, cfg.cam_beta, ignore_index), masks,
                                       num_classes, ignore_index)
        labelled += int(known.sum())
        counted += int((masks != ignore_index).sum())
        images_seen += images.shape[0]
    dense = scores_from_confusion(conf_dense, class_names)
    return {**scores_from_confusion(conf, class_names), "labelled_fraction": labelled / max(counted, 1),
            "mIoU_dense": dense["mIoU"], "per_class_dense": dense["per_class"], "num_images": images_seen}
