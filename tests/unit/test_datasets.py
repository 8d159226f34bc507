"""Dataset modules on tiny synthetic trees (8x6 images), bad-input errors, and real data when present."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from u2plus.config import DataConfig
from u2plus.data import DATASETS, build_dataset, build_train_sets
from u2plus.data import ccp, cityscapes, synthia
from u2plus.errors import ConfigError, DataError

SHARED = Path(__file__).parents[2].parent / "shared/data"
W, H = 8, 6


def cfg(**kw):
    return OmegaConf.structured(DataConfig(**kw))


def rgb(path: Path, w: int = W, h: int = H) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return path


def label(path: Path, values, mode: str = "L") -> Path:
    """An 8-bit mask whose first row starts with ``values`` (zeros elsewhere)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.zeros((H, W), np.uint8)
    arr.flat[: len(values)] = values
    im = Image.frombytes(mode, (W, H), arr.tobytes())
    if mode == "P":  # a VOC-like palette PNG: pixels are palette indices
        im.putpalette([v for i in range(256) for v in (i, 255 - i, i // 2)])
    im.save(path)
    return path


def png16(path: Path, arr: np.ndarray) -> Path:
    """A 16-bit grey / RGB PNG (Pillow cannot write 16-bit RGB)."""
    arr = np.asarray(arr, dtype=">u2")
    h, w = arr.shape[:2]
    color = {2: 0, 3: 2}[arr.ndim]
    raw = b"".join(b"\x00" + arr[y].tobytes() for y in range(h))

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, color, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return path


def first_row(ds, i: int = 0, n: int = 5) -> list[int]:
    return ds[i]["mask"].flatten()[:n].tolist()


def test_registry_lists_every_dataset():
    assert {"camvid", "folder", "voc", "cityscapes", "gta5", "synthia", "ccp"} <= set(DATASETS)


# -- VOC ------------------------------------------------------------------------------------------
VAL_ID = "2007_000033"  # in the shipped pascal/val.txt


def voc_tree(root: Path, variant: str, imagesets: bool) -> Path:
    mask_dir = root / ("SegmentationClass" if variant == "classic" else "SegmentationClassAug")
    for i in ("2008_000001", "2008_000002", VAL_ID):
        rgb(root / "JPEGImages" / f"{i}.jpg")
    label(mask_dir / "2008_000001.png", [0, 15, 20, 255], mode="P" if variant == "classic" else "L")
    label(mask_dir / f"{VAL_ID}.png", [1, 255], mode="P" if variant == "classic" else "L")
    if variant == "blender":
        label(mask_dir / "2008_000002.png", [3, 4])
    if imagesets:
        sets = root / "ImageSets" / "Segmentation"
        sets.mkdir(parents=True)
        (sets / "train.txt").write_text("2008_000001\n")
        (sets / "val.txt").write_text(f"{VAL_ID}\n")
    return root


def test_voc_classic_lists_every_image_and_masks_where_present(tmp_path):
    c = cfg(dataset="voc", root=str(voc_tree(tmp_path, "classic", imagesets=False)), num_classes=21)
    ds = build_dataset(c, "train")
    assert ds.ids() == ["2008_000001", "2008_000002"]  # val id held out
    assert ds.items[1].mask is None
    assert first_row(ds) == [0, 15, 20, 255, 0]  # palette indices; 255 stays ignore
    assert ds.class_names[0] == "background" and ds.class_names[15] == "person"
    ds.with_items(ds.items[:1]).check_files()


def test_voc_val_uses_imagesets_else_the_shipped_split(tmp_path):
    root = voc_tree(tmp_path / "a", "classic", imagesets=True)
    val = build_dataset(cfg(dataset="voc", root=str(root), num_classes=21), "val")
    assert val.ids() == [VAL_ID] and first_row(val, 0, 2) == [1, 255]
    root = voc_tree(tmp_path / "b", "classic", imagesets=False)
    with pytest.raises(DataError, match=r"pascal/val\.txt.*no image"):
        build_dataset(cfg(dataset="voc", root=str(root), num_classes=21), "val")


def test_voc_blender_and_semi_supervised_sets(tmp_path):
    root = voc_tree(tmp_path, "blender", imagesets=True)
    (tmp_path / "labeled.txt").write_text("2008_000002\n")
    c = cfg(dataset="voc", root=str(root), num_classes=21, voc_variant="blender",
            labeled=str(tmp_path / "labeled.txt"))
    assert build_dataset(c, "train").has_masks
    lab, unl = build_train_sets(c, semi_supervised=True)
    assert lab.ids() == ["2008_000002"] and first_row(lab, 0, 2) == [3, 4]
    # every unlabeled image has a mask here: kept for diagnostics only (never trained on,
    # see tests/unit/test_methods.py::test_unlabeled_masks_only_feed_diagnostics)
    assert unl.ids() == ["2008_000001"] and unl.has_masks


def test_voc_classic_labeled_image_without_mask_is_an_error(tmp_path):
    root = voc_tree(tmp_path, "classic", imagesets=True)
    (tmp_path / "labeled.txt").write_text("2008_000002\n")
    c = cfg(dataset="voc", root=str(root), num_classes=21, labeled=str(tmp_path / "labeled.txt"))
    with pytest.raises(DataError, match=r"2008_000002\.jpg has no mask"):
        build_train_sets(c, semi_supervised=True)


# -- Cityscapes, GTA5, SYNTHIA --------------------------------------------------------------------
def test_cityscapes_train_ids_and_label_ids_per_file(tmp_path):
    stem = "hamburg_000000_080169"
    rgb(tmp_path / f"leftImg8bit/train/hamburg/{stem}_leftImg8bit.png")
    label(tmp_path / f"gtFine/train/hamburg/{stem}_gtFine_labelTrainIds.png", [0, 18, 255, 7])
    label(tmp_path / f"gtFine/train/hamburg/{stem}_gtFine_labelIds.png", [33, 33, 33, 33])  # ignored
    rgb(tmp_path / "leftImg8bit/train/ulm/ulm_000001_000019_leftImg8bit.png")
    label(tmp_path / "gtFine/train/ulm/ulm_000001_000019_gtFine_labelIds.png", [7, 26, 0, 33, 255])
    rgb(tmp_path / "leftImg8bit/train/zurich/zurich_000002_000019_leftImg8bit.png")  # no label
    ds = build_dataset(cfg(dataset="cityscapes", root=str(tmp_path), num_classes=19), "train")
    key = f"leftImg8bit/train/hamburg/{stem}_leftImg8bit.png"  # as in the shipped split files
    assert ds.ids()[0] == key and ds.subset([key]).ids() == [key]
    assert first_row(ds, 0, 4) == [0, 18, 255, 7]
    assert first_row(ds, 1) == [0, 13, 255, 18, 255]
    assert ds.items[2].mask is None
    assert ds.class_names[13] == "car"
    ds.with_items(ds.items[:2]).check_files()


def test_label_id_table_matches_the_official_mapping():
    lut = cityscapes.label_id_map(255)
    assert len(cityscapes.CLASSES) == 19
    assert sorted(lut[lut != 255].tolist()) == list(range(19))
    assert lut[[0, 1, 6, 7, 8, 11, 23, 24, 26, 31, 33, 34, 255]].tolist() == \
        [255, 255, 255, 0, 1, 2, 10, 11, 13, 16, 18, 255, 255]


def test_gta5_maps_label_ids_and_has_no_val(tmp_path):
    rgb(tmp_path / "images/00001.png")
    label(tmp_path / "labels/00001.png", [7, 24, 3, 33, 40])
    c = cfg(dataset="gta5", root=str(tmp_path), num_classes=19)
    ds = build_dataset(c, "train")
    assert ds.ids() == ["00001"] and first_row(ds) == [0, 11, 255, 18, 255]
    with pytest.raises(DataError, match="no val split.*Cityscapes"):
        build_dataset(c, "val")


def test_synthia_16bit_labels(tmp_path):
    rgb(tmp_path / "RGB/0000001.png")
    gt = np.zeros((H, W, 3), np.uint16)
    gt[0, :6, 0] = [3, 8, 300, 0, 22, 11]
    gt[..., 1] = 1000  # instance ids in the second channel, must be ignored
    png16(tmp_path / "GT/LABELS/0000001.png", gt)
    ds = build_dataset(cfg(dataset="synthia", root=str(tmp_path), num_classes=19), "train")
    assert first_row(ds, 0, 6) == [0, 13, 255, 255, 255, 18]
    ds.check_files()
    assert synthia.SYNTHIA_16 == tuple(sorted(synthia.SYNTHIA_TO_TRAIN_ID.values()))
    assert len(synthia.SYNTHIA_16) == 16


def test_synthia_corrupt_label_names_the_file(tmp_path):
    rgb(tmp_path / "RGB/0000001.png")
    bad = tmp_path / "GT/LABELS/0000001.png"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not a png")
    ds = build_dataset(cfg(dataset="synthia", root=str(tmp_path), num_classes=19), "train")
    with pytest.raises(DataError, match=str(bad)):
        ds.check_files()


# -- CCP ------------------------------------------------------------------------------------------
CCP_CLASSES = (
    "null accessories bag belt blazer blouse bodysuit boots bra bracelet cape cardigan clogs coat "
    "dress earrings flats glasses gloves hair hat heels hoodie intimate jacket jeans jumper leggings "
    "loafers necklace panties pants pumps purse ring romper sandals scarf shirt shoes shorts skin "
    "skirt sneakers socks stockings suit sunglasses sweater sweatshirt swimwear t-shirt tie tights "
    "top vest wallet watch wedges"
).split()


def ccp_tree(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("\n".join(CCP_CLASSES) + "\n")
    for i in ("0001", "0701", "0801", "1005"):
        rgb(root / f"images/{i}.jpg")
    ix = CCP_CLASSES.index
    label(root / "masks/0001.png", [ix(n) for n in ("null", "blouse", "coat", "jeans", "dress",
                                                     "heels", "purse", "skin", "hair", "belt")])
    label(root / "masks/0701.png", [ix("t-shirt")])
    label(root / "masks/0801.png", [ix("skirt")])  # a test image: in no other split
    (root / "tags.json").write_text(json.dumps({"0001": [ix("hair"), ix("shirt"), ix("top")],
                                                "1005": [ix("wallet"), ix("bag"), ix("jeans")]}))
    return root


def test_ccp_coarse_protocol(tmp_path):
    c = cfg(dataset="ccp", root=str(ccp_tree(tmp_path)), num_classes=7)
    train = build_dataset(c, "train")
    assert train.ids() == ["0001"] and train.class_names == list(ccp.COARSE_CLASSES)
    assert first_row(train, 0, 10) == [0, 1, 2, 3, 4, 5, 6, 0, 0, 0]
    assert build_dataset(c, "val").ids() == ["0701"]
    assert build_dataset(c, "test").ids() == ["0801"] and first_row(build_dataset(c, "test"), 0, 1) == [3]
    unl = build_dataset(c, "unlabeled")
    assert unl.ids() == ["1005"] and not unl.has_masks
    assert ccp.image_tags(tmp_path, 7) == {"0001": [1], "1005": [3, 6]}
    raw = build_dataset(cfg(dataset="ccp", root=str(tmp_path), num_classes=59), "train")
    assert raw.num_classes == 59 and first_row(raw, 0, 3) == [0, 5, 13]
    assert ccp.image_tags(tmp_path, 59)["1005"] == sorted({56, 2, 25})
    with pytest.raises(ConfigError, match="num_classes=5"):
        build_dataset(cfg(dataset="ccp", root=str(tmp_path), num_classes=5), "train")


@pytest.mark.skipif(not (SHARED / "ccp/masks").is_dir(), reason=f"real CCP data not at {SHARED / 'ccp'}")
def test_ccp_coarse_mapping_on_real_masks():
    root = SHARED / "ccp"
    assert ccp.read_classes(root) == CCP_CLASSES
    tags = ccp.image_tags(root, 7)
    ds = build_dataset(cfg(dataset="ccp", root=str(root), num_classes=7), "train")
    assert len(ds) == 700 and len(build_dataset(cfg(dataset="ccp", root=str(root), num_classes=7), "val")) == 100
    sub = ds.with_items(ds.items[::100])
    sub.check_files()
    for ref in sub.items:  # tags.json is derived from the masks for 0001-0800
        assert [int(v) for v in np.unique(sub.load_mask(ref.mask)) if v] == tags[ref.id], ref.id


# -- folder ---------------------------------------------------------------------------------------
def test_folder_with_and_without_masks_and_list_file(tmp_path):
    rgb(tmp_path / "img/a/x.jpg")
    rgb(tmp_path / "img/y.png")
    label(tmp_path / "msk/a/x.png", [1, 2])
    label(tmp_path / "msk/y.png", [0, 255])
    c = cfg(dataset="folder", root=str(tmp_path), num_classes=3, images=str(tmp_path / "img"),
            masks=str(tmp_path / "msk"))
    ds = build_dataset(c, "train")
    assert ds.ids() == ["a/x", "y"] and first_row(ds, 0, 2) == [1, 2]
    ds.check_files()
    bare = build_dataset(cfg(dataset="folder", num_classes=3, images=str(tmp_path / "img")), "train")
    assert not bare.has_masks and "mask" not in bare[0]
    (tmp_path / "list.txt").write_text("img/y.png msk/y.png\nimg/a/x.jpg\n")
    listed = build_dataset(cfg(dataset="folder", num_classes=3, images=str(tmp_path / "list.txt")), "train")
    assert listed.ids() == ["img/y", "img/a/x"] and listed.items[1].mask is None
    assert first_row(listed, 0, 2) == [0, 255]


def test_folder_image_without_mask_is_an_error(tmp_path):
    rgb(tmp_path / "img/x.png")
    (tmp_path / "msk").mkdir()
    c = cfg(dataset="folder", num_classes=3, images=str(tmp_path / "img"), masks=str(tmp_path / "msk"))
    with pytest.raises(DataError, match=r"no mask for image .*x\.png"):
        build_dataset(c, "train")


# -- bad input on a tiny CamVid tree --------------------------------------------------------------
def camvid_tree(root: Path, n: int = 3) -> Path:
    for i in range(n):
        rgb(root / f"train/0001TP_{i:06d}.png")
        label(root / f"trainannot/0001TP_{i:06d}.png", [i, 11])
    return root


def camvid_cfg(root: Path, **kw):
    return cfg(dataset="camvid", root=str(root), num_classes=11, **kw)


def test_corrupt_image_names_the_file(tmp_path):
    bad = camvid_tree(tmp_path) / "train/0001TP_000001.png"
    bad.write_bytes(b"\x00garbage" * 10)
    ds = build_dataset(camvid_cfg(tmp_path), "train")
    with pytest.raises(DataError, match=str(bad)):
        ds.check_files()
    with pytest.raises(DataError, match=str(bad)):
        ds[1]


def test_mask_of_another_size_names_the_mask(tmp_path):
    bad = label(camvid_tree(tmp_path) / "trainannot/0001TP_000002.png", [1])
    Image.fromarray(np.zeros((H + 1, W), np.uint8)).save(bad)
    ds = build_dataset(camvid_cfg(tmp_path), "train")
    with pytest.raises(DataError, match=f"mask {bad} is 8x7"):
        ds.check_files()


def test_label_value_outside_the_class_set_names_the_mask(tmp_path):
    bad = label(camvid_tree(tmp_path) / "trainannot/0001TP_000000.png", [200])
    with pytest.raises(DataError, match=rf"mask {bad} has label value\(s\) \[200\]"):
        build_dataset(camvid_cfg(tmp_path), "train").check_files()


def test_unknown_split_ids_name_the_split_file(tmp_path):
    split = tmp_path / "labeled.txt"
    split.write_text("0001TP_000000\n0001TP_999999\n")
    with pytest.raises(DataError, match=rf"{split}: 1 id\(s\) not found.*0001TP_999999"):
        build_train_sets(camvid_cfg(camvid_tree(tmp_path / "cv"), labeled=str(split)), True)


def test_empty_unlabeled_set_is_an_error(tmp_path):
    split = tmp_path / "labeled.txt"
    split.write_text("".join(f"0001TP_{i:06d}\n" for i in range(3)))
    c = camvid_cfg(camvid_tree(tmp_path / "cv"), labeled=str(split))
    assert len(build_train_sets(c, semi_supervised=False)[0]) == 3
    with pytest.raises(DataError, match="unlabeled set is empty"):
        build_train_sets(c, semi_supervised=True)


def test_missing_mask_of_a_labeled_image_names_it(tmp_path):
    gone = camvid_tree(tmp_path) / "trainannot/0001TP_000001.png"
    gone.unlink()
    with pytest.raises(DataError, match=f"mask not found: {gone}"):
        build_dataset(camvid_cfg(tmp_path), "train").check_files()


# -- real CamVid ----------------------------------------------------------------------------------
@pytest.mark.skipif(not (SHARED / "camvid/train").is_dir(), reason=f"real CamVid not at {SHARED / 'camvid'}")
def test_real_camvid():
    c = camvid_cfg(SHARED / "camvid")
    train, val = build_dataset(c, "train"), build_dataset(c, "val")
    assert (len(train), len(val)) == (367, 101) and train.has_masks and val.has_masks
    for ds in (train, val):
        values = set(np.unique(ds.load_mask(ds.items[0].mask)).tolist())
        assert values <= set(range(11)) | {255}
    train.with_items(train.items[:10]).check_files()


def test_class_pixel_counts_and_class_weights_from_the_labeled_masks(tmp_path):
    from u2plus.engine.trainer import resolve_class_weights
    from u2plus.losses.supervised import median_frequency_weights

    rgb(tmp_path / "img/a.png")
    rgb(tmp_path / "img/b.png")
    label(tmp_path / "msk/a.png", [1, 2])  # 46 x class 0, one pixel each of classes 1 and 2
    label(tmp_path / "msk/b.png", [0, 255])  # 47 x class 0, one ignored pixel
    ds = build_dataset(cfg(dataset="folder", num_classes=3, images=str(tmp_path / "img"),
                           masks=str(tmp_path / "msk")), "train")
    class_pixels, image_pixels = ds.class_pixel_counts()
    assert class_pixels.tolist() == [93, 1, 1]
    assert image_pixels.tolist() == [48 + 47, 48, 48]  # ignored pixels are not counted
    weights = resolve_class_weights("median_frequency", ds)
    assert torch.equal(weights, median_frequency_weights(class_pixels, image_pixels))
    assert weights.tolist() == pytest.approx([(1 / 48) / (93 / 95), 1.0, 1.0])
    assert resolve_class_weights([1, 2, 3], ds).tolist() == [1.0, 2.0, 3.0]
    assert resolve_class_weights(None, ds) is None
    with pytest.raises(ConfigError, match="2 values.*3 classes"):
        resolve_class_weights([1, 2], ds)
    with pytest.raises(DataError, match="a.png has no mask"):
        build_dataset(cfg(dataset="folder", num_classes=3, images=str(tmp_path / "img")), "train").class_pixel_counts()
