"""u2plus.engine.optim: learning-rate factors, two parameter groups, resumable scheduler."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from u2plus.config import TrainConfig
from u2plus.engine.optim import build_optimizer, build_scheduler, lr_factor


def train_cfg(**kw):
    return OmegaConf.structured(TrainConfig(**kw))


class FakeSegmentor(nn.Module):
    """Exposes param_groups() like Segmentor: (encoder params, decoder + head params)."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4))
        self.decoder = nn.Conv2d(4, 4, 1)
        self.head = nn.Conv2d(4, 2, 1)

    def param_groups(self):
        enc = list(self.encoder.parameters())
        ids = {id(p) for p in enc}
        return enc, [p for p in self.parameters() if id(p) not in ids]


# ---- lr_factor -------------------------------------------------------------------------------

@pytest.mark.parametrize("step,expected", [
    (0, 1.0),
    (25, 0.7718895067235705),  # 0.75 ** 0.9
    (50, 0.5358867312681466),  # 0.5 ** 0.9
    (100, 0.0),
    (150, 0.0),  # clamped past the end
])
def test_poly(step, expected):
    assert lr_factor(step, 100, "poly", power=0.9) == pytest.approx(expected, abs=1e-12)


def test_poly_power_two():
    assert lr_factor(50, 100, "poly", power=2.0) == pytest.approx(0.25)


@pytest.mark.parametrize("step,expected", [(0, 1.0), (25, 0.75), (50, 0.5), (100, 0.0), (120, 0.0)])
def test_linear(step, expected):
    assert lr_factor(step, 100, "linear") == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("step", [0, 50, 100, 1000])
def test_constant(step):
    assert lr_factor(step, 100, "constant") == 1.0


@pytest.mark.parametrize("step,expected", [
    (0, 0.1),  # warmup_ratio
    (5, 0.55 * 0.95 ** 0.9),  # (0.1 + 0.9 * 5/10) times poly at 5/100
    (9, 0.91 * 0.91 ** 0.9),  # (0.1 + 0.9 * 9/10) times poly at 9/100
    (10, 0.9095325760829622),  # warm-up over: poly at progress 10/100 -> 0.9 ** 0.9
    (50, 0.5358867312681466),
])
def test_warmup_then_poly(step, expected):
    f = lr_factor(step, 100, "poly", power=0.9, warmup_iters=10, warmup_ratio=0.1)
    assert f == pytest.approx(expected, abs=1e-12)


def test_warmup_with_constant_and_default_ratio():
    assert lr_factor(0, 100, "constant", warmup_iters=4) == pytest.approx(1e-6)
    assert lr_factor(2, 100, "constant", warmup_iters=4) == pytest.approx(1e-6 + (1 - 1e-6) * 0.5)
    assert lr_factor(4, 100, "constant", warmup_iters=4) == 1.0


def test_zero_max_iters_does_not_divide_by_zero():
    assert lr_factor(0, 0, "poly") == 1.0
    assert lr_factor(3, 0, "linear") == 0.0


# ---- build_optimizer

def _build(cfg, model):
    """The optimiser over the two groups every method declares (Method.param_groups)."""
    encoder, heads = model.param_groups()
    return build_optimizer(cfg, [{"name": "encoder", "params": encoder, "lr_mult": 1.0},
                                 {"name": "decoder_heads", "params": heads, "lr_mult": cfg.head_lr_mult}])


def test_sgd_two_groups_with_head_lr_mult():
    model = FakeSegmentor()
    opt = _build(train_cfg(optimizer="sgd", lr=0.02, head_lr_mult=10.0, momentum=0.8,
                                    weight_decay=5e-4), model)
    assert isinstance(opt, torch.optim.SGD)
    assert len(opt.param_groups) == 2
    enc, head = opt.param_groups
    assert enc["name"] == "encoder" and head["name"] == "decoder_heads"
    assert enc["lr"] == pytest.approx(0.02)
    assert head["lr"] == pytest.approx(0.2)
    assert enc["momentum"] == head["momentum"] == 0.8
    assert enc["weight_decay"] == head["weight_decay"] == 5e-4
    assert [id(p) for p in enc["params"]] == [id(p) for p in model.encoder.parameters()]
    expected_head = list(model.decoder.parameters()) + list(model.head.parameters())
    assert [id(p) for p in head["params"]] == [id(p) for p in expected_head]
    assert len(enc["params"]) == 3  # conv weight, bn weight, bn bias


def test_adamw():
    opt = _build(train_cfg(optimizer="adamw", lr=1e-3, head_lr_mult=4.0, weight_decay=0.05),
                          FakeSegmentor())
    assert isinstance(opt, torch.optim.AdamW)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-3, 4e-3])
    assert all(g["weight_decay"] == 0.05 for g in opt.param_groups)


def test_frozen_params_are_left_out():
    model = FakeSegmentor()
    model.encoder[0].weight.requires_grad_(False)
    opt = _build(train_cfg(), model)
    ids = {id(p) for g in opt.param_groups for p in g["params"]}
    assert id(model.encoder[0].weight) not in ids
    assert len(opt.param_groups[0]["params"]) == 2


def test_real_segmentor_param_groups():
    from u2plus.config import ModelConfig
    from u2plus.models import build_segmentor

    mcfg = OmegaConf.structured(ModelConfig(encoder="resnet18", pretrained="none", decoder_channels=16,
                                            rep_dim=8))
    model = build_segmentor(mcfg, num_classes=3)
    from u2plus.config import load_config
    from u2plus.methods import build_method

    method = build_method(load_config(None, ["train.lr=0.01", "train.head_lr_mult=10"]), model)
    opt = build_optimizer(train_cfg(lr=0.01, head_lr_mult=10.0), method.param_groups())
    enc, head = opt.param_groups
    assert {id(p) for p in enc["params"]} == {id(p) for p in model.encoder.parameters()}
    assert {id(p) for p in head["params"]} == (
        {id(p) for p in model.parameters()} - {id(p) for p in model.encoder.parameters()})
    assert {id(p) for p in model.seg_head.parameters()} <= {id(p) for p in head["params"]}
    assert enc["lr"] == pytest.approx(0.01) and head["lr"] == pytest.approx(0.1)


# ---- scheduler -------------------------------------------------------------------------------

def lr_sequence(opt, sched, n):
    out = []
    for _ in range(n):
        out.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    return out


def test_scheduler_follows_linear_factor_per_group():
    cfg = train_cfg(lr=0.01, head_lr_mult=10.0, lr_schedule="linear")
    opt = _build(cfg, FakeSegmentor())
    sched = build_scheduler(cfg, opt, max_iters=4)
    seq = lr_sequence(opt, sched, 5)
    expected = [[0.01, 0.1], [0.0075, 0.075], [0.005, 0.05], [0.0025, 0.025], [0.0, 0.0]]
    for got, exp in zip(seq, expected):
        assert got == pytest.approx(exp, abs=1e-12)


def test_scheduler_poly_with_warmup_matches_lr_factor():
    cfg = train_cfg(lr=0.1, head_lr_mult=2.0, lr_schedule="poly", warmup_iters=3, warmup_ratio=0.01)
    opt = _build(cfg, FakeSegmentor())
    sched = build_scheduler(cfg, opt, max_iters=10)
    seq = lr_sequence(opt, sched, 10)
    for step, (enc, head) in enumerate(seq):
        f = lr_factor(step, 10, "poly", 0.9, 3, 0.01)
        assert enc == pytest.approx(0.1 * f) and head == pytest.approx(0.2 * f)
    assert seq[0][0] == pytest.approx(0.001)  # 0.1 * warmup_ratio


def test_scheduler_state_dict_resume_reproduces_lrs():
    cfg = train_cfg(lr=0.05, head_lr_mult=10.0, lr_schedule="poly", warmup_iters=2)
    T = 12

    model = FakeSegmentor()
    opt = _build(cfg, model)
    sched = build_scheduler(cfg, opt, T)
    full = lr_sequence(opt, sched, T)

    model_a = FakeSegmentor()
    opt_a = _build(cfg, model_a)
    sched_a = build_scheduler(cfg, opt_a, T)
    first = lr_sequence(opt_a, sched_a, 5)
    saved_opt, saved_sched = opt_a.state_dict(), sched_a.state_dict()

    model_b = FakeSegmentor()
    opt_b = _build(cfg, model_b)
    sched_b = build_scheduler(cfg, opt_b, T)
    opt_b.load_state_dict(saved_opt)
    sched_b.load_state_dict(saved_sched)
    assert sched_b.last_epoch == 5
    rest = lr_sequence(opt_b, sched_b, T - 5)

    resumed = first + rest
    assert len(resumed) == len(full)
    for a, b in zip(resumed, full):
        assert a == pytest.approx(b, abs=1e-15)
    # the sequence is not trivially constant (the test would not notice a restart otherwise)
    assert full[5] != full[0]


def test_daformer_schedule_of_the_paper_configs():
    """AdamW, 1,500 linear warm-up iterations multiplying the linear decay over 40k (mmcv, as
    DAFormer), encoder 6e-5, decoder and heads x10, weight decay 0.01."""
    from pathlib import Path

    from u2plus.config import load_config

    cfg = load_config(Path(__file__).resolve().parents[2] / "configs/gta2cs/daformer.yaml").train
    opt = _build(cfg, FakeSegmentor())
    assert isinstance(opt, torch.optim.AdamW)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.01, 0.01]
    sched = build_scheduler(cfg, opt, cfg.max_iters)
    lrs = {}
    for step in range(1501):
        lrs[step] = [g["lr"] for g in opt.param_groups]
        opt.step()
        sched.step()
    decay = [1 - s / 40000 for s in (0, 750, 1500)]
    for step, factor in ((0, 1e-6 * decay[0]), (750, (1e-6 + (1 - 1e-6) * 0.5) * decay[1]), (1500, decay[2])):
        assert lrs[step] == pytest.approx([6e-5 * factor, 6e-4 * factor], rel=1e-9), step
    assert lrs[1499][0] < lrs[1500][0] < lrs[1499][0] * 1.001  # continuous at the end of the warm-up
    assert lr_factor(40000, 40000, "linear", warmup_iters=1500) == 0.0
