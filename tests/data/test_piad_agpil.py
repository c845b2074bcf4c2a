"""PIAD and AGPIL: synth -> prepare -> dataset round trip and the reference sampling rules."""

from __future__ import annotations

import io
import json

import h5py
import numpy as np
import pytest
from PIL import Image

from affcli.data import open_dataset
from affcli.data.datasets import IMAGE_SIZE
from affcli.data.formats.common import read_list_file
from affcli.data.names import OBJECT_CLASSES, PIAD_AFFORDANCES, PIAD_UNSEEN_TEST_CLASSES


def _points_file(path):
    rows = [ln.split() for ln in path.read_text().splitlines()]
    return rows[0][0], rows[0][1], np.array([r[2:] for r in rows], np.float32)


def _box(path):
    doc = json.loads(path.read_text())
    out = {}
    for s in doc["shapes"]:
        p = np.array(s["points"], np.float32)
        out[s["label"]] = np.array([*p.min(0), *p.max(0)], np.float32)
    return out


@pytest.mark.parametrize("dataset", ["piad", "agpil"])
def test_test_split_round_trip(raw_root, prepared, dataset):
    root, h5 = raw_root(dataset), prepared(dataset)
    base = root / "Seen" if dataset == "piad" else root / "Full_view" / "Seen"
    imgs = [root / e for _, e in read_list_file(base / "Img_Test.txt")]
    pts = [root / e for _, e in read_list_file(base / "Point_Test.txt")]
    boxes = [root / e for _, e in read_list_file(base / "Box_Test.txt")]
    ds = open_dataset(h5, "test")
    assert len(ds) == len(imgs) > 0
    with h5py.File(h5) as f:
        jpeg = f["test/samples/image_jpeg"]
        raw_points = f["test/shapes/points"]
        shape_idx = f["test/samples/shape"][()]
        for i, img in enumerate(imgs):
            assert jpeg[i].tobytes() == img.read_bytes()  # JPEG bytes kept as they were
            sid, cls, values = _points_file(pts[i])
            np.testing.assert_array_equal(raw_points[shape_idx[i]], values[:, :3])
    for i in range(len(ds)):
        item = ds[i]
        obj, aff = imgs[i].stem.split("_")[-3:-1]
        assert OBJECT_CLASSES[item["object"]] == obj and PIAD_AFFORDANCES[item["affordance"]] == aff
        _, _, values = _points_file(pts[i])
        column = values[:, 3 + PIAD_AFFORDANCES.index(aff)]
        np.testing.assert_array_equal(item["mask"].numpy(), column)
        p = item["points"].numpy()
        ref = values[:, :3] - values[:, :3].mean(0)
        np.testing.assert_allclose(p, ref / np.linalg.norm(ref, axis=1).max(), atol=1e-5)
        # boxes: sorted corners from the JSON, scaled to the 224x224 image
        b = _box(boxes[i])
        w, h = Image.open(imgs[i]).size
        scale = np.array([IMAGE_SIZE / w, IMAGE_SIZE / h] * 2, np.float32)
        np.testing.assert_allclose(item["object_box"].numpy(),
                                   np.trunc(b["object"]) * scale, rtol=1e-5)
        np.testing.assert_allclose(item["subject_box"].numpy(),
                                   np.trunc(b["subject"]) * scale, rtol=1e-5)
        assert item["image"].shape == (3, IMAGE_SIZE, IMAGE_SIZE)
        if dataset == "agpil":
            desc = root / read_list_file(base / "Description_Test.txt")[i][1]
            assert item["instruction"] == json.loads(desc.read_text())["Description"]


def test_train_pairing_and_crop(prepared):
    h5 = prepared("piad")
    ds = open_dataset(h5, "train", seed=1, pairing_num=2)
    with h5py.File(h5) as f:
        shape_obj = f["train/shapes/object"][()]
        labels = f["train/shapes/labels"][()]
        raw = f["train/shapes/points"][()]
    seen_shapes = set()
    for epoch in range(3):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            item = ds[i]
            assert item["points"].shape == (2, 2048, 3) and item["mask"].shape == (2, 2048)
            for k, s in enumerate(item["shape"].tolist()):
                seen_shapes.add(s)
                assert shape_obj[s] == item["object"]  # a cloud of the image's class
                np.testing.assert_array_equal(item["mask"][k].numpy(),
                                              labels[s, item["affordance"]])
                ref = raw[s] - raw[s].mean(0)
                np.testing.assert_allclose(item["points"][k].numpy(),
                                           ref / np.linalg.norm(ref, axis=1).max(), atol=1e-5)
            # the random crop keeps both boxes inside the 224x224 image
            for key in ("subject_box", "object_box"):
                b = item[key].numpy()
                if b.any():
                    assert (b >= -1e-3).all() and (b <= IMAGE_SIZE + 1e-3).all()
                    assert b[0] <= b[2] and b[1] <= b[3]
    assert seen_shapes == set(range(len(shape_obj)))  # every cloud gets drawn eventually
    # the same (seed, epoch, index) gives the same draw and crop
    again = open_dataset(h5, "train", seed=1)
    again.set_epoch(2)
    a, b = again[3], ds[3]
    assert a["shape"].tolist() == b["shape"].tolist()
    assert np.array_equal(a["image"].numpy(), b["image"].numpy())
    # crops vary between epochs
    boxes = set()
    for epoch in range(8):
        ds.set_epoch(epoch)
        boxes.add(tuple(np.round(ds[0]["object_box"].numpy(), 3)))
    assert len(boxes) > 1


def test_crop_matches_a_plain_crop_and_resize(prepared):
    """The fast (DCT-scaled) decode gives what a full decode, crop and resize give."""
    from affcli.data.datasets import IMAGENET_MEAN, IMAGENET_STD, crop_keeping_boxes

    h5 = prepared("piad")
    ds = open_dataset(h5, "train", seed=4)
    with h5py.File(h5) as f:
        jpeg = f["train/samples/image_jpeg"][0].tobytes()
        sub, obj = f["train/samples/subject_box"][0], f["train/samples/object_box"][0]
        hw = tuple(f["train/samples/image_size"][0])
    item = ds[0]
    left, t, r, b = crop_keeping_boxes(hw, sub.astype(np.int32).astype(np.float32),
                                    obj.astype(np.int32).astype(np.float32), ds.rng(0))
    img = Image.open(io.BytesIO(jpeg)).convert("RGB").crop((left, t, r, b)).resize((224, 224))
    ref = (np.asarray(img, np.float32) / 255 - IMAGENET_MEAN) / IMAGENET_STD
    got = item["image"].numpy().transpose(1, 2, 0)
    # same content; small differences come from decoding at a reduced DCT scale
    assert np.abs(got - ref).mean() < 0.08
    assert np.corrcoef(got.ravel(), ref.ravel())[0, 1] > 0.98


def test_unseen_withholds_classes(prepared):
    for dataset in ("piad", "agpil"):
        h5 = prepared(dataset, "unseen")
        with h5py.File(h5) as f:
            train = {OBJECT_CLASSES[i] for i in f["train/samples/object"][()]}
            train_shapes = {OBJECT_CLASSES[i] for i in f["train/shapes/object"][()]}
            test = {OBJECT_CLASSES[i] for i in f["test/samples/object"][()]}
        assert test and test <= set(PIAD_UNSEEN_TEST_CLASSES)
        assert not (train | train_shapes) & set(PIAD_UNSEEN_TEST_CLASSES)


@pytest.mark.parametrize("view", ["partial", "rotation"])
def test_agpil_views(raw_root, prepared, view):
    full, other = prepared("agpil", "seen", "full"), prepared("agpil", "seen", view)
    with h5py.File(full) as f, h5py.File(other) as g:
        assert g.attrs["view"] == view
        pf, po = f["test/shapes/points"][()], g["test/shapes/points"][()]
        assert pf.shape == po.shape
        assert not np.allclose(pf, po)
        if view == "rotation":  # a rigid rotation keeps the distances from the centroid
            for a, b in zip(pf, po, strict=True):
                da = np.sort(np.linalg.norm(a - a.mean(0), axis=1))
                db = np.sort(np.linalg.norm(b - b.mean(0), axis=1))
                np.testing.assert_allclose(da, db, atol=1e-4)
    ds = open_dataset(other, "train", seed=0)
    assert ds.rotate == (view == "rotation")
    if view == "rotation":
        item = ds[0]
        s = int(item["shape"][0])
        with h5py.File(other) as g:
            raw = g["train/shapes/points"][s]
        ref = raw - raw.mean(0)
        ref = ref / np.linalg.norm(ref, axis=1).max()
        got = item["points"][0].numpy()
        assert not np.allclose(got, ref, atol=1e-3)  # rotated at random ...
        np.testing.assert_allclose(np.sort(np.linalg.norm(got, axis=1)),
                                   np.sort(np.linalg.norm(ref, axis=1)), atol=1e-5)  # ... rigidly


def test_soft_labels_are_realistic(prepared):
    """Synthetic masks look like PIAD's: mostly zeros, a soft region near 1, values in [0,1]."""
    with h5py.File(prepared("piad")) as f:
        labels = f["test/shapes/labels"][()]
        obj = f["test/shapes/object"][()]
    from affcli.data.synth.shapes import CLASS_AFFORDANCES

    zero_share = []
    for s in range(labels.shape[0]):
        cls = OBJECT_CLASSES[obj[s]]
        for a in CLASS_AFFORDANCES[cls]:
            if a not in PIAD_AFFORDANCES:
                continue
            m = labels[s, PIAD_AFFORDANCES.index(a)]
            assert m.max() > 0.9 and (m >= 0.5).mean() > 0.01
            soft = ((m > 0.05) & (m < 0.95)).mean()
            assert soft > 0.005  # a smooth fall-off, not a hard part mask
            zero_share.append((m == 0).mean())
        others = [i for i, a in enumerate(PIAD_AFFORDANCES) if a not in CLASS_AFFORDANCES[cls]]
        assert not labels[s, others].any()
    # most affordances cover a part, so most points are exactly 0 (a body-wide wrapgrasp
    # or support region may cover more)
    assert np.median(zero_share) > 0.4
