"""Confusion matrix / IoU, inference modes (whole, centre crop, sliding, flip, multi-scale), evaluate()."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from u2plus.engine.evaluate import (
    center_crop,
    confusion_matrix,
    evaluate,
    accuracy_from_confusion,
    format_iou_table,
    iou_from_confusion,
    predict_logits,
)

# ---------------------------------------------------------------------------------- metrics

# 3 classes, 2x3, one ignore pixel. Counted pixels (gt -> pred):
# 0->0, 1->2, 2->2, (ignore), 1->1, 0->1
TARGET = torch.tensor([[0, 1, 2], [255, 1, 0]])
PRED = torch.tensor([[0, 2, 2], [1, 1, 1]])


def test_confusion_matrix_hand_computed():
    conf = confusion_matrix(PRED, TARGET, 3)
    assert conf.dtype == torch.int64
    assert conf.tolist() == [[1, 1, 0], [0, 1, 1], [0, 0, 1]]


def test_confusion_matrix_skips_ignore_and_out_of_range_targets():
    target = torch.tensor([[0, 7, -1], [255, 1, 3]])  # 7, -1, 255, 3 not counted for C=3
    pred = torch.tensor([[0, 0, 0], [0, 1, 2]])
    assert confusion_matrix(pred, target, 3).sum().item() == 2
    # a custom ignore index is honoured
    target = torch.tensor([0, 1, 2])
    assert confusion_matrix(torch.tensor([0, 1, 2]), target, 3, ignore_index=2).tolist() == [
        [1, 0, 0], [0, 1, 0], [0, 0, 0],
    ]


def test_confusion_matrix_rejects_bad_prediction_and_shape():
    with pytest.raises(ValueError):
        confusion_matrix(torch.tensor([5]), torch.tensor([0]), 3)
    with pytest.raises(ValueError):
        confusion_matrix(torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 2, dtype=torch.long), 3)


def test_confusion_matrix_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 5, (2, 7, 9), generator=g)
    target[target == 4] = 255
    pred = torch.randint(0, 4, (2, 7, 9), generator=g)
    ref = torch.zeros(4, 4, dtype=torch.long)
    for t, p in zip(target.flatten().tolist(), pred.flatten().tolist()):
        if t != 255:
            ref[t, p] += 1
    assert torch.equal(confusion_matrix(pred, target, 4), ref)


def test_iou_hand_computed():
    iou, miou = iou_from_confusion(confusion_matrix(PRED, TARGET, 3))
    # IoU = tp / (row sum + col sum - tp):
    # IoU0 = 1/(2+1-1) = 1/2, IoU1 = 1/(2+2-1) = 1/3, IoU2 = 1/(1+2-1) = 1/2
    assert iou.dtype == torch.float64
    assert iou.tolist() == pytest.approx([50.0, 100.0 / 3, 50.0])
    assert miou == pytest.approx((50 + 100 / 3 + 50) / 3)  # 44.44
    assert miou == pytest.approx(44.4444, abs=1e-3)


def test_absent_class_is_nan_and_excluded_but_false_positive_class_counts_zero():
    iou, miou = iou_from_confusion(confusion_matrix(PRED, TARGET, 4))
    assert math.isnan(iou[3].item())
    assert miou == pytest.approx(400 / 9)
    # class 3 predicted but never in the ground truth: IoU 0, and it is in the mean
    pred = PRED.clone()
    pred[0, 0] = 3
    iou, miou = iou_from_confusion(confusion_matrix(pred, TARGET, 4))
    assert iou[3].item() == 0.0
    # IoU0 = 0/(2+0-0) = 0, IoU1 = 1/3, IoU2 = 1/2, IoU3 = 0
    assert miou == pytest.approx((0 + 100 / 3 + 50 + 0) / 4)


def test_accuracy_hand_computed():
    acc, macc, aacc = accuracy_from_confusion(confusion_matrix(PRED, TARGET, 3))
    # conf [[1,1,0],[0,1,1],[0,0,1]]: Acc_c = tp / gt pixels of c = 1/2, 1/2, 1/1
    assert acc.tolist() == pytest.approx([50.0, 50.0, 100.0])
    assert macc == pytest.approx(200 / 3)
    assert aacc == pytest.approx(60.0)  # 3 of 5 counted pixels right
    # mAcc >= mIoU here (66.67 vs 44.44): the two are different metrics
    assert macc > iou_from_confusion(confusion_matrix(PRED, TARGET, 3))[1]


def test_accuracy_absent_class_is_nan_and_subset():
    pred = PRED.clone()
    pred[0, 0] = 3  # class 3 predicted, never in the ground truth: no accuracy (NaN), not 0
    acc, macc, aacc = accuracy_from_confusion(confusion_matrix(pred, TARGET, 4))
    assert math.isnan(acc[3].item())
    assert acc[0].item() == 0.0
    assert macc == pytest.approx((0 + 50 + 100) / 3)
    assert aacc == pytest.approx(40.0)
    acc, macc, aacc = accuracy_from_confusion(confusion_matrix(PRED, TARGET, 3), [1, 2])
    assert macc == pytest.approx(75.0)
    assert aacc == pytest.approx(200 / 3)  # rows 1, 2: 2 of 3 pixels
    with pytest.raises(ValueError):
        accuracy_from_confusion(torch.zeros(2, 3))


def test_eval_classes_subset():
    conf = confusion_matrix(PRED, TARGET, 4)
    assert iou_from_confusion(conf, [0, 2])[1] == pytest.approx(50.0)
    assert iou_from_confusion(conf, [1])[1] == pytest.approx(100 / 3)
    assert math.isnan(iou_from_confusion(conf, [3])[1])  # only a NaN class left
    with pytest.raises(ValueError):
        iou_from_confusion(conf, [4])


# ---------------------------------------------------------------------------------- models


def pointwise_model(x: torch.Tensor) -> torch.Tensor:
    """A fixed 1x1 conv (3 -> 4 classes): translation-equivariant and purely per-pixel."""
    w = torch.tensor(
        [[1.0, -2.0, 0.5], [0.3, 1.0, -1.0], [-1.0, 0.2, 2.0], [0.7, 0.7, 0.7]]
    ).view(4, 3, 1, 1)
    return F.conv2d(x, w, bias=torch.tensor([0.1, -0.2, 0.0, 0.3]))


def local_x_model(x: torch.Tensor) -> torch.Tensor:
    """2 classes: channel 0 = column index INSIDE the input it is given, channel 1 = 0."""
    B, _, H, W = x.shape
    col = torch.arange(W, dtype=x.dtype).view(1, 1, 1, W).expand(B, 1, H, W)
    return torch.cat([col, torch.zeros_like(col)], 1)


def _image(h, w, seed=0):
    return torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------- whole


def test_whole_upsamples_low_resolution_logits():
    x = _image(8, 12)
    low = lambda t: pointwise_model(t)[:, :, ::4, ::4]  # noqa: E731  (2x3 output)
    out = predict_logits(low, x, 4)
    assert out.shape == (1, 4, 8, 12)
    ref = F.interpolate(low(x), size=(8, 12), mode="bilinear", align_corners=False)
    assert torch.allclose(out, ref)


def test_wrong_number_of_classes_is_an_error():
    with pytest.raises(ValueError):
        predict_logits(pointwise_model, _image(4, 4), 3)
    with pytest.raises(ValueError):
        predict_logits(pointwise_model, _image(4, 4), 4, mode="nope")


# ---------------------------------------------------------------------------------- sliding


def test_sliding_equals_whole_for_pointwise_model():
    x = torch.cat([_image(11, 17, 1), _image(11, 17, 2)])
    whole = predict_logits(pointwise_model, x, 4, mode="whole")
    slid = predict_logits(pointwise_model, x, 4, mode="sliding", crop_size=(5, 6), stride=(3, 4))
    assert slid.shape == whole.shape == (2, 4, 11, 17)
    assert torch.allclose(slid, whole, atol=1e-6)


def test_sliding_count_map_averaging_is_exact():
    # W=5, crop 3, default stride round(2/3*3)=2 -> windows at x=0 and x=2:
    # local columns [0,1,2] and [0,1,2] placed at 0..2 and 2..4
    # pixel 2 is covered twice: (2 + 0) / 2 = 1 -> expected row [0, 1, 1, 1, 2]
    x = _image(3, 5)
    out = predict_logits(local_x_model, x, 2, mode="sliding", crop_size=3)
    expected = torch.tensor([0.0, 1.0, 1.0, 1.0, 2.0]).expand(3, 5)
    assert torch.allclose(out[0, 0], expected)
    assert torch.all(out[0, 1] == 0)
    # stride 1: windows at 0, 1, 2 -> pixel j averages local columns j - s over windows s
    out = predict_logits(local_x_model, x, 2, mode="sliding", crop_size=3, stride=1)
    expected = torch.tensor([0.0, (1 + 0) / 2, (2 + 1 + 0) / 3, (2 + 1) / 2, 2.0]).expand(3, 5)
    assert torch.allclose(out[0, 0], expected)


def test_sliding_image_smaller_than_crop_is_padded_then_cropped():
    seen = []

    def model(t):
        seen.append(t.clone())
        return pointwise_model(t)

    x = _image(2, 3)
    out = predict_logits(model, x, 4, mode="sliding", crop_size=(4, 5))
    assert out.shape == (1, 4, 2, 3)
    assert torch.allclose(out, pointwise_model(x), atol=1e-6)
    assert len(seen) == 1 and seen[0].shape == (1, 3, 4, 5)
    assert torch.equal(seen[0][:, :, :2, :3], x)
    assert seen[0][:, :, 2:].abs().sum() == 0 and seen[0][:, :, :, 3:].abs().sum() == 0  # zeros
    # the position-dependent model sees the padded window: its columns start at 0
    out = predict_logits(local_x_model, x, 2, mode="sliding", crop_size=(4, 5))
    assert torch.equal(out[0, 0], torch.tensor([[0.0, 1, 2], [0, 1, 2]]))


def test_sliding_batches_windows():
    calls = []

    def model(t):
        calls.append(t.shape[0])
        return pointwise_model(t)

    x = torch.cat([_image(6, 6, 1), _image(6, 6, 2)])  # crop 3 stride 3 -> 4 windows per image
    out = predict_logits(model, x, 4, mode="sliding", crop_size=3, stride=3, window_batch=4)
    assert calls == [4, 4]  # 2 windows x 2 images per forward, 2 forwards
    assert torch.allclose(out, pointwise_model(x), atol=1e-6)
    with pytest.raises(ValueError):  # stride larger than crop would leave holes
        predict_logits(model, x, 4, mode="sliding", crop_size=3, stride=4)


# ---------------------------------------------------------------------------------- flip


def test_flip_averaging_hand_computed():
    # channel 0 = column index (0..3); flipped prediction flipped back = 3 - col
    # average = 1.5 everywhere; channel 1 (0) unchanged
    x = _image(2, 4)
    out = predict_logits(local_x_model, x, 2, mode="whole", flip=True)
    assert torch.allclose(out[0, 0], torch.full((2, 4), 1.5))
    assert torch.all(out[0, 1] == 0)
    # no flip -> the raw column index
    out = predict_logits(local_x_model, x, 2, mode="whole", flip=False)
    assert torch.equal(out[0, 0], torch.arange(4.0).expand(2, 4))


def test_flip_is_neutral_for_pointwise_model_with_sliding():
    x = _image(7, 9)
    out = predict_logits(pointwise_model, x, 4, mode="sliding", crop_size=4, flip=True)
    assert torch.allclose(out, pointwise_model(x), atol=1e-5)


def test_flip_with_sliding_hand_computed():
    # W=5 crop 3 stride 2: unflipped row [0,1,1,1,2]; the flipped image gives the same row
    # in flipped coordinates, flipped back [2,1,1,1,0]; average 1 everywhere
    out = predict_logits(local_x_model, _image(3, 5), 2, mode="sliding", crop_size=3, flip=True)
    assert torch.allclose(out[0, 0], torch.ones(3, 5))


# ---------------------------------------------------------------------------------- multiscale


def test_multiscale_single_scale_equals_whole():
    x = _image(9, 10)
    ms = predict_logits(pointwise_model, x, 4, mode="multiscale", scales=(1.0,), crop_size=16)
    whole = predict_logits(pointwise_model, x, 4, mode="whole")
    assert torch.allclose(ms, whole.log_softmax(1), atol=1e-5)
    assert torch.equal(ms.argmax(1), whole.argmax(1))


def test_multiscale_averages_probabilities_over_flips():
    x = _image(2, 4)
    ms = predict_logits(local_x_model, x, 2, mode="multiscale", crop_size=8, flip=True)
    col = torch.arange(4.0)
    p = (torch.softmax(torch.stack([col, torch.zeros(4)]), 0)
         + torch.softmax(torch.stack([3 - col, torch.zeros(4)]), 0)) / 2
    assert torch.allclose(ms[0], p.log().unsqueeze(1).expand(2, 2, 4), atol=1e-6)
    # averaging logits instead would give softmax([1.5, 0]) everywhere, which differs
    assert not torch.allclose(ms[0, 0, 0], torch.softmax(torch.tensor([1.5, 0.0]), 0)[0].log())


def test_multiscale_resizes_and_uses_sliding_above_crop():
    shapes = []

    def model(t):
        shapes.append(tuple(t.shape[-2:]))
        return torch.zeros(t.shape[0], 4, *t.shape[-2:]) + torch.tensor([0.0, 1, 2, 3]).view(1, 4, 1, 1)

    x = _image(6, 8)
    out = predict_logits(model, x, 4, mode="multiscale", scales=(0.5, 2.0), crop_size=(8, 8))
    assert out.shape == (1, 4, 6, 8)
    # scale 0.5 -> 3x4 whole; scale 2.0 -> 12x16 > crop -> 8x8 windows
    assert shapes[0] == (3, 4) and all(s == (8, 8) for s in shapes[1:]) and len(shapes) > 1
    # a constant prediction is unchanged by the scale averaging
    assert torch.allclose(out, torch.tensor([0.0, 1, 2, 3]).log_softmax(0).view(1, 4, 1, 1).expand_as(out), atol=1e-5)


# ---------------------------------------------------------------------------------- centre crop


def test_center_crop_shapes_and_content():
    img = torch.arange(2 * 3 * 6 * 7, dtype=torch.float32).view(2, 3, 6, 7)
    lab = torch.arange(2 * 6 * 7).view(2, 6, 7)
    ci, cl = center_crop(img, lab, (2, 3))
    assert ci.shape == (2, 3, 2, 3) and cl.shape == (2, 2, 3)
    # top = (6-2)//2 = 2, left = (7-3)//2 = 2
    assert torch.equal(ci, img[:, :, 2:4, 2:5]) and torch.equal(cl, lab[:, 2:4, 2:5])
    # crop larger than the image in one side keeps that whole side, no padding
    ci, cl = center_crop(img, lab, (10, 3))
    assert ci.shape == (2, 3, 6, 3) and torch.equal(cl, lab[:, :, 2:5])
    ci, cl = center_crop(img, lab, 513)
    assert torch.equal(ci, img) and torch.equal(cl, lab)


# ---------------------------------------------------------------------------------- evaluate


def onehot_model(x: torch.Tensor) -> torch.Tensor:
    """Predicts the class written in the image's first channel."""
    return F.one_hot(x[:, 0].round().long(), 2).permute(0, 3, 1, 2).float()


def _loader(pairs, batch_size=1):
    samples = [
        {"image": torch.stack([p.float()] * 3), "mask": torch.as_tensor(g, dtype=torch.long)}
        for p, g in pairs
    ]
    return torch.utils.data.DataLoader(samples, batch_size=batch_size, shuffle=False)


def test_evaluate_accumulates_one_confusion_matrix_not_per_image_mean():
    # image 1: all class 0, all right -> per-image mIoU 100 (class 1 absent)
    # image 2: gt all 1, pred [1,1,0,0] -> per-image IoU0 = 0, IoU1 = 50 -> 25
    # per-image average 62.5; split confusion [[4,0],[2,2]] -> IoU0 = 4/6, IoU1 = 2/4 -> 58.33
    pairs = [
        (torch.tensor([[0, 0], [0, 0]]), [[0, 0], [0, 0]]),
        (torch.tensor([[1, 1], [0, 0]]), [[1, 1], [1, 1]]),
    ]
    res = evaluate(onehot_model, _loader(pairs), 2, class_names=["bg", "fg"])
    assert res["confusion"] == [[4, 0], [2, 2]]
    assert res["mIoU"] == pytest.approx((400 / 6 + 50) / 2)
    assert res["mIoU"] != pytest.approx(62.5)
    per_image = [
        iou_from_confusion(confusion_matrix(p, torch.tensor(g), 2))[1] for p, g in pairs
    ]
    assert sum(per_image) / 2 == pytest.approx(62.5)
    assert res["per_class"] == {"bg": pytest.approx(400 / 6), "fg": pytest.approx(50.0)}
    assert res["num_images"] == 2


def test_evaluate_known_miou_with_ignore_absent_class_and_subset():
    pred = torch.tensor([[0, 1, 1], [1, 1, 0]])
    gt = [[0, 1, 255], [1, 0, 255]]  # counted: 0->0, 1->1, 1->1, 0->1 -> [[1,1],[0,2]]
    loader = _loader([(pred, gt), (pred, gt)], batch_size=2)

    # 3 classes: class c never predicted, never in the ground truth
    def model3(x):
        return torch.cat([onehot_model(x), torch.full_like(x[:, :1], -1.0)], 1)

    res = evaluate(model3, loader, 3, class_names=["a", "b", "c"], eval_classes=[1],
                   progress=True)
    assert res["confusion"] == [[2, 2, 0], [0, 4, 0], [0, 0, 0]]
    # IoU a = 2/(4+2-2) = 50, IoU b = 4/(4+6-4) = 66.67, c absent -> None
    assert res["per_class"]["a"] == pytest.approx(50.0)
    assert res["per_class"]["b"] == pytest.approx(200 / 3)
    assert res["per_class"]["c"] is None
    assert res["mIoU"] == pytest.approx(200 / 3)  # subset [1]
    assert res["num_images"] == 2
    full = evaluate(model3, loader, 3, class_names=["a", "b", "c"])
    assert full["mIoU"] == pytest.approx((50 + 200 / 3) / 2)  # c (NaN) left out of the mean
    # accuracy = tp / gt pixels: a 2/4 = 50, b 4/4 = 100; mAcc over subset [1]; aAcc over row b
    assert res["per_class_acc"] == {"a": pytest.approx(50.0), "b": pytest.approx(100.0), "c": None}
    assert res["mAcc"] == pytest.approx(100.0) and res["aAcc"] == pytest.approx(100.0)
    assert full["mAcc"] == pytest.approx(75.0) and full["aAcc"] == pytest.approx(75.0)
    table = format_iou_table(res)
    assert "50.00" in table and "66.67" in table and "n/a" in table
    assert table.splitlines()[-2].startswith("mIoU1") and "66.67" in table.splitlines()[-2]
    assert "mAcc 100.00, aAcc 100.00" in table.splitlines()[-2]
    assert table.splitlines()[2].split() == ["a", "50.00", "50.00", "(not", "in", "mean)"]


def test_evaluate_center_crop_crops_the_mask_and_restores_train_mode():
    class Net(torch.nn.Module):
        def forward(self, x):
            assert not self.training
            return onehot_model(x)

    pred = torch.zeros(4, 6, dtype=torch.long)
    gt = torch.zeros(4, 6, dtype=torch.long)
    gt[:, 0] = 1  # outer column of class 1: cropped away by a 2x4 centre crop
    net = Net().train()
    res = evaluate(net, _loader([(pred, gt)]), 2, mode="center_crop", crop_size=(2, 4))
    assert net.training
    assert res["confusion"] == [[8, 0], [0, 0]]
    assert res["mIoU"] == pytest.approx(100.0)
    whole = evaluate(net, _loader([(pred, gt)]), 2, mode="whole")
    assert whole["confusion"] == [[20, 0], [4, 0]]


def test_evaluate_sliding_mode_matches_whole():
    g = torch.Generator().manual_seed(3)
    pairs = [(torch.randint(0, 2, (7, 9), generator=g), torch.randint(0, 2, (7, 9), generator=g))]
    a = evaluate(onehot_model, _loader(pairs), 2, mode="sliding", crop_size=4)
    b = evaluate(onehot_model, _loader(pairs), 2, mode="whole")
    assert a["confusion"] == b["confusion"]
    assert sum(map(sum, a["confusion"])) == 63
