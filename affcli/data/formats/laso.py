"""LASO raw format: anno_{split}.pkl, objects_{split}.pkl and Affordance-Question.csv.

anno_{split}.pkl: a list of {'shape_id': str, 'class': str (lower case), 'affordance': str,
'mask': float32 [2048]}; objects_{split}.pkl: {shape_id: float32 [2048, 3]};
the CSV: columns Object, Affordance, Question0..Question14, one row per (object, affordance).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from affcli.data.formats.common import check_points, check_scores, missing_root, setting_dir
from affcli.data.formats.safe_pickle import safe_load_pickle
from affcli.data.h5 import Manifest, Prepared, SplitData
from affcli.data.names import LASO_AFFORDANCES, OBJECT_CLASSES, canonical_class
from affcli.errors import AffError

SPLITS = ("train", "val", "test")
NUM_QUESTIONS = 15
QUESTION_CSV = "Affordance-Question.csv"


def read_questions(path: Path, manifest: Manifest) -> dict[tuple[str, str], list[str]]:
    """(object lower-case, affordance) -> the 15 questions, Question0 first."""
    data = manifest.read_bytes(path)
    try:
        df = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise AffError(path, f"not a readable CSV ({exc})") from None
    want = ["Object", "Affordance"] + [f"Question{i}" for i in range(NUM_QUESTIONS)]
    missing = [c for c in want if c not in df.columns]
    if missing:
        raise AffError(path, f"missing column(s) {', '.join(missing)}")
    table: dict[tuple[str, str], list[str]] = {}
    for row_no, row in enumerate(df[want].itertuples(index=False), start=2):
        obj, aff, *questions = (str(v).strip() for v in row)
        empty = [i for i, q in enumerate(questions) if not q]
        if empty:
            raise AffError(path, f"empty Question{empty[0]} for ({obj}, {aff})",
                           record=f"line {row_no}")
        table[(obj.lower(), aff.lower())] = questions
    return table


def read_laso(
    root: Path,
    setting: str,
    num_points: int = 2048,
    progress_factory: Callable[[int], Callable[[int], None]] | None = None,
) -> Prepared:
    root = Path(root)
    if not root.is_dir():
        raise missing_root("laso", root)
    base = setting_dir(root, setting.capitalize())
    csv = base / QUESTION_CSV if (base / QUESTION_CSV).exists() else root / QUESTION_CSV
    if not csv.exists():
        raise missing_root("laso", root) if not any(base.glob("anno_*.pkl")) else AffError(
            csv, "question CSV not found")
    manifest = Manifest(root)
    questions = read_questions(csv, manifest)
    progress = progress_factory(len(SPLITS)) if progress_factory else None
    splits = {}
    for split in SPLITS:
        splits[split] = _read_split(base, split, questions, manifest, num_points)
        if progress:
            progress(1)
    return Prepared(
        dataset="laso", setting=setting, view="", object_names=list(OBJECT_CLASSES),
        affordance_names=list(LASO_AFFORDANCES), num_points=num_points, splits=splits,
        manifest=manifest,
    )


def _load(path: Path, manifest: Manifest) -> object:
    return safe_load_pickle(path, manifest.read_bytes(path))


def _read_split(base: Path, split: str, questions: dict[tuple[str, str], list[str]],
                manifest: Manifest, n: int) -> SplitData:
    anno_path, obj_path = base / f"anno_{split}.pkl", base / f"objects_{split}.pkl"
    if not anno_path.exists() and not obj_path.exists() and split == "val":
        raise AffError(base, "no anno_val.pkl / objects_val.pkl (LASO has train, val and test)")
    anno = _load(anno_path, manifest)
    objects = _load(obj_path, manifest)
    if not isinstance(anno, list):
        raise AffError(anno_path, f"expected a list of annotation records, got "
                       f"{type(anno).__name__}")
    if not isinstance(objects, dict):
        raise AffError(obj_path, f"expected a dict shape_id -> points, got "
                       f"{type(objects).__name__}")

    shape_ids = sorted(str(k) for k in objects)
    shape_index = {sid: i for i, sid in enumerate(shape_ids)}
    by_str = {str(k): v for k, v in objects.items()}
    points = np.empty((len(shape_ids), n, 3), dtype=np.float32)
    for i, sid in enumerate(shape_ids):
        points[i] = check_points(by_str[sid], obj_path, f"shape {sid}", n)

    shape_object = np.full(len(shape_ids), -1, dtype=np.int16)
    m = len(anno)
    s_shape = np.empty(m, np.int32)
    s_obj = np.empty(m, np.int16)
    s_aff = np.empty(m, np.int16)
    masks = np.empty((m, n), np.float32)
    qs: list[list[str]] = []
    aff_index = {a: i for i, a in enumerate(LASO_AFFORDANCES)}
    for i, rec in enumerate(anno):
        where = f"record {i}"
        if not isinstance(rec, dict):
            raise AffError(anno_path, f"record is a {type(rec).__name__}, expected a dict", where)
        missing = [k for k in ("shape_id", "class", "affordance", "mask") if k not in rec]
        if missing:
            raise AffError(anno_path, f"record lacks {', '.join(missing)}", where)
        sid = str(rec["shape_id"])
        if sid not in shape_index:
            raise AffError(anno_path, f"shape_id {sid} is not in {obj_path.name}", where)
        cls = canonical_class(str(rec["class"]))
        if cls is None:
            raise AffError(anno_path, f"unknown object class {rec['class']!r}", where)
        aff = str(rec["affordance"]).strip().lower()
        if aff not in aff_index:
            raise AffError(anno_path, f"unknown affordance {rec['affordance']!r} "
                           f"(LASO has {', '.join(LASO_AFFORDANCES)})", where)
        key = (cls.lower(), aff)
        if key not in questions:
            raise AffError(base / QUESTION_CSV, f"no questions for object {cls.lower()!r} and "
                           f"affordance {aff!r} (needed by {anno_path.name} {where})")
        masks[i] = check_scores(rec["mask"], anno_path, where, n)
        s_shape[i] = shape_index[sid]
        s_obj[i] = OBJECT_CLASSES.index(cls)
        s_aff[i] = aff_index[aff]
        shape_object[s_shape[i]] = s_obj[i]
        qs.append(questions[key])
    # Shapes no record refers to keep their points but have no class we could learn.
    return SplitData(
        shape_ids=shape_ids, shape_points=points, shape_object=shape_object,
        sample_shape=s_shape, sample_object=s_obj, sample_affordance=s_aff,
        sample_mask=masks, questions=qs,
    )
