"""Raw-file loaders that follow the reference implementations' algorithms, for benchmarks only.

They do per sample what the reference loaders do: LASO looks the question up in the CSV table
with a boolean mask; PIAD/AGPIL parse each point text file line by line with Python floats,
open the image and box JSON, crop, resize and normalise. `affcli bench loader` compares them
with the HDF5 datasets.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from torchvision import transforms

from affcli.data.datasets import IMAGE_SIZE, IMAGENET_MEAN, IMAGENET_STD, crop_keeping_boxes
from affcli.data.formats.common import read_list_file, setting_dir
from affcli.data.formats.piad import find_list
from affcli.data.formats.safe_pickle import safe_load_pickle
from affcli.data.names import PIAD_AFFORDANCES

# The reference's image transform: ToTensor then ImageNet Normalize.
_TO_TENSOR = transforms.Compose(
    [transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN.tolist(), IMAGENET_STD.tolist())]
)


def _unit_sphere(pc: np.ndarray) -> np.ndarray:
    pc = pc - pc.mean(axis=0)
    return pc / np.max(np.sqrt(np.sum(pc**2, axis=1)))


class RawLaso:
    def __init__(self, root: Path, setting: str, split: str) -> None:
        base = setting_dir(Path(root), setting.capitalize())
        self.anno = safe_load_pickle(base / f"anno_{split}.pkl")
        self.objects = safe_load_pickle(base / f"objects_{split}.pkl")
        self.questions = pd.read_csv(base / "Affordance-Question.csv")
        self.train = split == "train"
        self.rng = np.random.default_rng(0)

    def __len__(self) -> int:
        return len(self.anno)

    def __getitem__(self, i: int) -> tuple[Any, ...]:
        rec = self.anno[i]
        points = _unit_sphere(self.objects[str(rec["shape_id"])]).T
        qid = f"Question{int(self.rng.integers(1, 15)) if self.train else 0}"
        df = self.questions
        hit = df.loc[(df["Object"] == rec["class"]) & (df["Affordance"] == rec["affordance"]),
                     [qid]]
        return points, rec["mask"], hit.iloc[0][qid]


class RawListed:
    """PIAD (and AGPIL, with descriptions) read from the raw list files per sample."""

    def __init__(self, root: Path, setting: str, split: str, view: str | None = None,
                 pairing_num: int = 2) -> None:
        base = setting_dir(Path(root), setting.capitalize(), view=view.capitalize() if view
                           else None)
        self.root = Path(root)
        cap = split.capitalize()

        def lines(stem: str) -> list[Path]:
            path = find_list(base, stem, split, required=False)
            return [self.root / e for _, e in read_list_file(path)] if path else []

        self.images, self.points, self.boxes = lines("Img"), lines("Point"), lines("Box")
        self.descriptions = lines("Description")
        self.train = cap == "Train"
        self.pairing_num = pairing_num
        self.by_class: dict[str, list[Path]] = {}
        for p in self.points:
            self.by_class.setdefault(p.stem.split("_")[-2], []).append(p)
        self.rng = np.random.default_rng(0)

    def __len__(self) -> int:
        return len(self.images)

    @staticmethod
    def parse_points(path: Path) -> tuple[np.ndarray, np.ndarray]:
        rows = []
        with open(path) as f:
            for line in f.readlines():
                rows.append([float(x) for x in line.strip().split(" ")[2:]])
        arr = np.array(rows)
        return arr[:, :3], arr[:, 3:]

    def __getitem__(self, i: int) -> tuple[Any, ...]:
        img_path = self.images[i]
        obj_name, aff = img_path.stem.split("_")[-3], img_path.stem.split("_")[-2]
        img = Image.open(img_path).convert("RGB")
        sub = obj = np.zeros(4, np.float32)
        if self.boxes:
            doc = json.load(open(self.boxes[i]))
            boxes = {s["label"]: np.array(s["points"], np.float32).reshape(-1)
                     for s in doc["shapes"]}
            sub, obj = boxes.get("subject", sub), boxes["object"]
        if self.train:
            left, top, right, bottom = crop_keeping_boxes((img.height, img.width), sub, obj,
                                                          self.rng)
            img = img.crop((left, top, right, bottom))
        img = img.resize((IMAGE_SIZE, IMAGE_SIZE))
        arr = _TO_TENSOR(img)
        if self.train:
            pool = self.by_class[obj_name]
            picks = self.rng.choice(len(pool), self.pairing_num, replace=len(pool) <
                                    self.pairing_num)
            paths = [pool[k] for k in picks]
        else:
            paths = [self.points[i]]
        clouds = []
        for p in paths:
            pts, labels = self.parse_points(p)
            clouds.append((_unit_sphere(pts).T, labels[:, PIAD_AFFORDANCES.index(aff)]))
        desc = json.load(open(self.descriptions[i]))["Description"] if self.descriptions else ""
        return arr, clouds, sub, obj, desc
