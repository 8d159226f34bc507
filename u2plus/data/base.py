"""Shared dataset base: a list of (id, image path, optional mask path) plus decoding and checks.

Every dataset returns the same sample dict::

    {"image": tv_tensors.Image uint8 [3, H, W],
     "mask":  tv_tensors.Mask int64 [H, W]   (only for samples that have a mask),
     "tags":  float [C] multi-hot, background 1 (only for tag-supervised sets, u2plus.data.tags),
     "id": str, "index": int}

before the transform; after the training transform ``image`` is a normalised float tensor.
Dataset modules only say where files are and how raw label values map to train ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF

from ..errors import DataError


BACKGROUND = 0  # train id of the background: present in every image of a tag-supervised set


def tag_vector(classes, num_classes: int) -> torch.Tensor:
    """Image-level label ``[C]`` float: 1 at ``classes`` and at the background (:mod:`u2plus.data.tags`)."""
    v = torch.zeros(num_classes)
    v[[int(c) for c in classes]] = 1.0
    v[BACKGROUND] = 1.0
    return v


@dataclass(frozen=True)
class SampleRef:
    """Where one sample lives on disk."""

    id: str
    image: Path
    mask: Optional[Path] = None


def read_image(path: Path) -> torch.Tensor:
    """Decode an RGB image to a uint8 tensor [3, H, W]; a clear DataError names the file."""
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise DataError(f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"cannot decode image {path}: {e}") from None
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def read_label_png(path: Path) -> np.ndarray:
    """Decode a label image to an integer array [H, W] of raw label values.

    Palette PNGs (VOC) give their palette indices, 16-bit PNGs keep 16 bits, RGB label images
    give their first channel (SYNTHIA stores the class there).
    """
    try:
        with Image.open(path) as im:
            arr = np.asarray(im)
    except FileNotFoundError:
        raise DataError(f"mask not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"cannot decode mask {path}: {e}") from None
    if arr.ndim == 3:
        arr = arr[..., 0]
    return arr.astype(np.int64)


class SegmentationDataset(torch.utils.data.Dataset):
    """A list of samples with decoding, optional label mapping, pre-resize and a transform.

    Args:
        items: the samples.
        class_names: names of the ``num_classes`` train ids 0..C-1.
        label_map: optional lookup table (raw label value -> train id or ``ignore_index``),
            indexed by raw values; values beyond its length are an error.
        resize_factor: fixed rescale of image (bilinear, antialiased) and mask (nearest) at load.
        transform: callable on the sample dict (see :mod:`u2plus.data.transforms`).

    ``resize`` (``[height, width]``, set from ``data.resize``) resizes every sample to that
    fixed size instead of ``resize_factor``.
    """

    def __init__(
        self,
        items: Sequence[SampleRef],
        class_names: Sequence[str],
        ignore_index: int = 255,
        label_map: Optional[np.ndarray] = None,
        resize_factor: float = 1.0,
        transform: Optional[Callable[[dict], dict]] = None,
        name: str = "dataset",
    ):
        self.items = list(items)
        self.class_names = list(class_names)
        self.ignore_index = ignore_index
        self.label_map = label_map
        self.resize_factor = resize_factor
        self.transform = transform
        self.name = name
        self.resize: Optional[tuple[int, int]] = None
        # image-level labels {id: [class ids]} the samples carry (set by u2plus.data.tags.with_tags),
        # and those the dataset's own tag file gives (e.g. CCP tags.json), with that file's name
        self.tags: Optional[dict[str, list[int]]] = None
        self.available_tags: Optional[dict[str, list[int]]] = None
        self.available_tags_source = ""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def has_masks(self) -> bool:
        return all(it.mask is not None for it in self.items)

    def __len__(self) -> int:
        return len(self.items)

    def ids(self) -> list[str]:
        return [it.id for it in self.items]

    # -- decoding -------------------------------------------------------------------------
    def load_mask(self, path: Path) -> np.ndarray:
        """Raw label values -> train ids (``ignore_index`` for void)."""
        raw = read_label_png(path)
        if self.label_map is not None:
            if raw.size and (raw.min() < 0 or raw.max() >= len(self.label_map)):
                raise DataError(
                    f"mask {path} has label value {int(raw.max())} outside the dataset's label ids"
                )
            raw = self.label_map[raw]
        return raw

    def load(self, index: int) -> dict:
        ref = self.items[index]
        image = read_image(ref.image)
        sample = {"id": ref.id, "index": index}
        if ref.mask is not None:
            mask = torch.from_numpy(self.load_mask(ref.mask))
            if tuple(mask.shape) != tuple(image.shape[1:]):
                raise DataError(
                    f"mask {ref.mask} is {mask.shape[1]}x{mask.shape[0]} but its image "
                    f"{ref.image} is {image.shape[2]}x{image.shape[1]}"
                )
            sample["mask"] = tv_tensors.Mask(mask)
        sample["image"] = tv_tensors.Image(image)
        if self.tags is not None:
            sample["tags"] = tag_vector(self.tags[ref.id], self.num_classes)
        h, w = image.shape[1:]
        size = (list(self.resize) if self.resize is not None
                else [max(1, round(h * self.resize_factor)), max(1, round(w * self.resize_factor))])
        if size != [h, w]:
            sample["image"] = TF.resize(sample["image"], size, antialias=True)
            if "mask" in sample:
                sample["mask"] = TF.resize(
                    sample["mask"], size, interpolation=TF.InterpolationMode.NEAREST
                )
        return sample

    def __getitem__(self, index: int) -> dict:
        sample = self.load(index)
        return self.transform(sample) if self.transform is not None else sample

    # -- subsets and checks ---------------------------------------------------------------
    def subset(self, ids: Sequence[str], source: str = "split file") -> "SegmentationDataset":
        """The samples with these ids, in this order; unknown ids are an error naming ``source``."""
        by_id = {it.id: it for it in self.items}
        missing = [i for i in ids if i not in by_id]
        if missing:
            more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
            raise DataError(
                f"{source}: {len(missing)} id(s) not found in {self.name}: "
                f"{', '.join(missing[:3])}{more}"
            )
        return self.with_items([by_id[i] for i in ids])

    def without_masks(self) -> "SegmentationDataset":
        """The same images as an unlabeled set (masks dropped, never read)."""
        return self.with_items([SampleRef(it.id, it.image, None) for it in self.items])

    def with_items(self, items: Sequence[SampleRef]) -> "SegmentationDataset":
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.items = list(items)
        return new

    def per_image_class_counts(self, purpose: str = "class statistics") -> torch.Tensor:
        """``[N, C]`` pixels of each class in each image's mask, at the mask's stored resolution
        (ignored and out-of-range values not counted). Reads every mask once."""
        counts = torch.zeros(len(self.items), self.num_classes, dtype=torch.long)
        for i, ref in enumerate(self.items):
            if ref.mask is None:
                raise DataError(f"{self.name}: {ref.image} has no mask; {purpose} need masks")
            mask = torch.from_numpy(self.load_mask(ref.mask).astype(np.int64)).reshape(-1)
            counts[i] = torch.bincount(mask[(mask >= 0) & (mask < self.num_classes)], minlength=self.num_classes)
        return counts

    def class_pixel_counts(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per class: its pixels, and the labelled (non-ignored) pixels of the images in which it
        occurs (the inputs of median frequency balancing). Reads every mask once."""
        counts = self.per_image_class_counts("class weights")
        return counts.sum(0), ((counts > 0).long() * counts.sum(1, keepdim=True)).sum(0)

    def check_files(self) -> None:
        """Decode every file once: readable images, masks of the same size, label values in
        0..C-1 or ``ignore_index``. Raises DataError naming the first bad file."""
        for ref in self.items:
            problem = self.file_problem(ref)
            if problem:
                raise DataError(problem)

    def file_problem(self, ref: SampleRef, labels: bool = True, pixels: bool = True) -> Optional[str]:
        """The first thing wrong with one sample's files, as a line naming the file, or None.

        ``pixels=False`` reads only the image's header (size); ``labels=False`` only the mask's,
        without checking its label values (``u2plus data check`` on large datasets).
        """
        try:
            if pixels:
                width, height = read_image(ref.image).shape[:0:-1]
            else:
                width, height = image_size(ref.image)
            if ref.mask is None:
                return None
            mask = self.load_mask(ref.mask) if labels else None
            mask_w, mask_h = (mask.shape[1], mask.shape[0]) if labels else image_size(ref.mask, "mask")
        except DataError as e:
            return str(e)
        if (mask_w, mask_h) != (width, height):
            return f"mask {ref.mask} is {mask_w}x{mask_h} but its image {ref.image} is {width}x{height}"
        if not labels:
            return None
        valid = np.zeros(max(self.ignore_index, self.num_classes) + 1, dtype=bool)
        valid[: self.num_classes] = True
        valid[self.ignore_index] = True
        values = np.unique(mask)
        bad = values[(values < 0) | (values >= len(valid))]
        if bad.size == 0:
            bad = values[~valid[values]]
        if bad.size:
            return (f"mask {ref.mask} has label value(s) {bad[:5].tolist()} outside 0..{self.num_classes - 1}"
                    f" and ignore {self.ignore_index}")
        return None


def image_size(path: Path, what: str = "image") -> tuple[int, int]:
    """(width, height) from the file's header, without decoding its pixels."""
    try:
        with Image.open(path) as im:
            return im.size
    except FileNotFoundError:
        raise DataError(f"{what} not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"cannot decode {what} {path}: {e}") from None


def read_id_list(path: Path) -> list[str]:
    """One id a line; blank lines and '#' comments skipped."""
    try:
        lines = Path(path).read_text().splitlines()
    except FileNotFoundError:
        raise DataError(f"split file not found: {path}") from None
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


def require_dir(path: Path, what: str) -> Path:
    if not Path(path).is_dir():
        raise DataError(f"{what} not found: {path}")
    return Path(path)


def list_images(folder: Path, exts=(".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")) -> list[Path]:
    return sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in exts and p.is_file())
