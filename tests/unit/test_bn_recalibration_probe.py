"""bench/bn_recalibration_probe.py: BatchNorm statistics re-estimated from a loader, by hand."""

import importlib.util
from pathlib import Path

import torch

_spec = importlib.util.spec_from_file_location(
    "bn_recalibration_probe", Path(__file__).resolve().parents[2] / "bench" / "bn_recalibration_probe.py")
probe = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(probe)


def test_recalibrate_batchnorm_takes_the_cumulative_statistics_of_the_first_images():
    bn = torch.nn.BatchNorm2d(1, momentum=0.1)
    bn.running_mean.fill_(7.0)
    bn.running_var.fill_(9.0)
    # three batches of 2 images of 1x2 pixels; only the first two batches (4 images) are used
    batches = [torch.tensor([[[[1.0, 3.0]]], [[[1.0, 3.0]]]]),   # mean 2, unbiased var 4/3
               torch.tensor([[[[5.0, 7.0]]], [[[5.0, 7.0]]]]),   # mean 6, unbiased var 4/3
               torch.tensor([[[[100.0, 100.0]]], [[[100.0, 100.0]]]])]
    used = probe.recalibrate_batchnorm(bn, [{"image": b} for b in batches], images=4, device="cpu")
    assert used == 4
    # momentum=None: the plain average of the per-batch statistics
    assert torch.allclose(bn.running_mean, torch.tensor([4.0]))
    assert torch.allclose(bn.running_var, torch.tensor([4.0 / 3.0]))
    assert bn.momentum == 0.1 and not bn.training
