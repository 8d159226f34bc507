"""Shared test fixtures. Tests run on CPU with one thread so they are deterministic and fast.

Where ``../shared/data`` exists beside the repository (and ``U2PLUS_DATA`` is unset), it is the
data directory of the tests: configs naming ``root: camvid`` find the real CamVid there.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from u2plus.paths import ENV, data_dir, use_data_dir_if_unset

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
DEMO_ROOT = REPO / "u2plus" / "demo_data" / "camvid_half"
use_data_dir_if_unset(SHARED_DATA)


@pytest.fixture
def camvid_root() -> Path:
    """The real CamVid of the data directory (``../shared/data`` here), as the configs find it."""
    root = data_dir() / "camvid"
    if not root.is_dir():
        pytest.skip(f"real CamVid not found at {root} ({ENV} unset and ../shared/data absent, "
                    "or no camvid/ in it)")
    return root


DEMO_CONFIG = str(REPO / "configs" / "demo" / "suponly.yaml")
DEMO_OVERRIDES = [f"data.root={DEMO_ROOT}"]


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """A 4-step SupOnly run on the demo data (run folder with last.pt, metrics.json, tb/)."""
    from u2plus.cli import main

    out = tmp_path_factory.mktemp("run")
    assert main(["train", DEMO_CONFIG, *DEMO_OVERRIDES, *tiny_overrides(out)]) == 0
    return out


def tiny_overrides(out_dir: Path, steps: int = 4) -> list[str]:
    """A demo-config run small enough for a test: 4 steps of batch 2 on 64x96 crops."""
    return [
        f"out_dir={out_dir}", f"train.max_iters={steps}", "train.checkpoint_every=2", "train.log_every=1",
        "data.batch_size=2", "data.unlabeled_batch_size=2", "data.crop_size=[64,96]", "data.num_workers=0",
        "train.deterministic=true", "train.num_threads=1",
        "method.sup_only_epochs=0",  # the full method from step 0 (the demo config warms up first)
    ]
