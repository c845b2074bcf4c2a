"""LASO: synth -> prepare -> dataset round trip, and the reference sampling rules."""

from __future__ import annotations

import collections

import h5py
import numpy as np
import pandas as pd
import pytest

from affcli.data import open_dataset
from affcli.data.formats.safe_pickle import safe_load_pickle
from affcli.data.h5 import read_info
from affcli.data.names import LASO_AFFORDANCES, OBJECT_CLASSES
from affcli.data.synth.laso import unseen_pairs


def _raw(root, setting, split):
    base = root / setting.capitalize()
    return (safe_load_pickle(base / f"anno_{split}.pkl"),
            safe_load_pickle(base / f"objects_{split}.pkl"),
            pd.read_csv(base / "Affordance-Question.csv"))


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_round_trip_values(raw_root, prepared, split):
    root, h5 = raw_root("laso"), prepared("laso")
    anno, objects, qdf = _raw(root, "seen", split)
    ds = open_dataset(h5, split)
    assert len(ds) == len(anno) > 0
    with h5py.File(h5) as f:
        g = f[split]
        ids = g["shapes/shape_id"].asstr()[()]
        points = g["shapes/points"][()]
        shape_idx = g["samples/shape"][()]
        masks = g["samples/mask"][()]
        questions = g["samples/questions"].asstr()[()]
    assert sorted(ids) == sorted(objects)
    for i, rec in enumerate(anno):
        sid = ids[shape_idx[i]]
        assert sid == rec["shape_id"]
        np.testing.assert_array_equal(points[shape_idx[i]], objects[sid])
        np.testing.assert_array_equal(masks[i], rec["mask"])
        row = qdf[(qdf.Object == rec["class"]) & (qdf.Affordance == rec["affordance"])].iloc[0]
        assert list(questions[i]) == [row[f"Question{q}"] for q in range(15)]
        item = ds[i]
        assert OBJECT_CLASSES[item["object"]].lower() == rec["class"]
        assert LASO_AFFORDANCES[item["affordance"]] == rec["affordance"]
        np.testing.assert_array_equal(item["mask"].numpy(), rec["mask"])
        # centred on the centroid, farthest point at distance 1
        p = item["points"].numpy()
        assert p.shape == (2048, 3) and p.dtype == np.float32
        assert np.abs(p.mean(0)).max() < 1e-5
        assert np.linalg.norm(p, axis=1).max() == pytest.approx(1.0, abs=1e-5)
        ref = objects[sid] - objects[sid].mean(0)
        np.testing.assert_allclose(p, ref / np.linalg.norm(ref, axis=1).max(), atol=1e-6)


def test_question_sampling_rules(prepared):
    h5 = prepared("laso")
    with h5py.File(h5) as f:
        q_train = f["train/samples/questions"].asstr()[()]
        q_test = f["test/samples/questions"].asstr()[()]
    train = open_dataset(h5, "train", seed=3)
    drawn = collections.Counter()
    for epoch in range(6):
        train.set_epoch(epoch)
        for i in range(len(train)):
            q = train[i]["question"]
            qid = list(q_train[i]).index(q)
            drawn[qid] += 1
    assert 0 not in drawn, "training must never use Question0"
    assert set(drawn) <= set(range(1, 15)) and len(drawn) >= 10  # spread over the rephrasings
    test = open_dataset(h5, "test")
    assert all(test[i]["question"] == q_test[i][0] for i in range(len(test)))
    # same seed and epoch, same draw; another epoch may differ
    again = open_dataset(h5, "train", seed=3)
    again.set_epoch(5)
    assert [again[i]["question"] for i in range(len(again))] == \
        [train[i]["question"] for i in range(len(train))]


def test_unseen_withholds_pairs(prepared):
    h5 = prepared("laso", "unseen")
    info = read_info(h5)
    held = {(c.lower(), a) for c, a in unseen_pairs()}
    assert held, "the synthetic LASO must withhold some pairs"

    def pairs(split):
        with h5py.File(h5) as f:
            o, a = f[f"{split}/samples/object"][()], f[f"{split}/samples/affordance"][()]
        names = zip(o, a, strict=True)
        return {(info.object_names[i].lower(), info.affordance_names[j]) for i, j in names}

    assert not pairs("train") & held and not pairs("val") & held
    assert pairs("test") and pairs("test") <= held
    # every withheld pair's class and affordance are still seen in training, separately
    train_classes = {c for c, _ in pairs("train")}
    train_affs = {a for _, a in pairs("train")}
    assert {c for c, _ in held} <= train_classes and {a for _, a in held} <= train_affs


def test_counts_and_manifest(raw_root, prepared):
    h5 = prepared("laso")
    with h5py.File(h5) as f:
        assert f.attrs["schema_version"] == 1 and f.attrs["dataset"] == "laso"
        paths = set(f["manifest/path"].asstr()[()])
        names = f["manifest/path"].asstr()[()]
        sizes = dict(zip(names, f["manifest/size"][()], strict=True))
        digests = dict(zip(names, f["manifest/sha256"].asstr()[()], strict=True))
        assert f["train/shapes/points"].compression == "gzip"
        assert f["train/shapes/points"].chunks == (1, 2048, 3)
    root = raw_root("laso")
    expected = {f"Seen/{n}" for n in ["Affordance-Question.csv"] + [
        f"{k}_{s}.pkl" for k in ("anno", "objects") for s in ("train", "val", "test")]}
    assert paths == expected
    import hashlib
    for p in expected:
        data = (root / p).read_bytes()
        assert sizes[p] == len(data) and digests[p] == hashlib.sha256(data).hexdigest()


def test_workers_read_the_same_items(prepared):
    """Files open lazily in each worker, and draws depend on (seed, epoch, index) only, so
    two worker processes deliver exactly what the main process reads."""
    import torch
    from torch.utils.data import DataLoader

    ds = open_dataset(prepared("laso"), "train", seed=11)
    ds.set_epoch(2)
    loader = DataLoader(ds, batch_size=4, shuffle=False, num_workers=2)
    got = {}
    for batch in loader:
        for k, i in enumerate(batch["index"].tolist()):
            got[i] = (batch["points"][k], batch["mask"][k], batch["question"][k])
    assert sorted(got) == list(range(len(ds)))
    for i, (points, mask, question) in got.items():
        item = ds[i]
        assert torch.equal(points, item["points"]) and torch.equal(mask, item["mask"])
        assert question == item["question"]


def test_items_do_not_alias_the_cache(prepared):
    ds = open_dataset(prepared("laso"), "test")
    first = ds[0]["points"].clone()
    ds[0]["points"].mul_(0)
    ds[0]["mask"].fill_(7)
    assert torch_equal(ds[0]["points"], first) and ds[0]["mask"].max() <= 1


def torch_equal(a, b):
    import torch

    return torch.equal(a, b)
