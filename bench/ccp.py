"""The weakly-supervised CCP benchmark (issue 19): ``afa`` against ``afa_u2pl_plus`` on image-level
tags only, three seeds, each run reported without and with dense CRF and with its CAM quality.

    python bench/ccp.py                 # the table: 2 methods x 3 seeds, 2 runs at a time, 1 thread each
    python bench/ccp.py --measure 4     # time 4 steps of each phase of each method and a few evaluated
                                        # images, and estimate how long the table takes (trains nothing)

Protocol (configs/ccp/_base.yaml): train on the tags of 0001-0600 and 1005-2098 (1,694 images),
segmentation mIoU on the masks of 0601-0800 (multi-scale + flip; ``crf``: after the dense CRF),
CAM quality on the masks of 0001-0600 (``CAM mIoU``: the CAM pseudo-labels with one threshold
``method.cam_beta``, every pixel scored, as WS papers report it; ``confident pixels``: the two-threshold
labels training uses, scored on the pixels they label, with the share labelled). The CRF needs
``pip install -e '.[crf]'`` (checked before training). Runs go to ``<runs>/<config>_s<seed>`` with
``resume=auto`` (a killed benchmark continues, and its table holds the runs finished before). Each run
appends one JSON line to ``bench/results.jsonl`` (once; curve and per-class IoU included) and the table a block to
the "CCP weakly supervised" section of ``bench/RESULTS.md`` with the mean over seeds of each
method and U2PL+'s gain over AFA (target: at least +1 mIoU). ``--record RUN_DIR ...`` records
finished run folders instead of training.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
import camvid  # noqa: E402  (run_one, run_record, add_to_section, REPO and the data directory)

REPO = camvid.REPO
CONFIGS = ["configs/ccp/afa.yaml", "configs/ccp/afa_u2pl_plus.yaml"]
SECTION = "## CCP weakly supervised"
BENCH_SET = ["train.num_threads=1", "data.num_workers=1"]


def run_record(out_dir: Path) -> dict:
    """The JSON line of a finished run: camvid's fields plus the CRF scores and the CAM quality."""
    row = camvid.run_record(out_dir)
    metrics = json.loads((out_dir / "metrics.json").read_text())
    crf, cam = metrics.get("crf", {}), metrics.get("cam", {})
    rounded = lambda d: {k: None if v is None else round(v, 2) for k, v in d.items()}  # noqa: E731
    row.update({
        "mIoU_crf": round(crf["mIoU"], 2) if crf else None, "per_class_crf": rounded(crf.get("per_class", {})),
        "cam_mIoU": round(cam["mIoU"], 2) if cam else None, "cam_per_class": rounded(cam.get("per_class", {})),
        "cam_labelled_fraction": round(cam["labelled_fraction"], 4) if cam else None,
        "cam_mIoU_dense": round(cam["mIoU_dense"], 2) if cam else None,
    })
    return row


def summary(rows: list[dict]) -> str:
    """Mean (and spread) over seeds per method, and the gain of afa_u2pl_plus over afa."""
    keys = [("mIoU", "mIoU"), ("mIoU_crf", "mIoU + CRF"), ("cam_mIoU_dense", "CAM mIoU"),
            ("cam_mIoU", "CAM mIoU (confident pixels)")]
    means, lines = {}, ["\n| method | seeds | " + " | ".join(label for _, label in keys) + " |\n",
                        "|---|---|" + "---|" * len(keys) + "\n"]
    for method in sorted({r["method"] for r in rows}):
        mine = [r for r in rows if r["method"] == method]
        cells = []
        for key, _ in keys:
            values = [r[key] for r in mine if r[key] is not None]
            means[method, key] = statistics.mean(values) if values else None
            spread = f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else ""
            cells.append(f"{means[method, key]:.2f}{spread}" if values else "n/a")
        lines.append(f"| {method} | {len(mine)} | " + " | ".join(cells) + " |\n")
    if means.get(("afa", "mIoU")) is not None and means.get(("afa_u2pl_plus", "mIoU")) is not None:
        gains = [f"{label} {means['afa_u2pl_plus', key] - means['afa', key]:+.2f}" for key, label in keys
                 if means.get(("afa", key)) is not None and means.get(("afa_u2pl_plus", key)) is not None]
        lines.append(f"\nafa_u2pl_plus - afa (means over seeds): {', '.join(gains)} (target: mIoU >= +1).\n")
    return "".join(lines)


def record(rows: list[dict], note: str, bench_dir: Path) -> None:
    """Append the JSON lines of the runs not in results.jsonl yet (a run is its command and its
    score: a restarted benchmark lists the runs an earlier invocation recorded) and the block of
    all of them to RESULTS.md."""
    results = bench_dir / "results.jsonl"
    seen = set()
    if results.exists():
        seen = {(r.get("command"), r.get("mIoU")) for r in map(json.loads, results.read_text().splitlines())}
    with open(results, "a") as f:
        for r in rows:
            if (r["command"], r["mIoU"]) not in seen:
                f.write(json.dumps(r) + "\n")
    lines = [f"\n### {time.strftime('%Y-%m-%d %H:%M')} — {note}\n",
             f"Machine: {rows[0]['machine']}; commit {rows[0]['commit']}; curves and per-class IoU (with and "
             "without CRF, and of the CAMs) in `bench/results.jsonl`.\n\n",
             "| run | method | seed | steps | val mIoU | + CRF | CAM mIoU | CAM mIoU (confident pixels, share) | "
             "wall (min) | s/step "
             "| command |\n|---|---|---|---|---|---|---|---|---|---|---|\n"]
    fmt = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
    for r in rows:
        labelled = "" if r["cam_labelled_fraction"] is None else f" ({100 * r['cam_labelled_fraction']:.0f}%)"
        lines.append(f"| {r['run']} | {r['method']} | {r['seed']} | {r['steps']} | {fmt(r['mIoU'])} | "
                     f"{fmt(r['mIoU_crf'])} | {fmt(r['cam_mIoU_dense'])} | {fmt(r['cam_mIoU'])}{labelled} | "
                     f"{r['wall_seconds'] / 60:.1f} | {r['seconds_per_step']:.2f} | `{r['command']}` |\n")
    lines.append(summary(rows))
    camvid.add_to_section(bench_dir / "RESULTS.md", "".join(lines), SECTION)


def check_crf(configs: list[str], extra: list[str]) -> None:
    """Exit with the install line before any training when a config evaluates with the dense CRF
    and the package is missing (it would stop every run at its set-up)."""
    from u2plus.config import load_config
    from u2plus.engine.crf import require_crf
    from u2plus.errors import ConfigError

    if any(load_config(REPO / c, extra).eval.crf for c in configs):
        try:
            require_crf()
        except ConfigError as e:
            sys.exit(f"bench/ccp.py: {e}")


def measure(configs: list[str], steps: int, extra: list[str], parallel: int, seeds: int) -> None:
    """Time ``steps`` training steps of each phase (classifier-only start, then every term) of
    each config on the real data at the benchmark's thread count, a few val images (without and
    with CRF) and CAM-quality images, and print the estimated wall time of one run and the table."""
    import torch

    from u2plus.config import load_config
    from u2plus.data.sampler import collate, make_train_loader
    from u2plus.engine.distributed import init_distributed
    from u2plus.engine.cam_quality import run_cam_quality
    from u2plus.engine.trainer import _build_run, _to_device, build_eval_loader, run_evaluation
    from u2plus.methods import StepContext

    def timed(fn, n: int) -> float:
        fn()  # warm-up
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - t0) / n

    total = 0.0
    for config in configs:
        cfg = load_config(REPO / config, [*extra, "data.validate=false", "out_dir=/tmp/u2plus_ccp_measure"])
        info, device = init_distributed("cpu")
        run = _build_run(cfg, info, device)
        loader = iter(make_train_loader(run.labeled, cfg.data.batch_size, cfg.seed, 0, 0))
        start = run.method.first_semi_step(StepContext(0, run.max_iters, run.iters_per_epoch))

        def step(at: int) -> None:
            ctx = StepContext(at, run.max_iters, run.iters_per_epoch)
            loss, _ = run.method.training_step(_to_device(next(loader), device), None, ctx)
            run.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            run.optimizer.step()
            run.method.after_optimizer_step(ctx)

        run.method.train()
        warm, full = timed(lambda: step(0), steps), timed(lambda: step(start), steps)
        model = run.method.eval_model()
        n_eval = 3
        v_set, _ = build_eval_loader(cfg, cfg.data.val_split, run.mean, run.std)
        few = v_set.with_items(v_set.items[:n_eval])
        few_loader = torch.utils.data.DataLoader(few, batch_size=1, collate_fn=collate)
        t0 = time.perf_counter()
        run_evaluation(cfg, model, few_loader, few, device)
        per_val = (time.perf_counter() - t0) / n_eval
        t0 = time.perf_counter()
        run_evaluation(cfg, model, few_loader, few, device, crf=cfg.eval.crf)
        per_val_crf = (time.perf_counter() - t0) / n_eval
        t0 = time.perf_counter()
        run_cam_quality(cfg, model, run.cam_set.with_items(run.cam_set.items[:n_eval]), run.mean, run.std, device)
        per_cam = (time.perf_counter() - t0) / n_eval
        curve_points = (run.max_iters - 1) // cfg.train.eval_every if cfg.train.eval_every else 0
        train_s = start * warm + (run.max_iters - start) * full
        eval_s = curve_points * len(v_set) * per_val + len(v_set) * per_val_crf + len(run.cam_set) * per_cam
        total += (train_s + eval_s) * seeds
        print(f"{config}: {warm:.2f} s/step in the first {start} steps (classifier and affinity), {full:.2f} s/step "
              f"after ({run.max_iters} steps of batch {cfg.data.batch_size}); evaluation {per_val:.2f} s per val "
              f"image, {per_val_crf:.2f} with CRF, {per_cam:.2f} per CAM-quality image -> one run "
              f"~{(train_s + eval_s) / 3600:.1f} h ({train_s / 3600:.1f} h training, {eval_s / 60:.0f} min evaluation)",
              flush=True)
    print(f"the table ({len(configs)} configs x {seeds} seeds, {parallel} at a time): ~{total / parallel / 3600:.1f} h "
          f"if {parallel} runs at a time keep these speeds", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("configs", nargs="*", default=CONFIGS, help="configs to train (or run folders with --record)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--set", nargs="*", default=BENCH_SET, metavar="key=value",
                   help=f"overrides for every run (default: {' '.join(BENCH_SET)})")
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--tag", default="", help="suffix of the run folders")
    p.add_argument("--runs", type=Path, default=REPO / "runs" / "bench_ccp", help="folder of the run folders")
    p.add_argument("--bench-dir", type=Path, default=BENCH, help="where results.jsonl and RESULTS.md are")
    p.add_argument("--record", action="store_true", help="record finished run folders, train nothing")
    p.add_argument("--measure", type=int, default=0, metavar="STEPS",
                   help="time STEPS steps per phase and a few evaluated images, estimate the run time, train nothing")
    p.add_argument("--note", default="CCP weakly supervised: afa vs afa_u2pl_plus, tags only (issue 19)",
                   help="heading of the appended results block")
    args = p.parse_args()
    if args.measure:
        measure(args.configs, args.measure, args.set, args.parallel, len(args.seeds))
        return
    if args.record:
        folders = [Path(c) for c in args.configs]
    else:
        check_crf(args.configs, args.set)
        runs = args.runs.resolve()
        jobs = [(c, s) for s in args.seeds for c in args.configs]
        with ThreadPoolExecutor(max_workers=args.parallel) as pool:
            list(pool.map(lambda job: camvid.run_one(*job, args.set, args.tag, runs), jobs))
        # every run of the table, those an earlier (killed) invocation finished included: both
        # methods averaged over the same seeds
        folders = [camvid.run_folder(runs, c, args.tag, s) for c, s in jobs]
    rows = [run_record(f) for f in folders]
    for r in rows:
        print(json.dumps({k: r[k] for k in ("run", "mIoU", "mIoU_crf", "cam_mIoU", "wall_seconds")}), flush=True)
    record(rows, args.note, args.bench_dir.resolve())


if __name__ == "__main__":
    main()
