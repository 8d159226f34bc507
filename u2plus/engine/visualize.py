"""``u2plus visualize``: the paper's Fig. 2 panels for any image and checkpoint.

(a) per-pixel entropy of the prediction (Eq. 11); (b) pseudo-labels of reliable pixels, with
unreliable ones (entropy in the top alpha fraction, Eq. 12-13) blanked in white; (c) class
probabilities of one reliable pixel; (d) of one unreliable pixel: confused among a few classes,
yet sure it is none of the others, which is what makes it a useful negative.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..data import eval_data_cfg
from ..data.base import read_image
from ..losses.entropy import pixel_entropy
from ..losses.partition import entropy_threshold, reliable_mask
from ..viz import colorize, entropy_map_rgb, palette_for
from .evaluate import predict_logits
from .inference import collect_inputs, load_for_inference, rescale_image


def pick_pixels(entropy: np.ndarray, reliable: np.ndarray) -> tuple[tuple[int, int], tuple[int, int]]:
    """(row, col) of a typical reliable pixel (median entropy among reliable ones) and of a
    clearly unreliable one (90th entropy percentile among unreliable ones)."""
    def at_quantile(mask: np.ndarray, q: float) -> tuple[int, int]:
        idx = np.flatnonzero(mask.ravel())
        if idx.size == 0:
            idx = np.arange(entropy.size)
        order = idx[np.argsort(entropy.ravel()[idx], kind="stable")]
        flat = order[min(int(q * (order.size - 1)), order.size - 1)]
        return divmod(int(flat), entropy.shape[1])

    return at_quantile(reliable, 0.5), at_quantile(~reliable, 0.9)


def fig2_panels(image_uint8: np.ndarray, prob: np.ndarray, alpha: float, class_names, palette, path: Path) -> dict:
    """Draw the four panels into ``path`` (PNG); ``prob`` is [C, H, W]. Returns the numbers shown."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = torch.from_numpy(prob)[None]
    entropy_t = pixel_entropy(p)
    gamma = entropy_threshold(entropy_t, alpha)
    reliable = reliable_mask(entropy_t, gamma)[0].numpy()
    entropy = entropy_t[0].numpy()
    labels = prob.argmax(0)
    pseudo = colorize(labels.astype(np.int64), palette)
    pseudo[~reliable] = 255  # unreliable pixels blanked (white), as in the paper's Fig. 2b
    rel_px, unrel_px = pick_pixels(entropy, reliable)

    fig, axes = plt.subplots(1, 5, figsize=(22, 4.2), gridspec_kw={"width_ratios": [1.2, 1.2, 1.2, 1, 1]})
    axes[0].imshow(image_uint8)
    axes[0].set_title("image")
    axes[1].imshow(entropy_map_rgb(entropy, vmax=float(np.log(prob.shape[0]))))
    axes[1].set_title("(a) entropy H(p)")
    axes[2].imshow(pseudo)
    axes[2].set_title(f"(b) reliable pseudo-labels (white: top {alpha:.0%} entropy)")
    for ax in axes[:3]:
        ax.axis("off")
        ax.plot(rel_px[1], rel_px[0], "x", color="yellow", markersize=12, mew=3)
        ax.plot(unrel_px[1], unrel_px[0], "x", color="cyan", markersize=12, mew=3)
    names = list(class_names) if class_names else [str(i) for i in range(prob.shape[0])]
    shown = {}
    for ax, (r, c), title, key in ((axes[3], rel_px, "(c) reliable pixel (yellow x)", "reliable"),
                                   (axes[4], unrel_px, "(d) unreliable pixel (cyan x)", "unreliable")):
        probs = prob[:, r, c]
        colours = palette[: len(probs)] / 255.0
        ax.bar(range(len(probs)), probs, color=colours, edgecolor="black", linewidth=0.5)
        ax.set_xticks(range(len(probs)))
        ax.set_xticklabels(names, rotation=70, fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_title(f"{title}\nH = {entropy[r, c]:.2f}")
        shown[key] = {"pixel": [int(r), int(c)], "entropy": float(entropy[r, c]),
                      "probabilities": [round(float(x), 4) for x in probs]}
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    shown.update(gamma=float(gamma), reliable_fraction=float(reliable.mean()))
    return shown


@torch.inference_mode()
def visualize_paths(checkpoint: str, inputs: list[str], out_dir: str, alpha: float | None = None,
                    device: str = "auto") -> list[Path]:
    """Write ``<stem>_fig2.png`` for every input image; returns the written paths."""
    state, cfg, model, normalize, dev = load_for_inference(checkpoint, device)
    alpha = cfg.method.alpha0 if alpha is None else alpha
    data_cfg = eval_data_cfg(cfg.data)  # the evaluated domain's settings (the target's in DA)
    palette = palette_for(model.num_classes, data_cfg.dataset)
    written = []
    for path in collect_inputs(inputs):
        image = rescale_image(read_image(path), data_cfg.resize_factor, data_cfg.resize)
        logits = predict_logits(model.predict, normalize(image)[None].to(dev), model.num_classes, mode="whole")
        prob = logits.float().softmax(1)[0].cpu().numpy()
        out = Path(out_dir) / f"{path.stem}_fig2.png"
        fig2_panels(image.permute(1, 2, 0).numpy(), prob, alpha, state.get("class_names"), palette, out)
        written.append(out)
    return written
