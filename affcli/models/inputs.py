"""What a model is conditioned on, declared by the model and read by the engine and the CLI.

A model lists its conditioning inputs as `ModelInput`s (`AffordanceModel.inputs`). Each has
a kind that says how a raw value (what a user types or points at) becomes what the model's
`forward_batch` reads for one sample:

- ``text``: a string (question, instruction), passed on as it is;
- ``image``: an image file, read, cropped and resized as in training into ``image``
  [3, S, S]; the box inputs of the same model (if any) are carried into that frame;
- ``boxes``: a LabelMe JSON file with rectangles labelled ``subject`` and ``object``;
- ``box``: one box ``x1,y1,x2,y2`` in image pixels, named by the input (``subject_box``).

`affcli predict` offers one option per declared input (`--question`, `--image`, ...), its help
generated from these declarations, so a new model's inputs need no change to the CLI.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from affcli.errors import AffError

KINDS = ("text", "image", "boxes", "box")
SUBJECT_BOX, OBJECT_BOX = "subject_box", "object_box"


@dataclass(frozen=True)
class ModelInput:
    """One conditioning input: `name` is the key `forward_batch` reads (and the keyword in
    Python), `option` the command-line option that carries it."""

    name: str
    kind: str
    help: str
    example: str = ""
    required: bool = True
    # sample values for export checks (text inputs): real sentences of different lengths
    samples: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"input {self.name!r}: kind must be one of {KINDS}, got "
                             f"{self.kind!r}")
        if not self.name.isidentifier():
            raise ValueError(f"input name {self.name!r} must be a Python identifier")

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")


def parse_box(text: str, option: str = "--object-box") -> tuple[float, float, float, float]:
    """`x1,y1,x2,y2` (either corner order; spaces or commas) as (left, top, right, bottom)."""
    parts = [p for p in re.split(r"[\s,]+", str(text).strip()) if p]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 4 or not all(math.isfinite(v) for v in values):
        raise AffError(option, f"expected four numbers x1,y1,x2,y2 in image pixels, got {text!r}")
    x1, y1, x2, y2 = values
    return min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)


def check_values(inputs: Sequence[ModelInput], values: Mapping[str, Any], model_type: str
                 ) -> None:
    """AffError naming the first missing required input, then the first given one the model
    does not take."""
    declared = {i.name: i for i in inputs}
    for spec in inputs:
        value = values.get(spec.name)
        missing = value is None or (spec.kind == "text" and not str(value).strip())
        if spec.required and missing:
            example = f", e.g. {spec.option} {spec.example!r}" if spec.example else ""
            article = "an" if model_type[:1] in "aeiou" else "a"
            raise AffError(spec.option, f"{article} {model_type} model needs "
                           f"{spec.help.rstrip('.')}{example}")
    for name, value in values.items():
        if value is not None and name not in declared:
            taken = ", ".join(i.option for i in inputs) or "no conditioning options"
            raise AffError("--" + name.replace("_", "-"),
                           f"not used by {model_type} models (they take {taken})")
    boxes = [i for i in inputs if i.kind == "box"]
    if any(values.get(i.name) is not None for i in boxes):
        files = [i for i in inputs if i.kind == "boxes" and values.get(i.name) is not None]
        if files:
            raise AffError(files[0].option, "give the boxes either as a JSON file or as "
                           f"{'/'.join(i.option for i in boxes)}, not both")
    if values.get(SUBJECT_BOX) is not None and values.get(OBJECT_BOX) is None:
        raise AffError("--object-box", "needed with --subject-box (the object's box in the "
                       "image)")


# ---------------------------------------------------------------------------------------------
# the image and its boxes


def check_files(inputs: Sequence[ModelInput], values: Mapping[str, Any]) -> None:
    """Read and parse the image and box files among `values` (AffError naming the file): a
    bad file is reported before any model is loaded."""
    from affcli.data.formats.piad import parse_box_json, read_image
    from affcli.fileio import read_user_bytes

    for spec in inputs:
        value = values.get(spec.name)
        if value is None or spec.kind not in ("image", "boxes"):
            continue
        path = Path(value)
        data = read_user_bytes(path, "image" if spec.kind == "image" else "box file")
        if spec.kind == "image":
            read_image(path, data)
        else:
            parse_box_json(path, data)


def load_image_item(inputs: Sequence[ModelInput], values: Mapping[str, Any]) -> dict[str, Any]:
    """`image` [3, 224, 224] (normalised) and the boxes [4] in pixels of that image, from the
    image file, a LabelMe box file or single boxes in `values`. A model without box inputs
    sees the whole image (boxes only matter to the crop of training). AffError names the
    file or option at fault."""
    from affcli.data.datasets import load_image
    from affcli.data.formats.piad import parse_box_json, read_image
    from affcli.fileio import read_user_bytes

    image_spec = next(i for i in inputs if i.kind == "image")
    path = Path(values[image_spec.name])
    jpeg, (h, w) = read_image(path, read_user_bytes(path, "image"))
    subject = np.zeros(4, np.float32)
    box_file = next((values[i.name] for i in inputs
                     if i.kind == "boxes" and values.get(i.name) is not None), None)
    if box_file is not None:
        box_path = Path(box_file)
        subject, obj = parse_box_json(box_path, read_user_bytes(box_path, "box file"))
        where = box_path
    elif values.get(OBJECT_BOX) is not None:
        obj = np.array(values[OBJECT_BOX], np.float32)
        if values.get(SUBJECT_BOX) is not None:
            subject = np.array(values[SUBJECT_BOX], np.float32)
        where = Path("--object-box")
    else:
        obj = np.array([0, 0, w, h], np.float32)
        where = path
    obj = _clip_box(obj, w, h, where, "object")
    if subject.any():
        subject = _clip_box(subject, w, h, where, "subject")
    image, sub, ob = load_image(jpeg, (h, w), subject, obj, rng=None)
    return {"image": image, SUBJECT_BOX: sub, OBJECT_BOX: ob}


def _clip_box(box: np.ndarray, w: int, h: int, where: Path, what: str) -> np.ndarray:
    clipped = np.array([np.clip(box[0], 0, w), np.clip(box[1], 0, h), np.clip(box[2], 0, w),
                        np.clip(box[3], 0, h)], np.float32)
    # the boxes are truncated to whole pixels downstream, so a box must span at least one
    if int(clipped[2]) - int(clipped[0]) < 1 or int(clipped[3]) - int(clipped[1]) < 1:
        raise AffError(where, f"the {what} box {box.tolist()} does not cover any pixel of the "
                       f"{w}x{h} image")
    return clipped


def conditioning_item(inputs: Sequence[ModelInput], values: Mapping[str, Any]
                      ) -> dict[str, Any]:
    """One sample's conditioning as the model's dataset item holds it: texts as strings, the
    image and boxes as tensors. `values` must have passed `check_values`."""
    item: dict[str, Any] = {}
    for spec in inputs:
        if spec.kind == "text" and values.get(spec.name) is not None:
            item[spec.name] = str(values[spec.name])
    if any(i.kind == "image" for i in inputs):
        loaded = load_image_item(inputs, values)
        item["image"] = loaded["image"]
        if any(i.kind in ("box", "boxes") for i in inputs):
            item[SUBJECT_BOX], item[OBJECT_BOX] = loaded[SUBJECT_BOX], loaded[OBJECT_BOX]
    return item
