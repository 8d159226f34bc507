"""Shared test fixtures. Tests run on CPU with one thread so they are deterministic and fast."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
DEMO_ROOT = REPO / "u2plus" / "demo_data" / "camvid_half"


@pytest.fixture
def camvid_root() -> Path:
    root = SHARED_DATA / "camvid"
    if not root.is_dir():
        pytest.skip(f"real CamVid not found at {root} (../shared/data is absent)")
    return root


def tiny_overrides(out_dir: Path, steps: int = 4) -> list[str]:
    """A demo-config run small enough for a test: 4 steps of batch 2 on 64x96 crops."""
    return [
        f"out_dir={out_dir}", f"train.max_iters={steps}", "train.checkpoint_every=2", "train.log_every=1",
        "data.batch_size=2", "data.unlabeled_batch_size=2", "data.crop_size=[64,96]", "data.num_workers=0",
        "train.deterministic=true", "train.num_threads=1",
        "method.sup_only_epochs=0",  # the full method from step 0 (the demo config warms up first)
    ]
