"""Bad LASO input: each case exits 2 naming the file and record, and writes no output."""

from __future__ import annotations

import os
import pickle
import shutil

import numpy as np
import pytest

from affcli.data.formats.safe_pickle import safe_load_pickle


@pytest.fixture
def laso_copy(raw_root, tmp_path):
    """A private, writable copy of the synthetic LASO root."""
    dst = tmp_path / "LASO"
    shutil.copytree(raw_root("laso"), dst)
    return dst


def _prepare(run_cli, root, out):
    return run_cli("prepare", "laso", "--root", root, "--out", out)


def _edit(path, fn):
    obj = safe_load_pickle(path)
    obj = fn(obj) or obj
    path.write_bytes(pickle.dumps(obj, protocol=4))


def _assert_fails(run_cli, root, out, *needles):
    code, stdout, err = _prepare(run_cli, root, out)
    assert code == 2, err
    line = err.strip().splitlines()[0]
    assert line.startswith("error: ")
    for n in needles:
        assert n in line, (n, line)
    assert "Traceback" not in err
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]
    return line


def test_truncated_pickle(laso_copy, tmp_path, run_cli):
    p = laso_copy / "Seen" / "anno_val.pkl"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    _assert_fails(run_cli, laso_copy, tmp_path / "o.h5", "anno_val.pkl", "truncated")


def test_corrupt_pickle(laso_copy, tmp_path, run_cli):
    (laso_copy / "Seen" / "objects_test.pkl").write_bytes(b"\x80\x04this is not a pickle")
    _assert_fails(run_cli, laso_copy, tmp_path / "o.h5", "objects_test.pkl")


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_without_running(laso_copy, tmp_path, run_cli):
    marker = tmp_path / "pwned"
    (laso_copy / "Seen" / "anno_train.pkl").write_bytes(pickle.dumps([_Evil(marker)]))
    line = _assert_fails(run_cli, laso_copy, tmp_path / "o.h5", "anno_train.pkl", "refused")
    assert "system" in line
    assert not marker.exists()


def test_pickle_with_foreign_class(tmp_path):
    import collections
    p = tmp_path / "x.pkl"
    p.write_bytes(pickle.dumps(collections.Counter(a=1)))
    with pytest.raises(Exception, match="refused to load collections.Counter"):
        safe_load_pickle(p)


def test_safe_pickle_keeps_numpy_and_containers(tmp_path):
    p = tmp_path / "ok.pkl"
    obj = {"a": [np.arange(5, dtype=np.float32), (1, "x")], "b": np.float64(2.5),
           "c": np.zeros((2, 3), np.int16)}
    for proto in (2, 4, 5):
        p.write_bytes(pickle.dumps(obj, protocol=proto))
        back = safe_load_pickle(p)
        np.testing.assert_array_equal(back["a"][0], obj["a"][0])
        assert back["b"] == 2.5 and back["c"].dtype == np.int16


def test_wrong_point_count(laso_copy, tmp_path, run_cli):
    p = laso_copy / "Seen" / "objects_train.pkl"
    sid = sorted(safe_load_pickle(p))[0]
    _edit(p, lambda o: o.__setitem__(sid, o[sid][:2047]))
    _assert_fails(run_cli, laso_copy, tmp_path / "o.h5", "objects_train.pkl", f"shape {sid}",
                  "2047 points")


def test_nan_coordinates(laso_copy, tmp_path, run_cli):
    p = laso_copy / "Seen" / "objects_val.pkl"
    sid = sorted(safe_load_pickle(p))[0]

    def poison(o):
        o[sid] = o[sid].copy()
        o[sid][100, 1] = np.nan

    _edit(p, poison)
    _assert_fails(run_cli, laso_copy, tmp_path / "o.h5", "objects_val.pkl", "NaN", "point 100")


def test_inf_coordinates(laso_copy, tmp_path, run_cli):
    p = laso_copy / "Seen" / "objects_val.pkl"
    sid = sorted(safe_load_pickle(p))[-1]

    def poison(o):
        o[sid] = o[sid].copy()
        o[sid][7, 0] = np.inf

    _edit(p, poison)
    _assert_fails(run_cli, laso_copy, tmp_path / "o.h5", "objects_val.pkl", "inf")


@pytest.mark.parametrize("bad, needle", [
    (lambda m: m[:100], "shape (100,)"),
    (lambda m: m * 3.0, "outside [0, 1]"),
    (lambda m: -m, "outside [0, 1]"),
])
def test_bad_masks(laso_copy, tmp_path, run_cli, bad, needle):
    p = laso_copy / "Seen" / "anno_test.pkl"

    def poison(anno):
        anno[1]["mask"] = bad(anno[1]["mask"] + 0.1)

    _edit(p, poison)
    _assert_fails(run_cli, laso_copy, tmp_path / "o.h5", "anno_test.pkl", "record 1", needle)


def test_question_csv_missing_a_pair(laso_copy, tmp_path, run_cli):
    csv = laso_copy / "Seen" / "Affordance-Question.csv"
    lines = csv.read_text().splitlines(keepends=True)
    dropped = lines[3].split(",")[:2]
    csv.write_text("".join(lines[:3] + lines[4:]))
    line = _assert_fails(run_cli, laso_copy, tmp_path / "o.h5", "Affordance-Question.csv",
                         "no questions")
    assert repr(dropped[0]) in line and repr(dropped[1]) in line


def test_question_csv_missing_column(laso_copy, tmp_path, run_cli):
    csv = laso_copy / "Seen" / "Affordance-Question.csv"
    csv.write_text(csv.read_text().replace("Question14", "Q14"))
    _assert_fails(run_cli, laso_copy, tmp_path / "o.h5", "Affordance-Question.csv", "Question14")


def test_unknown_affordance_and_missing_shape(laso_copy, tmp_path, run_cli):
    p = laso_copy / "Seen" / "anno_train.pkl"
    _edit(p, lambda a: a[2].__setitem__("affordance", "juggle"))
    _assert_fails(run_cli, laso_copy, tmp_path / "o.h5", "anno_train.pkl", "record 2", "juggle")
    def fix_and_break(anno):
        anno[2]["affordance"] = "grasp"
        anno[0]["shape_id"] = "nope"

    _edit(p, fix_and_break)
    _assert_fails(run_cli, laso_copy, tmp_path / "o.h5", "record 0", "nope")


def test_missing_file_and_missing_root(laso_copy, tmp_path, run_cli):
    (laso_copy / "Seen" / "objects_test.pkl").unlink()
    _assert_fails(run_cli, laso_copy, tmp_path / "o.h5", "objects_test.pkl", "not found")
    code, _, err = _prepare(run_cli, tmp_path / "nowhere", tmp_path / "o.h5")
    assert code == 2 and "affcli synth laso" in err and "expected layout" in err


def test_existing_output_needs_force(raw_root, tmp_path, run_cli):
    out = tmp_path / "o.h5"
    out.write_bytes(b"keep me")
    code, _, err = _prepare(run_cli, raw_root("laso"), out)
    assert code == 2 and "--force" in err and out.read_bytes() == b"keep me"
    code, _, err = run_cli("prepare", "laso", "--root", raw_root("laso"), "--out", out, "--force")
    assert code == 0, err
    assert out.read_bytes()[:8] == b"\x89HDF\r\n\x1a\n"


def test_failure_keeps_previous_output(laso_copy, tmp_path, run_cli):
    """--force onto an existing file that then fails must leave the old file intact."""
    out = tmp_path / "o.h5"
    out.write_bytes(b"previous")
    (laso_copy / "Seen" / "anno_val.pkl").write_bytes(b"garbage")
    code, _, _ = run_cli("prepare", "laso", "--root", laso_copy, "--out", out, "--force")
    assert code == 2 and out.read_bytes() == b"previous"
