"""Bad PIAD / AGPIL input: each case exits 2 naming the file and record, and writes nothing."""

from __future__ import annotations

import json
import shutil

import pytest


@pytest.fixture
def piad_copy(raw_root, tmp_path):
    dst = tmp_path / "PIAD"
    shutil.copytree(raw_root("piad"), dst)
    return dst


def _lists(root, stem, split="Test"):
    seen = root / "Seen"
    return [root / ln.strip() for ln in (seen / f"{stem}_{split}.txt").read_text().splitlines()]


def _assert_fails(run_cli, root, tmp_path, *needles, dataset="piad"):
    out = tmp_path / "o.h5"
    code, _, err = run_cli("prepare", dataset, "--root", root, "--out", out)
    assert code == 2, err
    line = err.strip().splitlines()[0]
    assert line.startswith("error: ") and "Traceback" not in err
    for n in needles:
        assert n in line, (n, line)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".o.h5")]
    return line


def _rewrite_line(path, line_no, fn):
    lines = path.read_text().splitlines(keepends=True)
    lines[line_no - 1] = fn(lines[line_no - 1])
    path.write_text("".join(lines))


def test_point_file_wrong_count(piad_copy, tmp_path, run_cli):
    p = _lists(piad_copy, "Point")[0]
    p.write_text("".join(p.read_text().splitlines(keepends=True)[:-1]))
    _assert_fails(run_cli, piad_copy, tmp_path, p.name, "2047 points, expected 2048")


def test_point_file_nan_and_bad_fields(piad_copy, tmp_path, run_cli):
    p = _lists(piad_copy, "Point", "Train")[1]
    original = p.read_text()
    _rewrite_line(p, 17, lambda ln: " ".join(ln.split()[:3] + ["nan"] + ln.split()[4:]) + "\n")
    _assert_fails(run_cli, piad_copy, tmp_path, p.name, "line 17", "NaN")
    p.write_text(original)
    _rewrite_line(p, 5, lambda ln: " ".join(ln.split()[:-1]) + "\n")
    _assert_fails(run_cli, piad_copy, tmp_path, p.name, "line 5", "21 fields")
    p.write_text(original)
    _rewrite_line(p, 9, lambda ln: " ".join(ln.split()[:6] + ["1.5"] + ln.split()[7:]) + "\n")
    _assert_fails(run_cli, piad_copy, tmp_path, p.name, "line 9", "[0, 1]")
    p.write_text(original)
    _rewrite_line(p, 3, lambda ln: " ".join(ln.split()[:4] + ["abc"] + ln.split()[5:]) + "\n")
    _assert_fails(run_cli, piad_copy, tmp_path, p.name, "line 3", "not a number")


def test_unreadable_image(piad_copy, tmp_path, run_cli):
    img = _lists(piad_copy, "Img")[0]
    img.write_bytes(img.read_bytes()[:300])  # truncated JPEG
    _assert_fails(run_cli, piad_copy, tmp_path, img.name, "unreadable image")
    img.write_bytes(b"definitely not an image")
    _assert_fails(run_cli, piad_copy, tmp_path, img.name, "unreadable image")


def test_missing_image_named_by_list(piad_copy, tmp_path, run_cli):
    img = _lists(piad_copy, "Img", "Train")[2]
    img.unlink()
    _assert_fails(run_cli, piad_copy, tmp_path, "Img_Train.txt", "line 3", img.name,
                  "does not exist")


@pytest.mark.parametrize("mangle, needle", [
    (lambda t: t[: len(t) // 2], "malformed box JSON"),
    (lambda t: json.dumps({"nothing": 1}), "no 'shapes' list"),
    (lambda t: t.replace('"object"', '"thing"'), "no rectangle labelled 'object'"),
])
def test_malformed_box_json(piad_copy, tmp_path, run_cli, mangle, needle):
    box = _lists(piad_copy, "Box")[1]
    box.write_text(mangle(box.read_text()))
    _assert_fails(run_cli, piad_copy, tmp_path, box.name, needle)


def test_box_with_bad_points(piad_copy, tmp_path, run_cli):
    box = _lists(piad_copy, "Box")[0]
    doc = json.loads(box.read_text())
    doc["shapes"][1]["points"] = [[1.0, 2.0]]
    box.write_text(json.dumps(doc))
    _assert_fails(run_cli, piad_copy, tmp_path, box.name, "shapes[1]", "two finite")


def test_missing_subject_box_is_a_zero_box(piad_copy, tmp_path, run_cli):
    import h5py

    box = _lists(piad_copy, "Box")[0]
    doc = json.loads(box.read_text())
    doc["shapes"] = [s for s in doc["shapes"] if s["label"] != "subject"]
    box.write_text(json.dumps(doc))
    out = tmp_path / "ok.h5"
    code, _, err = run_cli("prepare", "piad", "--root", piad_copy, "--out", out)
    assert code == 0, err
    with h5py.File(out) as f:
        assert not f["test/samples/subject_box"][0].any()
        assert f["test/samples/object_box"][0].any()
    from affcli.data import open_dataset
    assert not open_dataset(out, "test")[0]["subject_box"].any()


def test_list_length_mismatch_and_class_mismatch(piad_copy, tmp_path, run_cli):
    box_list = piad_copy / "Seen" / "Box_Test.txt"
    original = box_list.read_text()
    box_list.write_text("".join(original.splitlines(keepends=True)[:-1]))
    _assert_fails(run_cli, piad_copy, tmp_path, "Box_Test.txt", "paired line by line")
    box_list.write_text(original)
    pts = piad_copy / "Seen" / "Point_Test.txt"
    lines = pts.read_text().splitlines(keepends=True)
    other = next(i for i, ln in enumerate(lines) if ln.split("_")[-2] != lines[0].split("_")[-2])
    lines[0] = lines[other]
    pts.write_text("".join(lines))
    _assert_fails(run_cli, piad_copy, tmp_path, "Point_Test.txt", "line 1", "mismatch")


def test_train_image_without_clouds_of_its_class(piad_copy, tmp_path, run_cli):
    pts = piad_copy / "Seen" / "Point_Train.txt"
    keep = [ln for ln in pts.read_text().splitlines(keepends=True) if "_Mug_" not in ln]
    pts.write_text("".join(keep))
    _assert_fails(run_cli, piad_copy, tmp_path, "Img_Train.txt", "class Mug")


def test_missing_list_file(piad_copy, tmp_path, run_cli):
    (piad_copy / "Seen" / "Point_Train.txt").unlink()
    _assert_fails(run_cli, piad_copy, tmp_path, "Point_Train.txt", "list file not found")


def test_agpil_bad_description(raw_root, tmp_path, run_cli):
    root = tmp_path / "AGPIL"
    shutil.copytree(raw_root("agpil"), root)
    base = root / "Full_view" / "Seen"
    desc = root / base.joinpath("Description_Test.txt").read_text().splitlines()[0]
    desc.write_text('{"Description": ""}')
    _assert_fails(run_cli, root, tmp_path, desc.name, "Description", dataset="agpil")
    desc.write_text("{not json")
    _assert_fails(run_cli, root, tmp_path, desc.name, "malformed description JSON",
                  dataset="agpil")


def test_case_insensitive_setting_folder_and_relative_entries(piad_copy, tmp_path, run_cli):
    (piad_copy / "Seen").rename(piad_copy / "seen")
    # entries were written relative to the root as "Seen/..."; make them relative to the
    # setting folder instead, which is also accepted
    for lst in (piad_copy / "seen").glob("*.txt"):
        lst.write_text(lst.read_text().replace("Seen/", ""))
    code, _, err = run_cli("prepare", "piad", "--root", piad_copy, "--out", tmp_path / "x.h5")
    assert code == 0, err
