"""torch Datasets over prepared HDF5 files, reproducing the reference loaders' sampling rules.

- LASO: train draws one of Question1..Question14 at random for the pair; val/test use Question0.
- PIAD / AGPIL: a train image is paired with `pairing_num` random point clouds of its class
  (the mask is each cloud's column for the image's affordance) and gets the reference's random
  crop that keeps both boxes inside; test uses the listed pairs and the whole image.
- Points are centred and scaled to the unit sphere; images resized to 224x224, boxes rescaled,
  ImageNet mean/std normalisation. AGPIL's rotation view rotates train clouds at random (SO(3)).

Randomness comes from `numpy.random.default_rng([seed, epoch, index])` (LASO: one draw of
question ids per `(seed, epoch)`), so a sample is the same whatever worker reads it and a
resumed run sees the same draws (`set_epoch`).
The HDF5 file is opened lazily, once per worker process.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from affcli.data.h5 import FileInfo, read_info
from affcli.data.splits import SplitView
from affcli.errors import AffError

IMAGE_SIZE = 224
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
_MEAN_255 = torch.from_numpy(IMAGENET_MEAN * 255).view(3, 1, 1)
_INV_STD_255 = torch.from_numpy(1 / (IMAGENET_STD * 255)).view(3, 1, 1)
NUM_QUESTIONS = 15
# Arrays below this size are read into memory once per worker instead of per sample.
CACHE_LIMIT_BYTES = 256 * 2**20
SUBSET_SEED = 20240617  # fixed: a shape's subsampled cloud must not depend on the run's seed


def normalize_points(points: np.ndarray) -> np.ndarray:
    """Centre on the centroid and scale so the farthest point is at distance 1."""
    pc = points - points.mean(axis=0, keepdims=True)
    scale = float(np.sqrt((pc**2).sum(axis=1)).max())
    return (pc / scale if scale > 0 else pc).astype(np.float32)


def normalize_all(points: np.ndarray) -> np.ndarray:
    """normalize_points over a stack [S, N, 3] at once."""
    pc = points - points.mean(axis=1, keepdims=True)
    scale = np.sqrt((pc**2).sum(axis=2)).max(axis=1)
    scale[scale == 0] = 1.0
    return (pc / scale[:, None, None]).astype(np.float32)


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random rotation matrix (Shoemake's quaternion method)."""
    u1, u2, u3 = rng.random(3)
    a, b = np.sqrt(1.0 - u1), np.sqrt(u1)
    w, x, y, z = (b * np.cos(2 * np.pi * u3), a * np.sin(2 * np.pi * u2),
                  a * np.cos(2 * np.pi * u2), b * np.sin(2 * np.pi * u3))
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def crop_keeping_boxes(
    hw: tuple[int, int], sub: np.ndarray, obj: np.ndarray, rng: np.random.Generator
) -> tuple[int, int, int, int]:
    """The reference's random crop (left, top, right, bottom) containing both boxes.

    Like the reference, corners are truncated to integers and a zero subject box counts as
    a corner at the origin.
    """
    h, w = hw
    corners = np.concatenate([obj.reshape(2, 2), sub.reshape(2, 2)]).astype(np.int32)
    min_x, min_y = int(corners[:, 0].min()), int(corners[:, 1].min())
    max_x, max_y = int(corners[:, 0].max()), int(corners[:, 1].max())
    top = int(rng.integers(0, max(min_y, 0) + 1))
    bottom = int(rng.integers(max_y + 1, h + 1)) if max_y + 1 < h else max_y + 1
    left = int(rng.integers(0, max(min_x, 0) + 1))
    right = int(rng.integers(max_x + 1, w + 1)) if max_x + 1 < w else max_x + 1
    return left, top, min(right, w), min(bottom, h)


def load_image(
    jpeg: bytes,
    hw: tuple[int, int],
    subject_box: np.ndarray,
    object_box: np.ndarray,
    rng: np.random.Generator | None,
    size: int = IMAGE_SIZE,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Decode, (train: random crop keeping both boxes,) resize; boxes follow the image.

    Returns (image [3, size, size] normalised, subject_box [4], object_box [4]) with boxes in
    pixels of the resized image.
    """
    h, w = hw
    sub = subject_box.astype(np.int32).astype(np.float32)
    obj = object_box.astype(np.int32).astype(np.float32)
    if rng is not None:
        left, top, right, bottom = crop_keeping_boxes(hw, sub, obj, rng)
    else:
        left, top, right, bottom = 0, 0, w, h
    cw, ch = right - left, bottom - top
    img = Image.open(io.BytesIO(jpeg))
    # JPEG can decode at 1/2, 1/4, 1/8 scale for a fraction of the cost; ask only for a scale
    # that keeps the crop at least `size` pixels on each side, so no detail the 224x224
    # output could hold is lost.
    req = (min(w, -(-w * size // max(cw, 1))), min(h, -(-h * size // max(ch, 1))))
    img.draft("RGB", req)
    scale_x, scale_y = img.size[0] / w, img.size[1] / h
    img = img.convert("RGB")
    box = (round(left * scale_x), round(top * scale_y), round(right * scale_x),
           round(bottom * scale_y))
    if box != (0, 0, img.size[0], img.size[1]):
        img = img.crop(box)
    img = img.resize((size, size), Image.Resampling.BICUBIC)
    # (x / 255 - mean) / std as one subtract and one multiply, in torch, channels first
    image = torch.from_numpy(np.array(img)).permute(2, 0, 1).float().contiguous()
    image.sub_(_MEAN_255).mul_(_INV_STD_255)
    shift = np.array([left, top, left, top], np.float32)
    scale = np.array([size / cw, size / ch, size / cw, size / ch], np.float32)
    if sub.any():
        sub = (sub - shift) * scale
    obj = (obj - shift) * scale
    return image, torch.from_numpy(sub), torch.from_numpy(obj)


class H5Dataset(Dataset):
    """Common machinery: split check, in-memory index arrays, lazy per-process file handle."""

    def __init__(self, path: str | Path, split: str, seed: int = 0,
                 num_points: int | None = None, view: SplitView | None = None) -> None:
        self.info: FileInfo = read_info(path)
        self.path = Path(path)
        if split not in self.info.splits:
            raise AffError(path, f"no split {split!r} (this file has "
                           f"{', '.join(self.info.splits)})")
        self.split = split
        self.train = split == "train" if view is None else view.augment
        self.seed = int(seed)
        self.epoch = 0
        self._file: h5py.File | None = None
        self._pid: int | None = None
        self._handles: dict[str, h5py.Dataset] = {}
        self._cache: dict[str, np.ndarray] = {}
        self._tensors: dict[str, torch.Tensor | None] = {}
        with h5py.File(self.path, "r") as f:
            g = f[split]
            self.sample_shape = g["samples/shape"][()]
            self.sample_object = g["samples/object"][()].astype(np.int64)
            self.sample_affordance = g["samples/affordance"][()].astype(np.int64)
            self.shape_object = g["shapes/object"][()].astype(np.int64)
            self._load_index(g)
        # row i of this Dataset is row rows[i] of the split: the in-memory arrays are
        # sliced here; file reads go through `row`
        self.rows = None if view is None else np.asarray(view.rows, np.int64)
        if view is not None:
            for name in self._per_sample:
                if getattr(self, name) is not None:
                    setattr(self, name, getattr(self, name)[self.rows])
            if view.sample_shape is not None:
                self.sample_shape = np.asarray(view.sample_shape, np.int64)
        self.file_points = self.info.num_points
        self.num_points = self.file_points if num_points is None else int(num_points)
        if not 3 <= self.num_points <= self.file_points:
            raise AffError(path, f"cannot take {self.num_points} points per cloud from clouds "
                           f"of {self.file_points} (need 3..{self.file_points})")
        self._subsets: dict[int, np.ndarray] = {}

    def subset(self, shape: int) -> np.ndarray | None:
        """The points of `shape` kept when clouds are subsampled (`num_points` below the
        file's count): a fixed random subset per shape, the same in every split, run and
        process, so a shape's training and evaluation clouds agree. None: all points."""
        if self.num_points == self.file_points:
            return None
        if shape not in self._subsets:
            rng = np.random.default_rng([SUBSET_SEED, int(shape)])
            self._subsets[shape] = np.sort(rng.choice(self.file_points, self.num_points,
                                                      replace=False))
        return self._subsets[shape]

    # the in-memory per-sample arrays (subclasses add theirs)
    _per_sample: tuple[str, ...] = ("sample_shape", "sample_object", "sample_affordance")

    def _load_index(self, g: h5py.Group) -> None:
        """Subclasses read the small per-sample arrays they need."""

    def row(self, index: int) -> int:
        """The split's row behind item `index` (they differ in a carved view)."""
        return int(index) if self.rows is None else int(self.rows[index])

    def __len__(self) -> int:
        return int(self.sample_object.shape[0])

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, int(index)])

    def _group(self) -> h5py.Group:
        if self._file is None or self._pid != os.getpid():
            self._file = h5py.File(self.path, "r")
            self._pid = os.getpid()
            self._handles = {}
        return self._file[self.split]

    def _dataset(self, name: str) -> h5py.Dataset:
        """An open handle to `<split>/<name>`, looked up once per process (a lookup costs as
        much as reading a small chunk)."""
        group = self._group()
        if name not in self._handles:
            self._handles[name] = group[name]
        return self._handles[name]

    def _read(self, name: str, index: Any) -> np.ndarray:
        """`group[name][index]`, from memory when the whole array is small."""
        if name not in self._cache:
            ds = self._dataset(name)
            if ds.size * ds.dtype.itemsize > CACHE_LIMIT_BYTES:
                return ds[index]
            self._cache[name] = ds[()]
        return self._cache[name][index]

    def _points(self, shape: int) -> np.ndarray:
        """Normalised points of one shape (its subset when subsampling; normalised over the
        whole cloud first, so the subset sits where the full cloud does)."""
        full = self._full_points(shape)
        sub = self.subset(shape)
        return full if sub is None else full[sub]

    def _mask(self, mask: np.ndarray, shape: int) -> np.ndarray:
        sub = self.subset(shape)
        return np.array(mask if sub is None else mask[sub], np.float32)  # a copy

    def _full_points(self, shape: int) -> np.ndarray:
        """Normalised points of one shape. Normalisation is per shape and deterministic, so a
        split small enough to cache is normalised once, for all shapes together."""
        cached = self._cache.get("normalized")
        if cached is None:
            ds = self._dataset("shapes/points")
            if ds.size * ds.dtype.itemsize > CACHE_LIMIT_BYTES:
                return normalize_points(ds[shape])
            cached = self._cache["normalized"] = normalize_all(ds[()])
        return cached[shape]

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_file=None, _pid=None, _cache={}, _tensors={}, _handles={})
        return state

    def _check_index(self, index: int) -> int:
        if not -len(self) <= index < len(self):
            raise IndexError(f"sample {index} out of range for {len(self)} samples")
        return index % len(self)


class LasoDataset(H5Dataset):
    """Items: points [N, 3], mask [N], question, object, affordance, shape, index."""

    _per_sample = (*H5Dataset._per_sample, "questions")

    def _load_index(self, g: h5py.Group) -> None:
        self.questions = g["samples/questions"].asstr()[()]

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self._qids = None

    def question_ids(self) -> np.ndarray:
        """This epoch's question per sample. Question0 is the canonical phrasing; training
        sees the 14 rephrasings, drawn for the whole epoch from (seed, epoch) at once."""
        if getattr(self, "_qids", None) is None:
            if self.train:
                rng = np.random.default_rng([self.seed, self.epoch])
                self._qids = rng.integers(1, NUM_QUESTIONS, size=len(self))
            else:
                self._qids = np.zeros(len(self), np.int64)
        return self._qids

    def __getitem__(self, index: int) -> dict[str, Any]:
        i = self._check_index(index)
        qid = int(self.question_ids()[i])
        shape = int(self.sample_shape[i])
        return {
            # copies: callers may modify items in place; the cache must not change
            "points": torch.from_numpy(self._points(shape).copy()),
            "mask": torch.from_numpy(self._mask(self._read("samples/mask", self.row(i)),
                                                shape)),
            "question": str(self.questions[i, qid]),
            "object": int(self.sample_object[i]),
            "affordance": int(self.sample_affordance[i]),
            "shape": shape,
            "index": i,
        }

    def __getitems__(self, indices: list[int]) -> list[dict[str, Any]]:
        """A whole batch at once (torch's DataLoader calls this when it exists): one fancy
        index per array instead of one lookup per sample."""
        idx = np.array([self._check_index(i) for i in indices], np.int64)
        if self.num_points != self.file_points:  # subsampled clouds: item by item
            return [self[int(i)] for i in idx]
        shapes = self.sample_shape[idx]
        self._full_points(int(shapes[0]))  # fills the normalised cache when the split fits
        self._read("samples/mask", int(idx[0]))  # likewise the masks
        points = self._cache_tensor("normalized")
        masks = self._cache_tensor("samples/mask")
        if points is None or masks is None:  # too large to cache: one read per sample
            return [self[int(i)] for i in idx]
        qids = self.question_ids()[idx]
        # Views into the cache: the DataLoader's collate copies them into the batch, so
        # nothing is copied twice. (Direct callers wanting to write should use self[i].)
        return [
            {"points": points[s], "mask": masks[self.row(i)],
             "question": str(self.questions[i, q]),
             "object": int(self.sample_object[i]), "affordance": int(self.sample_affordance[i]),
             "shape": int(s), "index": int(i)}
            for i, s, q in zip(idx, shapes, qids, strict=True)
        ]

    def _cache_tensor(self, name: str) -> torch.Tensor | None:
        key = f"tensor:{name}"
        if key not in self._tensors:
            arr = self._cache.get(name)
            self._tensors[key] = None if arr is None else torch.from_numpy(arr)
        return self._tensors[key]


class PiadDataset(H5Dataset):
    """PIAD and AGPIL. Items: image [3, 224, 224], subject_box [4], object_box [4],
    points ([P,] N, 3), mask ([P,] N), object, affordance, index (+ instruction for AGPIL).
    Train items carry P = pairing_num clouds; test items one."""

    _per_sample = (*H5Dataset._per_sample, "image_size", "subject_box", "object_box",
                   "instructions")

    def __init__(self, path: str | Path, split: str, seed: int = 0, pairing_num: int = 2,
                 num_points: int | None = None, view: SplitView | None = None) -> None:
        super().__init__(path, split, seed, num_points, view)
        if pairing_num < 1:
            raise AffError("--pairing-num", f"must be at least 1, got {pairing_num}")
        self.pairing_num = pairing_num
        self.rotate = self.info.view == "rotation"
        allowed = (np.arange(len(self.shape_object)) if view is None or view.shapes is None
                   else np.asarray(view.shapes, np.int64))
        self.shapes_of_class = {
            int(c): allowed[self.shape_object[allowed] == c]
            for c in np.unique(self.shape_object[allowed])
        }

    def _load_index(self, g: h5py.Group) -> None:
        self.image_size = g["samples/image_size"][()]
        self.subject_box = g["samples/subject_box"][()]
        self.object_box = g["samples/object_box"][()]
        self.instructions = (g["samples/instruction"].asstr()[()]
                             if "instruction" in g["samples"] else None)

    def cloud(self, shape: int, affordance: int, rng: np.random.Generator | None
              ) -> tuple[np.ndarray, np.ndarray]:
        """One shape's points [N, 3] and its mask for `affordance`, randomly rotated when
        `rng` is given and the dataset rotates (public: `affcli bench loader` times it)."""
        points = self._points(shape)
        if rng is not None and self.rotate:
            # Rotating before or after normalising gives the same cloud (the centroid
            # rotates with the points and distances are kept), so rotate the cached one.
            points = (points @ random_rotation(rng).T.astype(np.float32)).astype(np.float32)
        mask = self._mask(self._read("shapes/labels", (shape, affordance)), shape)
        return points, mask

    def __getitem__(self, index: int) -> dict[str, Any]:
        i = self._check_index(index)
        rng = self.rng(i) if self.train else None
        aff = int(self.sample_affordance[i])
        jpeg = self._dataset("samples/image_jpeg")[self.row(i)].tobytes()
        image, sub, obj = load_image(jpeg, tuple(self.image_size[i]), self.subject_box[i],
                                     self.object_box[i], rng)
        item: dict[str, Any] = {
            "image": image, "subject_box": sub, "object_box": obj,
            "object": int(self.sample_object[i]), "affordance": aff, "index": i,
        }
        if rng is not None:
            pool = self.shapes_of_class[int(self.sample_object[i])]
            # The reference draws without replacement; a class with fewer clouds repeats some.
            picks = rng.choice(pool, size=self.pairing_num, replace=len(pool) < self.pairing_num)
            clouds = [self.cloud(int(s), aff, rng) for s in picks]
            item["points"] = torch.from_numpy(np.stack([c[0] for c in clouds]))
            item["mask"] = torch.from_numpy(np.stack([c[1] for c in clouds]))
            item["shape"] = torch.from_numpy(picks.astype(np.int64))
        else:
            shape = int(self.sample_shape[i])
            points, mask = self.cloud(shape, aff, None)
            item.update(points=torch.from_numpy(points), mask=torch.from_numpy(mask), shape=shape)
        if self.instructions is not None:
            item["instruction"] = str(self.instructions[i])
        return item


def open_dataset(path: str | Path, split: str, **kwargs: Any) -> H5Dataset:
    """The Dataset for one split of a prepared file, chosen by the file's dataset kind.

    kwargs: `seed` (all), `num_points` (all: subsample every cloud to this many points, a
    fixed subset per shape), `pairing_num` (PIAD/AGPIL, default 2).
    """
    info = read_info(path)
    if info.dataset == "laso":
        kwargs.pop("pairing_num", None)
        return LasoDataset(path, split, **kwargs)
    if info.dataset in ("piad", "agpil"):
        return PiadDataset(path, split, **kwargs)
    raise AffError(path, f"unknown dataset kind {info.dataset!r}")
