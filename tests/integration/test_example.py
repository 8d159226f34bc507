"""examples/plain_pytorch.py (the criterion in a plain loop) runs as a user would run it."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys

from ..conftest import REPO


def test_plain_pytorch_example_runs_three_steps_and_prints_the_terms():
    # this checkout's package, whichever one the environment has installed
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, str(REPO / "examples" / "plain_pytorch.py"), "--steps", "3"],
                          capture_output=True, text=True, timeout=600, cwd=REPO, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("step ")]
    assert len(lines) == 3
    for line in lines:
        terms = dict(re.findall(r"(L_s|L_u|L_c|reliable) ([0-9.naif-]+)", line))
        assert set(terms) == {"L_s", "L_u", "L_c", "reliable"} and all(math.isfinite(float(v)) for v in terms.values())
        assert float(terms["L_s"]) > 0 and float(terms["L_u"]) > 0
