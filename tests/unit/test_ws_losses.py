"""The weakly-supervised pieces on tiny hand-made tensors: CAMs (Eq. 5) and their normalisation,
the multi-label soft margin loss (Eq. 6), the threshold labelling (Eq. 8 and AFA's two
thresholds), random-walk propagation, pixel-adaptive refinement, the affinity targets and loss,
the anchors and negatives of Eq. 29 and 31 and the anchors' centroids of Eq. 30."""

from __future__ import annotations

import math

import pytest
import torch

from u2plus.losses.affinity import affinity_labels, affinity_loss, radius_mask, random_walk
from u2plus.losses.cam import cam_pseudo_labels, class_activation_maps, multilabel_soft_margin_loss, normalise_cams
from u2plus.losses.contrastive_masks import weakly_supervised_masks
from u2plus.losses.par import dilated_neighbours, pixel_adaptive_refinement
from u2plus.losses.prototypes import masked_class_feature_sums

IGN = 255


def test_cams_are_relu_of_the_classifier_weights_on_the_features_then_min_max_normalised():
    features = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [0.0, -1.0]]]).unsqueeze(0)  # [1, 2, 2, 2]
    weight = torch.tensor([[1.0, 1.0], [1.0, -2.0]])  # 2 classes x 2 channels
    cams = class_activation_maps(features, weight)
    # M^0 = ReLU(F0 + F1), M^1 = ReLU(F0 - 2 F1) (Eq. 5)
    assert cams[0, 0].tolist() == [[1.0, 3.0], [3.0, 3.0]]
    assert cams[0, 1].tolist() == [[1.0, 0.0], [3.0, 6.0]]
    assert torch.equal(class_activation_maps(features, weight.view(2, 2, 1, 1)), cams)  # the 1x1 conv weight
    norm = normalise_cams(cams)
    assert norm[0, 0] == pytest.approx(torch.tensor([[0.0, 1.0], [1.0, 1.0]]), abs=1e-4)  # (M - 1) / 2
    assert norm[0, 1] == pytest.approx(torch.tensor([[1 / 6, 0.0], [0.5, 1.0]]), abs=1e-4)  # M / 6
    # a class the image lacks gets a zero map
    assert normalise_cams(cams, torch.tensor([[1.0, 0.0]]))[0, 1].abs().sum() == 0


def test_multilabel_soft_margin_loss_by_hand():
    logits = torch.tensor([[0.0, 2.0], [-1.0, 1.0]])
    tags = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    # image 0: -(log s(0) + log s(-2)) / 2; image 1: -(log s(-1) + log s(1)) / 2; s = sigmoid
    image0 = (math.log(2.0) + math.log(1 + math.e ** 2)) / 2
    image1 = (math.log(1 + math.e) + math.log(1 + math.e ** -1)) / 2
    assert float(multilabel_soft_margin_loss(logits, tags)) == pytest.approx((image0 + image1) / 2, rel=1e-6)


def test_two_thresholds_label_foreground_background_and_ignore_between():
    cams = torch.tensor([[0.9, 0.5, 0.2, 0.6], [0.1, 0.3, 0.35, 0.7]]).view(1, 2, 1, 4)  # 2 foreground classes
    # best map 0.9 (class 1), 0.5 (ignore band), 0.35 (= background threshold: background), 0.7 (class 2)
    assert cam_pseudo_labels(cams, 0.55, 0.35, IGN)[0, 0].tolist() == [1, IGN, 0, 2]
    # Eq. 8's single threshold beta: foreground above it, background elsewhere, nothing ignored
    assert cam_pseudo_labels(cams, 0.45, 0.45, IGN)[0, 0].tolist() == [1, 1, 0, 2]
    valid = torch.tensor([[[True, True, True, False]]])  # crop padding is never labelled
    assert cam_pseudo_labels(cams, 0.55, 0.35, IGN, valid)[0, 0].tolist() == [1, IGN, 0, IGN]
    # an image without foreground tags has all-zero maps: background everywhere
    assert cam_pseudo_labels(torch.zeros(1, 2, 1, 4), 0.55, 0.35, IGN).tolist() == [[[0, 0, 0, 0]]]


def test_random_walk_on_a_tiny_affinity():
    maps = torch.tensor([1.0, 0.0, 0.0]).view(1, 1, 1, 3)  # a 1x3 grid
    affinity = torch.tensor([[[1.0, 0.5, 0.0], [0.5, 1.0, 0.5], [0.0, 0.5, 1.0]]])
    # T = A normalised per column (sums 1.5, 2, 1.5); M_j = sum_i M_i T_ij
    assert random_walk(maps, affinity, power=1).flatten().tolist() == pytest.approx([1 / 1.5, 0.5 / 2, 0.0], abs=1e-4)
    # power 2 sharpens: A^2 has 0.25 off the diagonal (sums 1.25, 1.5, 1.25)
    assert random_walk(maps, affinity, power=2).flatten().tolist() == pytest.approx([0.8, 0.25 / 1.5, 0.0], abs=1e-4)
    # radius 0 links a position to itself only: nothing moves
    assert torch.allclose(random_walk(maps, affinity, mask=radius_mask(1, 3, 0)), maps, atol=1e-4)
    # a constant map stays constant (every column of T sums to 1)
    constant = torch.full((1, 2, 1, 3), 0.7)
    assert torch.allclose(random_walk(constant, affinity), constant, atol=1e-4)


def test_radius_mask_links_positions_within_the_radius_in_rows_and_columns():
    mask = radius_mask(2, 3, 1)  # positions 0..5 of a 2x3 grid
    assert mask[0].tolist() == [True, True, False, True, True, False]
    assert mask[1].tolist() == [True, True, True, True, True, True]
    assert torch.equal(mask, mask.T)


def test_pixel_adaptive_refinement_keeps_a_cam_inside_its_colour_region():
    torch.manual_seed(0)
    image = torch.zeros(1, 3, 8, 8)
    image[..., 4:] = 1.0  # left half black, right half white
    image += 0.01 * torch.randn(1, 3, 8, 8)
    cam = torch.zeros(1, 1, 8, 8)
    cam[..., :4] = 1.0
    cam[..., 4:6] = 0.6  # the CAM leaks two columns into the white region
    refined = pixel_adaptive_refinement(image, cam, dilations=(1, 2), iterations=10)[0, 0]
    assert refined[:, :4].min() > 0.99  # the black region keeps its activation
    assert refined[:, 4:].max() < 0.1  # the leak into the white region (0.6) is gone
    # the weights of every pixel sum to 1: a constant map stays constant
    flat = pixel_adaptive_refinement(image, torch.full((1, 2, 8, 8), 0.3), dilations=(1, 2), iterations=3)
    assert torch.allclose(flat, torch.full_like(flat, 0.3), atol=1e-5)


def test_dilated_neighbours_order_and_replicated_border():
    x = torch.arange(9.0).view(1, 1, 3, 3)
    nb = dilated_neighbours(x, [1])[0, 0]  # [8, 3, 3]
    assert nb[:, 1, 1].tolist() == [0, 1, 2, 3, 5, 6, 7, 8]  # the centre's 8 neighbours, row by row
    assert nb[:, 0, 0].tolist() == [0, 0, 1, 0, 1, 3, 3, 4]  # the corner: borders replicated


def test_affinity_targets_and_loss_by_hand():
    labels = torch.tensor([[[0, 0, 1, IGN]]])  # a 1x4 grid
    targets = affinity_labels(labels, radius=1, ignore_index=IGN)[0]
    assert targets[0].tolist() == [IGN, 1, IGN, IGN]  # itself; same label; 2 apart > radius; ignored pixel
    assert targets[1].tolist() == [1, IGN, 0, IGN]
    assert targets[2].tolist() == [IGN, 0, IGN, IGN]
    affinity = torch.full((1, 4, 4), 0.5)
    affinity[0, 0, 1] = affinity[0, 1, 0] = 0.8
    affinity[0, 1, 2] = affinity[0, 2, 1] = 0.3
    # 0.5 * mean over positives of (1 - A) + 0.5 * mean over negatives of A
    assert float(affinity_loss(affinity, targets[None])) == pytest.approx(0.5 * 0.2 + 0.5 * 0.3)
    assert float(affinity_loss(affinity, torch.full((1, 4, 4), IGN))) == 0.0  # no pair: 0, never NaN


def hand_made_batch():
    """Two images of 1x3 pixels, two foreground classes. Image 0 is tagged with class 0 only,
    image 1 with both."""
    cams = torch.tensor([[[0.9, 0.5, 0.1], [0.0, 0.0, 0.0]],
                         [[0.2, 0.7, 0.6], [0.8, 0.4, 0.5]]]).unsqueeze(2)  # [2, 2, 1, 3]
    tags = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    return cams, tags


def rows(mask: torch.Tensor) -> list:
    """[image][class] -> the pixel row as 0/1."""
    return mask[:, :, 0].int().tolist()


def test_eq29_anchors_and_eq31_negatives_on_a_hand_made_batch():
    cams, tags = hand_made_batch()
    anchors, negatives = weakly_supervised_masks(cams, tags, beta=0.5)
    # Eq. 29: M^c > beta in images tagged c (image 0 has no anchor of the class it lacks)
    assert rows(anchors) == [[[1, 0, 0], [0, 0, 0]], [[0, 1, 1], [1, 0, 0]]]
    # Eq. 31: every pixel of an image without c, and M^c < beta in images with c (0.5 is neither)
    assert rows(negatives) == [[[0, 0, 1], [1, 1, 1]], [[1, 0, 0], [0, 1, 0]]]
    # Table XIV: only images without c ...
    _, absent_only = weakly_supervised_masks(cams, tags, 0.5, low_cam_negatives=False)
    assert rows(absent_only) == [[[0, 0, 0], [1, 1, 1]], [[0, 0, 0], [0, 0, 0]]]
    # ... or only the unreliable pixels of images with c
    _, low_only = weakly_supervised_masks(cams, tags, 0.5, absent_class_negatives=False)
    assert rows(low_only) == [[[0, 0, 1], [0, 0, 0]], [[1, 0, 0], [0, 1, 0]]]
    # crop padding is neither anchor nor negative
    valid = torch.tensor([[[True, True, True]], [[True, True, False]]])
    anchors_v, negatives_v = weakly_supervised_masks(cams, tags, 0.5, valid)
    assert rows(anchors_v)[1] == [[0, 1, 0], [1, 0, 0]] and rows(negatives_v)[1] == [[1, 0, 0], [0, 1, 0]]


def test_eq30_centroid_sums_count_a_pixel_for_every_class_it_anchors():
    features = torch.tensor([[[[1.0, 0.0, 0.0]], [[0.0, 1.0, 2.0]]]])  # [1, D=2, 1, 3]
    masks = torch.tensor([[[[True, True, False]], [[False, True, True]]]])  # pixel 1 anchors both classes
    sums, counts = masked_class_feature_sums(features, masks)
    assert sums.tolist() == [[1.0, 1.0], [0.0, 3.0]] and counts.tolist() == [2, 2]
