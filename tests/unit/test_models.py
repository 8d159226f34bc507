"""u2plus.models: Segmentor output shapes, param groups and encoder weight loading (tiny decoders)."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from omegaconf import OmegaConf

from u2plus.config import ModelConfig
from u2plus.errors import CheckpointError, ConfigError
from u2plus.models import build_encoder, build_segmentor
from u2plus.models.encoders import bundled_weight_file, load_state_dict_file, pair_by_order

NUM_CLASSES = 5
REP_DIM = 8


def model_cfg(**kw):
    base = dict(encoder="resnet18", pretrained="none", decoder_channels=16, rep_dim=REP_DIM)
    base.update(kw)
    return OmegaConf.structured(ModelConfig(**base))


def check_forward(model):
    model.eval()
    with torch.no_grad():
        for (h, w), (oh, ow) in [((64, 96), (16, 24)), ((65, 97), (17, 25))]:  # ceil(65/4) = 17
            x = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(h))
            out = model(x, with_rep=True)
            assert out["logits"].shape == (2, NUM_CLASSES, oh, ow)
            assert out["rep"].shape == (2, REP_DIM, oh, ow)
            norms = out["rep"].norm(dim=1)
            assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
            assert torch.isfinite(out["logits"]).all()
            assert torch.equal(model.predict(x), out["logits"])
            assert set(model(x)) == {"logits"}


def check_param_groups(model):
    enc, rest = model.param_groups()
    enc_ids, rest_ids = [id(p) for p in enc], [id(p) for p in rest]
    all_ids = [id(p) for p in model.parameters()]
    assert set(enc_ids).isdisjoint(rest_ids)
    assert sorted(enc_ids + rest_ids) == sorted(all_ids)
    assert len(enc_ids) + len(rest_ids) == len(all_ids)
    assert set(enc_ids) == {id(p) for p in model.encoder.parameters()}
    for head in (model.decoder, model.seg_head, model.rep_head):
        assert {id(p) for p in head.parameters()} <= set(rest_ids)


@pytest.mark.parametrize("output_stride", [8, 16])
def test_resnet18_segmentor(output_stride):
    torch.manual_seed(0)
    model = build_segmentor(model_cfg(output_stride=output_stride), NUM_CLASSES)
    assert model.num_classes == NUM_CLASSES
    assert model.encoder.reductions == [2, 4, 8, output_stride, output_stride]
    check_forward(model)
    check_param_groups(model)


def test_no_rep_head():
    model = build_segmentor(model_cfg(rep_head=False), NUM_CLASSES)
    assert model.rep_head is None
    model.eval()
    with pytest.raises(RuntimeError, match="representation head"):
        model(torch.zeros(1, 3, 32, 32), with_rep=True)


def test_unknown_encoder_is_config_error():
    with pytest.raises(ConfigError, match="model.encoder='not_a_timm_model'"):
        build_encoder("not_a_timm_model", pretrained="none")


def wheel_state() -> dict:
    return torch.load(bundled_weight_file("tf_efficientnet_lite0"), map_location="cpu", weights_only=True)


def test_efficientnet_lite0_imagenet_from_wheel():
    torch.manual_seed(0)
    random_enc = build_encoder("tf_efficientnet_lite0", pretrained="none")
    torch.manual_seed(0)
    model = build_segmentor(model_cfg(encoder="tf_efficientnet_lite0", pretrained="imagenet"), NUM_CLASSES)
    body = model.encoder.body
    wheel = wheel_state()
    # pairs of the same tensor under the wheel's (lukemelas) and timm's names
    assert torch.equal(body.conv_stem.weight, wheel["_conv_stem.weight"])
    assert torch.equal(body.bn1.running_mean, wheel["_bn0.running_mean"])
    assert torch.equal(body.blocks[6][0].conv_pwl.weight, wheel["_blocks.15._project_conv.weight"])
    assert torch.equal(body.blocks[6][0].bn3.running_var, wheel["_blocks.15._bn2.running_var"])
    # and away from the random initialisation
    assert not torch.equal(body.conv_stem.weight, random_enc.body.conv_stem.weight)
    assert not torch.equal(body.blocks[6][0].conv_pwl.weight, random_enc.body.blocks[6][0].conv_pwl.weight)
    assert not torch.equal(body.bn1.running_mean, torch.zeros_like(body.bn1.running_mean))
    # normalisation of the tf_ port
    assert model.mean == (0.5, 0.5, 0.5) and model.std == (0.5, 0.5, 0.5)
    check_forward(model)
    check_param_groups(model)


def test_resnet18_imagenet_has_no_offline_weights():
    with pytest.raises(ConfigError) as e:
        build_segmentor(model_cfg(encoder="resnet18", pretrained="imagenet"), NUM_CLASSES)
    msg = str(e.value)
    assert "no offline ImageNet weights" in msg and "resnet18" in msg


def test_missing_weight_file_names_path():
    with pytest.raises(CheckpointError) as e:
        build_segmentor(model_cfg(pretrained="/nonexistent.pth"), NUM_CLASSES)
    assert "/nonexistent.pth" in str(e.value)


@pytest.fixture(scope="module")
def resnet18_classifier_state():
    torch.manual_seed(123)
    return timm.create_model("resnet18", pretrained=False).state_dict()


@pytest.mark.parametrize("wrap", ["plain", "state_dict_module_prefix"])
def test_local_weight_file_loads(tmp_path, resnet18_classifier_state, wrap):
    state = resnet18_classifier_state
    if wrap == "plain":
        payload = state
    else:
        payload = {"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}
    path = tmp_path / "resnet18.pth"
    torch.save(payload, path)
    torch.manual_seed(0)
    enc = build_encoder("resnet18", pretrained=str(path), output_stride=16)
    own = enc.body.state_dict()
    assert "fc.weight" not in own  # head keys ignored
    for key in ("conv1.weight", "bn1.running_mean", "layer1.0.conv1.weight", "layer4.1.conv2.weight",
                "layer4.1.bn2.bias"):
        assert torch.equal(own[key], state[key]), key
    torch.manual_seed(0)
    fresh = build_encoder("resnet18", pretrained="none").body.state_dict()
    assert not torch.equal(fresh["layer4.1.conv2.weight"], state["layer4.1.conv2.weight"])


def test_weight_file_that_does_not_fit(tmp_path):
    path = tmp_path / "tiny.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, path)
    with pytest.raises(CheckpointError) as e:
        build_encoder("resnet18", pretrained=str(path))
    assert str(path) in str(e.value) and "resnet18" in str(e.value)


def test_corrupt_weight_file(tmp_path):
    path = tmp_path / "bad.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.pth"):
        load_state_dict_file(path)


def test_pair_by_order_renames_and_checks_shapes():
    target = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    src = {"a.w": torch.ones(2, 3), "a.b": torch.full((2,), 2.0), "n.w": torch.full((2,), 3.0),
           "n.b": torch.full((2,), 4.0), "n.rm": torch.full((2,), 5.0), "n.rv": torch.full((2,), 6.0),
           "n.num_batches_tracked": torch.tensor(0)}
    out = pair_by_order(src, target)
    assert list(out) == ["0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var"]
    assert torch.equal(out["1.running_var"], torch.full((2,), 6.0))

    bad = dict(src)
    bad["a.b"] = torch.zeros(3)
    with pytest.raises(CheckpointError) as e:
        pair_by_order(bad, target)
    assert "a.b" in str(e.value) and "0.bias" in str(e.value)

    short = {k: v for k, v in src.items() if k != "n.rv"}
    with pytest.raises(CheckpointError, match="5 tensors vs 6"):
        pair_by_order(short, target)


def test_bundled_weight_file_exists():
    path = bundled_weight_file("tf_efficientnet_lite0")
    assert isinstance(path, Path) and path.is_file()


@pytest.mark.parametrize("norm", ["none", "groupnorm", "batchnorm"])
def test_aspp_pooling_branch_in_eval_mode_after_similar_training_batches(norm):
    """Training batches whose pooled vectors barely differ (street scenes) drive a BatchNorm's
    running variance in the image-pooling branch towards 0; in eval mode a slightly different
    image then blows the branch up. Without that BatchNorm (the default) it stays bounded."""
    from u2plus.models.deeplabv3plus import DeepLabV3PlusDecoder

    torch.manual_seed(0)
    decoder = DeepLabV3PlusDecoder([8, 16], [4, 16], channels=32, pooling_norm=norm)
    pooling = decoder.aspp[0].convs[-1]
    assert isinstance(pooling[2], {"none": torch.nn.Identity, "groupnorm": torch.nn.GroupNorm,
                                   "batchnorm": torch.nn.BatchNorm2d}[norm])
    g = torch.Generator().manual_seed(1)
    deep_train = lambda: 1.0 + 1e-3 * torch.randn(8, 16, 6, 6, generator=g)  # noqa: E731
    decoder.train()
    with torch.no_grad():
        for _ in range(100):
            pooling(deep_train())
    decoder.eval()
    with torch.no_grad():
        seen = pooling(deep_train()).abs().max().item()
        shifted = pooling(deep_train() + 0.3).abs().max().item()  # another image: brighter on average
    if norm == "batchnorm":
        assert shifted > 50 * max(seen, 1.0)
    else:
        assert shifted < 5 * max(seen, 1e-3) + 5.0


def test_unknown_aspp_pooling_norm():
    from u2plus.models.deeplabv3plus import DeepLabV3PlusDecoder

    with pytest.raises(ValueError, match="pooling_norm"):
        DeepLabV3PlusDecoder([8, 16], [4, 16], channels=32, pooling_norm="layernorm")
