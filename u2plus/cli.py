"""Command line: ``u2plus train|eval|predict|visualize|splits|data``.

Errors a user can fix (bad data, unknown config key, missing file) end in one line
``error: ...`` and exit status 2; the other exit statuses are in ``EXIT_STATUS``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from .errors import DataError, RunStopped, U2PlusError
from .paths import PREPARABLE

EPILOG = """examples:
  u2plus data prepare camvid                   # download and verify CamVid into $U2PLUS_DATA/camvid (default ./data)
  u2plus data check camvid                     # counts, pairs, sizes and label values of that folder
  u2plus train configs/camvid/suponly_1-8.yaml train.max_iters=100 out_dir=runs/x
  u2plus train configs/camvid/suponly_1-8.yaml data.root=/elsewhere/camvid out_dir=runs/x
  u2plus train configs/camvid/suponly_1-8.yaml out_dir=runs/x resume=auto     # continue an interrupted run
  u2plus eval --checkpoint runs/x/last.pt --split val --out runs/x/val.json   # with the config it trained with
  u2plus eval configs/camvid/suponly_1-8.yaml --checkpoint runs/x/last.pt data.root=/elsewhere/camvid
  u2plus predict --checkpoint runs/x/last.pt photo.jpg frames/ --out predictions/
  u2plus visualize --checkpoint runs/x/last.pt photo.jpg --out figures/
  u2plus splits --dataset camvid --labeled 1/8 --seed 0 --out splits/camvid/1-8

exit status: 0 done; 2 a problem with the input (one line "error: ..."); 3 the loss became non-finite
(train: report in the run folder); 143 / 130 train stopped by SIGTERM / SIGINT after writing its checkpoint
(continue with resume=auto); 1 a bug (with its traceback).

data: data.root names a dataset folder: absolute, or relative to the current directory when it exists
there, else relative to the data directory $U2PLUS_DATA (default ./data); see docs/datasets.md.
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="u2plus", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG,
        description="Label-efficient semantic segmentation with unreliable pseudo-labels (U2PL+).")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train a model from a config",
                       description="Train with CONFIG (YAML). key=value overrides use dotted keys, e.g. "
                       "data.root=/x train.max_iters=100 seed=1 out_dir=runs/x resume=auto. The run folder "
                       "out_dir receives config.yaml, last.pt, metrics.json (final val mIoU) and tb/ "
                       "(TensorBoard logs); a folder that holds a run takes only resume=auto, or overwrite=true. "
                       "SIGTERM (e.g. a cluster's preemption) or Ctrl-C: the current step finishes, last.pt is "
                       "written and the run exits with status 143 (SIGTERM) or 130 (SIGINT); resume=auto "
                       "continues it exactly. A non-finite loss ends the run with status 3 and "
                       "nonfinite_report.json in the run folder (train.nonfinite=skip skips such steps).")
    t.add_argument("config")
    t.add_argument("overrides", nargs="*", metavar="key=value")

    e = sub.add_parser("eval", help="evaluate a checkpoint, print one JSON line with mIoU and per_class",
                       description="Evaluate CHECKPOINT on the val split (or --split) of its dataset, with the "
                       "config it was trained with, or with CONFIG when given (it must describe the same model). "
                       "Prints one JSON line {mIoU, per_class, mAcc, aAcc, per_class_acc, split, num_images} "
                       "(mAcc: mean class accuracy, aAcc: pixel accuracy), with eval.crf=true also crf (the "
                       "same after a dense CRF), with data.supervision=tags also cam (the CAM pseudo-labels' "
                       "quality on the training images with masks); --out also writes it to a file.")
    e.add_argument("config", nargs="?", default=None, help="config file (default: the checkpoint's own)")
    e.add_argument("overrides", nargs="*", metavar="key=value")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--split", default=None, help="split to evaluate (default: data.val_split; domain-adaptive: "
                   "data.target.val_split), e.g. test")
    e.add_argument("--out", default=None, help="also write the JSON result to this file")
    e.add_argument("--table", action="store_true", help="also print a per-class table to stderr")

    pr = sub.add_parser("predict", help="segment images or folders, write colour masks and overlays",
                        description="Run CHECKPOINT on images (files or folders, recursively) and write "
                        "<name>_mask.png (colour-coded), <name>_overlay.png and <name>_labels.png (train ids).")
    pr.add_argument("inputs", nargs="+", metavar="INPUT")
    pr.add_argument("--checkpoint", required=True)
    pr.add_argument("--out", required=True)
    pr.add_argument("--mode", default=None, choices=["whole", "sliding", "multiscale"],
                    help="inference mode (default: the checkpoint config's eval.mode, center_crop -> whole)")
    pr.add_argument("--device", default="auto")

    v = sub.add_parser("visualize", help="the paper's Fig. 2 panels: entropy, reliable pseudo-labels, probabilities",
                       description="For each image: (a) per-pixel entropy, (b) pseudo-labels of reliable pixels "
                       "with unreliable ones (top --alpha entropy) blanked white, (c)/(d) class probabilities of one "
                       "reliable and one unreliable pixel. Writes <name>_fig2.png into --out.")
    v.add_argument("inputs", nargs="+", metavar="INPUT")
    v.add_argument("--checkpoint", required=True)
    v.add_argument("--out", required=True)
    v.add_argument("--alpha", type=float, default=None, help="unreliable fraction (default: method.alpha0)")
    v.add_argument("--device", default="auto")

    s = sub.add_parser("splits", help="write a seeded labeled/unlabeled partition of a dataset's train split",
                       description="Partition the training ids of a dataset into labeled.txt and unlabeled.txt.")
    s.add_argument("--dataset", required=True, help="camvid, voc, cityscapes, gta5, synthia, ccp, folder")
    s.add_argument("--root", default=None, help="dataset folder (default: DATASET in the data directory)")
    s.add_argument("--labeled", required=True, help="fraction (1/16, 1/8, 1/4, 1/2, 0.1) or a count (92)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("overrides", nargs="*", metavar="key=value", help="extra data.* settings, e.g. voc_variant=blender num_classes=59")

    d = sub.add_parser("data", help="download, convert and check datasets (docs/datasets.md)",
                       description="Datasets live in the data directory $U2PLUS_DATA (default ./data), one "
                       "folder per dataset, which is where the configs look for them.")
    dsub = d.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    dp = dsub.add_parser("prepare", help="download (resumable, verified) and convert a dataset",
                         description="Download what can be downloaded, verify it (published checksums, "
                         "else file counts) and unpack it into the layout u2plus reads; for sources behind a "
                         "login, say what to download and convert the archives once they are in place. "
                         "Rerunning skips what is already verified; ends with `data check`.")
    dc = dsub.add_parser("check", help="verify a dataset folder in seconds",
                         description="Image/mask pairs per split against the published counts, pairing, "
                         "sizes (headers), label values (of a few hundred masks per split, --all: every one). "
                         "Prints one summary line, or every problem with its file (exit status 2).")
    for q in (dp, dc):
        q.add_argument("name", choices=PREPARABLE, metavar="NAME", help=", ".join(PREPARABLE))
        q.add_argument("--root", default=None, help="dataset folder (default: NAME in the data directory)")
    dc.add_argument("--all", action="store_true", help="read the label values of every mask")
    return p


def cmd_train(args) -> None:
    from .config import load_config
    from .engine.trainer import train

    cfg = load_config(args.config, args.overrides)
    try:
        metrics = train(cfg)
    except RunStopped as e:
        if str(e):  # rank 0: how to continue
            again = [o for o in args.overrides if not o.startswith(("resume=", "overwrite="))]
            raise RunStopped(f"{e}: {shlex.join(['u2plus', 'train', args.config, *again, 'resume=auto'])}",
                             e.exit_code) from None
        raise
    if metrics:  # under torchrun only rank 0 reports
        print(json.dumps({"mIoU": metrics["mIoU"], "out_dir": str(cfg.out_dir)}))


def cmd_eval(args) -> None:
    from .engine.inference import evaluate_checkpoint

    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config and not Path(config).is_file():  # no CONFIG, only key=value
        config, overrides = None, [config, *overrides]
    result = evaluate_checkpoint(args.checkpoint, args.split, config, overrides)
    line = json.dumps({"mIoU": result["mIoU"], "per_class": result["per_class"], "mAcc": result["mAcc"],
                       "aAcc": result["aAcc"], "per_class_acc": result["per_class_acc"],
                       "split": result["split"], "num_images": result["num_images"],
                       **{k: result[k] for k in ("crf", "cam") if k in result}})
    print(line)
    if args.table:
        from .engine.evaluate import format_iou_table

        print(format_iou_table(result), file=sys.stderr)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(line + "\n")


def cmd_predict(args) -> None:
    from .engine.inference import predict_paths

    written = predict_paths(args.checkpoint, args.inputs, args.out, mode=args.mode, device=args.device)
    print(f"wrote predictions for {written} image(s) to {args.out}")


def cmd_visualize(args) -> None:
    from .engine.visualize import visualize_paths

    written = visualize_paths(args.checkpoint, args.inputs, args.out, alpha=args.alpha, device=args.device)
    print(f"wrote {len(written)} figure(s) to {args.out}")


def cmd_splits(args) -> None:
    from omegaconf import OmegaConf

    from .config import DataConfig
    from .data.splits import splits_command

    from .config import _merge

    num_classes = DEFAULT_NUM_CLASSES.get(args.dataset, 11)
    data_cfg = OmegaConf.structured(DataConfig(dataset=args.dataset, root=args.root or args.dataset,
                                               num_classes=num_classes))
    for item in args.overrides:
        data_cfg = _merge(data_cfg, OmegaConf.from_dotlist([item]), f"override '{item}'")
    n_l, n_u = splits_command(data_cfg, args.labeled, args.seed, args.out)
    print(f"wrote {n_l} labeled and {n_u} unlabeled ids to {args.out}")


def cmd_data(args) -> None:
    from .data.prepare import check, prepare

    if args.data_command == "prepare":
        print(prepare(args.name, args.root))
        return
    summary, problems = check(args.name, args.root, every_mask=args.all)
    for line in problems:
        print(line)
    if problems:
        raise DataError(summary)
    print(summary)


DEFAULT_NUM_CLASSES = {"camvid": 11, "voc": 21, "cityscapes": 19, "gta5": 19, "synthia": 19, "ccp": 7}

COMMANDS = {"train": cmd_train, "eval": cmd_eval, "predict": cmd_predict, "visualize": cmd_visualize,
            "splits": cmd_splits, "data": cmd_data}


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    # key=value overrides may also come after options (u2plus eval CONFIG --checkpoint X key=value)
    args, extra = parser.parse_known_args(argv)
    stray = [a for a in extra if a.startswith("-") or "=" not in a or not hasattr(args, "overrides")]
    if stray:
        parser.error(f"unrecognized arguments: {' '.join(stray)}")
    if extra:
        args.overrides = list(args.overrides) + extra
    try:
        COMMANDS[args.command](args)
    except U2PlusError as e:
        print("error: " + " ".join(ln.strip() for ln in str(e).splitlines() if ln.strip()), file=sys.stderr)
        return e.exit_code
    except RunStopped as e:
        if str(e):
            print(e, file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
