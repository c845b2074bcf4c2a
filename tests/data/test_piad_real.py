"""prepare on the two genuine PIAD samples in ../shared/data/piad_demo, in a list-file layout."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from affcli.data import open_dataset
from affcli.data.names import OBJECT_CLASSES, PIAD_AFFORDANCES


@pytest.fixture
def demo_root(piad_demo, tmp_path):
    """A PIAD root whose list files name the demo files: absolute in Train, relative in Test."""
    root = tmp_path / "Data"
    seen = root / "Seen"
    (seen / "files").mkdir(parents=True)
    pairs = [("Bag", "lift"), ("Chair", "sit")]
    for obj, aff in pairs:
        for name in (f"Img_Test_{obj}_{aff}_1.jpg", f"Img_Test_{obj}_{aff}_1.json",
                     f"Point_Test_{obj}_1.txt"):
            (seen / "files" / name).symlink_to(piad_demo / name)
    for split, prefix in (("Train", str(seen / "files") + "/"), ("Test", "Seen/files/")):
        (seen / f"Img_{split}.txt").write_text(
            "".join(f"{prefix}Img_Test_{o}_{a}_1.jpg\n" for o, a in pairs))
        (seen / f"Box_{split}.txt").write_text(
            "".join(f"{prefix}Img_Test_{o}_{a}_1.json\n" for o, a in pairs))
        (seen / f"Point_{split}.txt").write_text(
            "".join(f"{prefix}Point_Test_{o}_1.txt\n" for o, _ in pairs))
    return root


def test_prepare_real_piad(demo_root, piad_demo, tmp_path, run_cli):
    out = tmp_path / "piad.h5"
    code, stdout, err = run_cli("prepare", "piad", "--root", demo_root, "--out", out, "--json")
    assert code == 0, err
    doc = json.loads(stdout)
    assert doc["splits"]["test"]["samples"] == 2 and doc["splits"]["train"]["shapes"] == 2

    # independent parse of the real point file: columns 2.. are x y z and 17 scores
    rows = [ln.split() for ln in (piad_demo / "Point_Test_Bag_1.txt").read_text().splitlines()]
    values = np.array([r[2:] for r in rows], np.float64)
    lift = values[:, 3 + PIAD_AFFORDANCES.index("lift")]
    assert lift.max() > 0.5  # the real file does carry a lift region

    ds = open_dataset(out, "test")
    bag = next(ds[i] for i in range(len(ds)) if OBJECT_CLASSES[ds[i]["object"]] == "Bag")
    assert PIAD_AFFORDANCES[bag["affordance"]] == "lift"
    np.testing.assert_allclose(bag["mask"].numpy(), lift, atol=1e-7)
    with h5py.File(out) as f:
        i = list(f["test/samples/image_name"].asstr()[()]).index("Img_Test_Bag_lift_1.jpg")
        s = f["test/samples/shape"][i]
        np.testing.assert_allclose(f["test/shapes/points"][s], values[:, :3], atol=1e-7)
        assert f["test/shapes/shape_id"].asstr()[s] == rows[0][0]
        assert tuple(f["test/samples/image_size"][i]) == (612, 408)
        doc = json.loads((piad_demo / "Img_Test_Bag_lift_1.json").read_text())
        boxes = {s["label"]: np.array(s["points"]) for s in doc["shapes"]}
        for label in ("subject", "object"):
            p = boxes[label]
            want = [p[:, 0].min(), p[:, 1].min(), p[:, 0].max(), p[:, 1].max()]
            np.testing.assert_allclose(f[f"test/samples/{label}_box"][i], want, rtol=1e-6)
        assert f["test/samples/image_jpeg"][i].tobytes() == \
            (piad_demo / "Img_Test_Bag_lift_1.jpg").read_bytes()

    # the chair pair is the `sit` column of the chair file
    rows = [ln.split() for ln in (piad_demo / "Point_Test_Chair_1.txt").read_text().splitlines()]
    sit = np.array([r[2:] for r in rows], np.float64)[:, 3 + PIAD_AFFORDANCES.index("sit")]
    chair = next(ds[i] for i in range(len(ds)) if OBJECT_CLASSES[ds[i]["object"]] == "Chair")
    np.testing.assert_allclose(chair["mask"].numpy(), sit, atol=1e-7)

    # train: the real image gets a crop that keeps both boxes inside
    train = open_dataset(out, "train", seed=0)
    for epoch in range(5):
        train.set_epoch(epoch)
        for i in range(len(train)):
            item = train[i]
            for key in ("subject_box", "object_box"):
                b = item[key].numpy()
                assert (b >= 0).all() and (b <= 224 + 1e-3).all() and b[0] < b[2] and b[1] < b[3]
