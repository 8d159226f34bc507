"""Draw the val mIoU curves of several runs into one PNG.

    python bench/plot_curves.py --out bench/curves_1-8.png --runs suponly_1-8_480_s0 u2pl_plus_1-8_s0
    python bench/plot_curves.py --out curves.png --folders ../runs/a ../runs/b   # unrecorded run folders

Runs are named as in ``bench/results.jsonl`` (its ``run`` field; the latest record of a name wins);
``--folders`` reads ``metrics.json`` of run folders instead. A run started from another one
(``train.init_from``) is drawn after that run's steps when that run is in the plot too, so a
two-stage schedule reads as one curve. ``--per-class CLASS ...`` adds one panel per class.
``--set source`` draws a domain-adaptive run's second evaluated set (CamVid day val) instead of
its target (dusk):

    python bench/plot_curves.py --out bench/curves_dusk.png --runs daformer_s0 daformer_u2pl_plus_s0 --title dusk
    python bench/plot_curves.py --out bench/curves_day.png --runs daformer_s0 --set source --title "day val"
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def load_records(results: Path, names: list[str]) -> list[dict]:
    latest = {}
    for line in results.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            latest[r["run"]] = r
    missing = [n for n in names if n not in latest]
    if missing:
        raise SystemExit(f"not in {results}: {', '.join(missing)}")
    return [latest[n] for n in names]


def load_folders(folders: list[Path]) -> list[dict]:
    out = []
    for f in folders:
        m = json.loads((f / "metrics.json").read_text())
        out.append({"run": f.name, "curve": m.get("curve", []), "init_from": None, "steps": m["steps"]})
    return out


def step_offset(record: dict, by_folder: dict) -> int:
    """Steps of the run this one started from (0 when it started from scratch or that run is not drawn)."""
    src = record.get("init_from")
    if not src:
        return 0
    parent = by_folder.get(Path(src).name if not src.endswith(".pt") else Path(src).parent.name)
    return 0 if parent is None else parent["steps"] + step_offset(parent, by_folder)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="*", default=[], help="run names in results.jsonl")
    p.add_argument("--folders", nargs="*", type=Path, default=[], help="run folders (metrics.json)")
    p.add_argument("--results", type=Path, default=REPO / "bench" / "results.jsonl")
    p.add_argument("--per-class", nargs="*", default=[], metavar="CLASS")
    p.add_argument("--set", default=None, help="a second evaluated set of domain-adaptive runs (source)")
    p.add_argument("--title", default="CamVid val mIoU")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    records = (load_records(args.results, args.runs) if args.runs else []) + load_folders(args.folders)
    if not records:
        raise SystemExit("name runs (--runs) or run folders (--folders)")
    by_folder = {r["run"]: r for r in records}
    panels = ["mIoU", *args.per_class]
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 4.5), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        for r in records:
            off = step_offset(r, by_folder)
            points = [(c["step"], c if args.set is None else c.get("sets", {}).get(args.set)) for c in r["curve"]]
            pts = [(off + s, p["mIoU"] if panel == "mIoU" else p["per_class"].get(panel)) for s, p in points if p]
            pts = [(s, v) for s, v in pts if v is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o", markersize=3, label=r["run"])
        ax.set_xlabel("step")
        ax.set_ylabel("val IoU" if panel != "mIoU" else "val mIoU")
        ax.set_title(args.title if panel == "mIoU" else panel)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
