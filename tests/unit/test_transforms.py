"""u2plus.data.transforms on synthetic 3x20x30 tv_tensors images and masks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torchvision import tv_tensors

from u2plus.config import DataConfig
from u2plus.data.transforms import EvalTransform, Normalize, TrainTransform

H, W = 20, 30
MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.1, 0.2)
ZERO_MEAN, UNIT_STD = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)


def data_cfg(**kw):
    base = dict(crop_size=[16, 24], scale_range=[1.0, 1.0], hflip=False)
    base.update(kw)
    return OmegaConf.structured(DataConfig(**base))


def sample(image: torch.Tensor, mask: torch.Tensor | None = None) -> dict:
    s = {"id": "x", "index": 3, "image": tv_tensors.Image(image)}
    if mask is not None:
        s["mask"] = tv_tensors.Mask(mask)
    return s


def fine_mask() -> torch.Tensor:
    """Every pixel's neighbourhood differs: a position is identifiable from a small window."""
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 8, (H, W), generator=g)


def block_mask(block: int = 6) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    coarse = torch.randint(0, 8, (-(-H // block), -(-W // block)), generator=g)
    return coarse.repeat_interleave(block, 0).repeat_interleave(block, 1)[:H, :W].contiguous()


def encoded_image(mask: torch.Tensor) -> torch.Tensor:
    img = torch.zeros(3, H, W, dtype=torch.uint8)
    img[0] = (mask * 10).to(torch.uint8)
    img[1] = 77
    img[2] = 200
    return img


def to_uint8_scale(image: torch.Tensor) -> torch.Tensor:
    """Undo Normalize(ZERO_MEAN, UNIT_STD): back to 0..255 units."""
    return image * 255.0


def find_window(crop: torch.Tensor, source: torch.Tensor):
    """Where ``crop`` (a 2-D window) sits in ``source`` or in its h-flip: (flipped, top, left) or None."""
    h, w = crop.shape
    for flipped, src in ((False, source), (True, source.flip(-1))):
        for top in range(src.shape[0] - h + 1):
            for left in range(src.shape[1] - w + 1):
                if torch.equal(src[top:top + h, left:left + w], crop):
                    return flipped, top, left
    return None


def test_normalize_constant_image_hand_values():
    img = torch.full((3, 4, 5), 200, dtype=torch.uint8)
    out = Normalize(MEAN, STD)(img)
    assert out.dtype == torch.float32 and type(out) is torch.Tensor
    # (200/255 - mean) / std
    expected = [1.1372549, 3.8431373, 2.4215686]
    for c in range(3):
        assert torch.allclose(out[c], torch.full((4, 5), expected[c]), atol=1e-5)


def test_train_output_shapes_and_normalisation():
    t = TrainTransform(data_cfg(crop_size=[16, 24], scale_range=[0.8, 1.2], hflip=True), MEAN, STD)
    img = torch.full((3, H, W), 200, dtype=torch.uint8)
    mask = torch.ones(H, W, dtype=torch.int64)
    torch.manual_seed(0)
    out = t(sample(img, mask))
    assert out["id"] == "x" and out["index"] == 3
    assert out["image"].shape == (3, 16, 24)
    assert out["mask"].shape == (16, 24)
    assert out["image"].dtype == torch.float32
    assert out["mask"].dtype == torch.int64
    assert type(out["image"]) is torch.Tensor and type(out["mask"]) is torch.Tensor
    valid = out["mask"] != 255
    assert valid.any()
    expected = [1.1372549, 3.8431373, 2.4215686]
    for c in range(3):
        assert torch.allclose(out["image"][c][valid], torch.tensor(expected[c]), atol=1e-4)
    assert "image_strong" not in out


def test_crop_larger_than_image_pads_mask_with_ignore_and_image_with_normalised_zero():
    t = TrainTransform(data_cfg(crop_size=[32, 40], scale_range=[1.0, 1.0]), MEAN, STD)
    img = torch.full((3, H, W), 200, dtype=torch.uint8)
    mask = torch.ones(H, W, dtype=torch.int64)
    for seed in range(3):
        torch.manual_seed(seed)
        out = t(sample(img, mask))
        assert out["image"].shape == (3, 32, 40) and out["mask"].shape == (32, 40)
        pad = out["mask"] == 255
        # the whole 20x30 image is inside a 32x40 crop of the padded image only partly; at least
        # 32*40 - 20*30 pixels are padding, and every pixel is either padding or the image
        assert int(pad.sum()) >= 32 * 40 - H * W
        assert set(out["mask"].unique().tolist()) == {1, 255}
        pad_value = [-2.0, -4.0, -1.5]  # (0 - mean) / std
        for c in range(3):
            assert torch.allclose(out["image"][c][pad], torch.tensor(pad_value[c]))
            assert torch.allclose(out["image"][c][~pad], torch.tensor([1.1372549, 3.8431373, 2.4215686][c]),
                                  atol=1e-4)


def test_unlabeled_valid_marks_exactly_the_crop_padding():
    # an unlabeled image (no mask) with a void-like mask present or not: ``valid`` is False on
    # padding only, so void pixels of a diagnostics mask stay valid image content
    t = TrainTransform(data_cfg(crop_size=[32, 40], scale_range=[1.0, 1.0]), MEAN, STD, strong=True)
    img = torch.full((3, H, W), 200, dtype=torch.uint8)
    void = torch.full((H, W), 255, dtype=torch.int64)
    for with_mask in (False, True):
        torch.manual_seed(0)
        out = t(sample(img, void if with_mask else None))
        valid = out["valid"]
        assert valid.dtype == torch.bool and valid.shape == (32, 40)
        assert int(valid.sum()) == H * W  # the whole image lies inside the larger crop
        content = out["image"][0] > 0  # padding is normalised 0 = -2.0, the image +1.14
        assert torch.equal(valid, content)
    labeled = TrainTransform(data_cfg(crop_size=[32, 40]), MEAN, STD)(sample(img, void))
    assert "valid" not in labeled


def test_custom_ignore_index_used_for_padding():
    t = TrainTransform(data_cfg(crop_size=[24, 32], ignore_index=250), ZERO_MEAN, UNIT_STD)
    torch.manual_seed(0)
    out = t(sample(torch.zeros(3, H, W, dtype=torch.uint8), torch.zeros(H, W, dtype=torch.int64)))
    assert set(out["mask"].unique().tolist()) == {0, 250}


@pytest.mark.parametrize("scale_range", [[0.5, 2.0], [0.37, 0.61], [1.3, 1.7]])
def test_mask_values_never_interpolated(scale_range):
    # two sharp-contrast values next to each other: bilinear would create values in between
    mask = torch.zeros(H, W, dtype=torch.int64)
    mask[:, ::2] = 7
    mask[::3] = 3
    t = TrainTransform(data_cfg(crop_size=[18, 26], scale_range=scale_range, hflip=True), MEAN, STD)
    for seed in range(6):
        torch.manual_seed(seed)
        out = t(sample(encoded_image(mask), mask))
        assert out["mask"].dtype == torch.int64
        assert set(out["mask"].unique().tolist()) <= {0, 3, 7, 255}


def test_crop_and_flip_keep_image_and_mask_aligned_exactly():
    mask = fine_mask()
    t = TrainTransform(data_cfg(crop_size=[12, 16], scale_range=[1.0, 1.0], hflip=True), ZERO_MEAN, UNIT_STD)
    seen_flips, seen_offsets = set(), set()
    for seed in range(12):
        torch.manual_seed(seed)
        out = t(sample(encoded_image(mask), mask))
        assert torch.allclose(to_uint8_scale(out["image"][0]), out["mask"].float() * 10, atol=1e-3)
        where = find_window(out["mask"], mask)
        assert where is not None, "crop is not a window of the (possibly flipped) mask"
        seen_flips.add(where[0])
        seen_offsets.add(where[1:])
    assert seen_flips == {False, True}
    assert len(seen_offsets) > 3


def test_padded_crop_keeps_alignment():
    mask = fine_mask()
    t = TrainTransform(data_cfg(crop_size=[26, 34], scale_range=[1.0, 1.0], hflip=True), ZERO_MEAN, UNIT_STD)
    for seed in range(6):
        torch.manual_seed(seed)
        out = t(sample(encoded_image(mask), mask))
        valid = out["mask"] != 255
        img0 = to_uint8_scale(out["image"][0])
        assert torch.allclose(img0[valid], out["mask"][valid].float() * 10, atol=1e-3)
        assert torch.allclose(img0[~valid], torch.tensor(0.0))
        rows, cols = valid.any(1).nonzero().flatten(), valid.any(0).nonzero().flatten()
        window = out["mask"][rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        assert (window != 255).all()  # the image region is one rectangle
        assert find_window(window, mask) is not None


def test_scaling_keeps_alignment_away_from_edges():
    mask = block_mask()
    t = TrainTransform(data_cfg(crop_size=[16, 24], scale_range=[0.5, 2.0], hflip=True), ZERO_MEAN, UNIT_STD)
    checked = 0
    for seed in range(10):
        torch.manual_seed(seed)
        out = t(sample(encoded_image(mask), mask))
        m = out["mask"].float()[None, None]
        # pixels whose 5x5 mask neighbourhood (inside the crop) is one non-ignore value
        hi = F.max_pool2d(m, 5, stride=1)[0, 0]
        lo = -F.max_pool2d(-m, 5, stride=1)[0, 0]
        centre = out["mask"][2:-2, 2:-2]
        ok = (hi == lo) & (centre != 255)
        img0 = to_uint8_scale(out["image"][0])[2:-2, 2:-2]
        assert torch.all((img0[ok] - centre[ok].float() * 10).abs() <= 1.01)
        checked += int(ok.sum())
    assert checked > 500


def test_strong_view_has_same_geometry_as_weak():
    mask = fine_mask()
    cfg = data_cfg(crop_size=[16, 24], scale_range=[0.7, 1.4], hflip=True,
                   color_jitter_p=0.0, grayscale_p=0.0, blur_p=0.0)
    t = TrainTransform(cfg, MEAN, STD, strong=True)
    for seed in range(4):
        torch.manual_seed(seed)
        out = t(sample(encoded_image(mask), mask))
        assert out["image_strong"].shape == out["image"].shape
        assert torch.equal(out["image_strong"], out["image"])


def test_strong_view_changes_colours_not_pixels_positions():
    mask = fine_mask()
    cfg = data_cfg(crop_size=[16, 24], scale_range=[1.0, 1.0], hflip=True,
                   color_jitter_p=0.0, grayscale_p=1.0, blur_p=0.0)
    t = TrainTransform(cfg, ZERO_MEAN, UNIT_STD, strong=True)
    torch.manual_seed(0)
    out = t(sample(encoded_image(mask), mask))
    weak, strong = to_uint8_scale(out["image"]), to_uint8_scale(out["image_strong"])
    assert not torch.equal(weak, strong)
    # grayscale: three equal channels, each the luma of the weak pixel at the same position
    assert torch.equal(strong[0], strong[1]) and torch.equal(strong[1], strong[2])
    luma = 0.2989 * weak[0] + 0.587 * weak[1] + 0.114 * weak[2]
    assert torch.allclose(strong[0], luma, atol=1.01)


def test_unlabeled_sample_without_mask():
    t = TrainTransform(data_cfg(), MEAN, STD, strong=True)
    torch.manual_seed(0)
    out = t(sample(torch.zeros(3, H, W, dtype=torch.uint8)))
    assert "mask" not in out
    assert out["image"].shape == out["image_strong"].shape == (3, 16, 24)


def test_same_global_seed_same_augmentation():
    mask = fine_mask()
    t = TrainTransform(data_cfg(scale_range=[0.5, 2.0], hflip=True), MEAN, STD)
    torch.manual_seed(5)
    a = t(sample(encoded_image(mask), mask))
    torch.manual_seed(5)
    b = t(sample(encoded_image(mask), mask))
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])


def test_eval_transform_keeps_size_and_values():
    mask = fine_mask()
    mask[0, 0] = 255
    out = EvalTransform(MEAN, STD)(sample(torch.full((3, H, W), 200, dtype=torch.uint8), mask))
    assert out["image"].shape == (3, H, W)
    assert out["mask"].shape == (H, W)
    assert out["mask"].dtype == torch.int64
    assert torch.equal(out["mask"], mask)
    assert torch.allclose(out["image"][1], torch.tensor(3.8431373), atol=1e-5)
    assert out["id"] == "x" and out["index"] == 3
    no_mask = EvalTransform(MEAN, STD)(sample(torch.zeros(3, 7, 9, dtype=torch.uint8)))
    assert "mask" not in no_mask and no_mask["image"].shape == (3, 7, 9)
    assert torch.allclose(no_mask["image"][2], torch.tensor(-1.5))
