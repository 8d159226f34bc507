"""Helpers shared by several test modules."""

from __future__ import annotations

import re

from u2plus.comm import LOCAL
from u2plus.losses.contrastive import contrastive_loss
from u2plus.losses.contrastive_masks import semi_supervised_masks


def ss_contrastive_loss(z_student, z_teacher, prob, labels, is_labeled, unreliable, prototypes, proto_valid,
                        queues, cfg, seed=0, image_ids=None, comm=LOCAL, ignore_index=255):
    """Algorithm 1 with the semi-supervised masks (Eq. 21-28): what the criterion calls."""
    anchors, negatives = semi_supervised_masks(labels, prob, is_labeled, unreliable, cfg, ignore_index)
    return contrastive_loss(z_student, z_teacher, anchors, negatives, prototypes, proto_valid, queues, cfg,
                            seed=seed, image_ids=image_ids, comm=comm)


def one_error_line(capsys) -> str:
    """The single line ``error: ...`` a CLI call printed to stderr (besides progress bars); no
    traceback anywhere."""
    out, err = capsys.readouterr()
    lines = [ln for ln in err.splitlines() if ln.strip() and not re.match(r"\S+:\s+\d+%\|", ln)]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in out, err
    return lines[0]
