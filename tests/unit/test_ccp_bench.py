"""bench/ccp.py: a restarted benchmark tables every run of its seeds and records each run once."""

import importlib.util
import json
import sys
from pathlib import Path

_path = Path(__file__).resolve().parents[2] / "bench" / "ccp.py"
_spec = importlib.util.spec_from_file_location("ccp_bench", _path)
ccp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ccp)


def fake_row(folder: Path) -> dict:
    method = folder.name.rsplit("_s", 1)[0]
    seed = int(folder.name.rsplit("_s", 1)[1])
    miou = {"afa": 40.0, "afa_u2pl_plus": 42.0}[method] + seed
    return {"run": folder.name, "method": method, "seed": seed, "steps": 10, "mIoU": miou, "mIoU_crf": miou + 1,
            "cam_mIoU": 50.0, "cam_mIoU_dense": 45.0, "cam_labelled_fraction": 0.8, "wall_seconds": 60.0,
            "seconds_per_step": 1.0, "command": f"u2plus train configs/ccp/{method}.yaml out_dir={folder}",
            "machine": "test", "commit": "abc"}


def test_a_restarted_benchmark_tables_the_runs_finished_before_and_records_each_once(tmp_path, monkeypatch):
    bench_dir = tmp_path / "bench"
    bench_dir.mkdir()
    trained = []

    def run_one(config, seed, extra, tag, runs):
        if (config, seed) == ("configs/ccp/afa.yaml", 0):
            return None  # finished by the killed invocation: skipped
        trained.append((config, seed))
        return ccp.camvid.run_folder(runs, config, tag, seed)

    monkeypatch.setattr(ccp.camvid, "run_one", run_one)
    monkeypatch.setattr(ccp, "run_record", fake_row)
    monkeypatch.setattr(ccp, "check_crf", lambda *a: None)
    argv = ["ccp.py", "--seeds", "0", "1", "--runs", str(tmp_path / "runs"), "--bench-dir", str(bench_dir),
            "--parallel", "1"]
    monkeypatch.setattr(sys, "argv", argv)
    ccp.main()
    assert len(trained) == 3
    lines = [json.loads(x) for x in (bench_dir / "results.jsonl").read_text().splitlines()]
    assert sorted(r["run"] for r in lines) == ["afa_s0", "afa_s1", "afa_u2pl_plus_s0", "afa_u2pl_plus_s1"]
    block = (bench_dir / "RESULTS.md").read_text()
    # both methods averaged over seeds 0 and 1: afa (40 + 41) / 2, afa_u2pl_plus (42 + 43) / 2
    assert "| afa | 2 | 40.50 ± 0.71" in block and "| afa_u2pl_plus | 2 | 42.50 ± 0.71" in block
    assert "mIoU +2.00" in block
    # run again: nothing new in results.jsonl, a second block in RESULTS.md
    ccp.main()
    assert len((bench_dir / "results.jsonl").read_text().splitlines()) == 4
    assert (bench_dir / "RESULTS.md").read_text().count("afa_u2pl_plus - afa") == 2
