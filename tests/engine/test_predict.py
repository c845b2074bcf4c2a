"""`affcli predict` on users' own files: scores for every original point, the output files,
stdin and globs, JSON lines, one bad file among good ones, the newest run picked from runs/,
and exit code 2 naming the file for every bad input."""

from __future__ import annotations

import io
import json
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from affcli.data.pointio import read_shape
from affcli.engine import predictor as P
from affcli.errors import AffError

QUESTION = "Where would you grasp this object?"


def ascii_ply(path: Path, points: np.ndarray) -> Path:
    lines = ["ply", "format ascii 1.0", f"element vertex {len(points)}", "property float x",
             "property float y", "property float z", "end_header"]
    lines += [" ".join(f"{v:.6f}" for v in p) for p in points]
    path.write_text("\n".join(lines) + "\n")
    return path


def box_obj(path: Path) -> Path:
    """A closed 2 x 1 x 0.5 box as an OBJ mesh (quads)."""
    v = [(x, y, z) for x in (0, 2) for y in (0, 1) for z in (0, 0.5)]
    faces = [(1, 2, 4, 3), (5, 7, 8, 6), (1, 5, 6, 2), (3, 4, 8, 7), (1, 3, 7, 5), (2, 6, 8, 4)]
    text = "".join(f"v {x} {y} {z}\n" for x, y, z in v)
    text += "".join("f " + " ".join(map(str, f)) + "\n" for f in faces)
    path.write_text(text)
    return path


def sphere(n: int, seed: int = 0) -> np.ndarray:
    p = np.random.default_rng(seed).normal(size=(n, 3))
    return 0.3 * p / np.linalg.norm(p, axis=1, keepdims=True) + np.array([5.0, -2.0, 1.0])


def check_outputs(out: Path, stem: str, n_points: int) -> np.ndarray:
    scores = np.load(out / f"{stem}.npy")
    assert scores.dtype == np.float32 and scores.shape == (n_points,)
    assert np.isfinite(scores).all() and (scores >= 0).all() and (scores <= 1).all()
    back = read_shape(out / f"{stem}.ply")
    assert back.points.shape == (n_points, 3)
    np.testing.assert_allclose(back.properties["score"], scores, rtol=0, atol=1e-7)
    return scores


def test_real_piad_files_get_a_score_per_point(run_cli, trained_run, piad_demo, tmp_path):
    files = [piad_demo / "Point_Test_Bag_1.txt", piad_demo / "Point_Test_Chair_1.txt"]
    code, out, err = run_cli("predict", *files, "--model", trained_run, "--question", QUESTION,
                             "--out", tmp_path / "o", "--batch-size", "2")
    assert code == 0, err
    assert "Point_Test_Bag_1" in out and "pointrefer" in out  # the summary table
    for f in files:
        scores = check_outputs(tmp_path / "o", f.stem, 2048)
        assert scores.std() > 0  # a real heatmap, not a constant fill
        # the PLY keeps the original coordinates, not the normalised ones
        np.testing.assert_allclose(read_shape(tmp_path / "o" / f"{f.stem}.ply").points,
                                   read_shape(f).points, atol=1e-6)
        assert not (tmp_path / "o" / f"{f.stem}.png").exists()  # only with --render

    # several questions at once: one output each, named by the question; the same heatmap
    # as a call with that question alone (each shape is encoded once, decoded per question)
    # (and a mesh as a GLB with vertex colours; the point clouds stay PLY)
    listed = tmp_path / "questions.txt"
    listed.write_text("# asked of every shape\n\nWhere would you sit on this?\n")
    mesh = box_obj(tmp_path / "box.obj")
    code, out, err = run_cli("predict", *files, mesh, "--model", trained_run, "--question",
                             QUESTION, "--questions", listed, "--out", tmp_path / "q", "--json",
                             "--format", "glb")
    assert code == 0, err
    docs = [json.loads(line) for line in out.splitlines()]
    assert [(Path(d["path"]).name, d["question"]) for d in docs] == [
        (f.name, q) for f in [*files, mesh] for q in (QUESTION, "Where would you sit on this?")]
    assert [set(d["outputs"]) for d in docs] == [{"ply", "npy"}] * 4 + [{"glb", "npy"}] * 2
    import trimesh

    from affcli.views import heatmap_colors

    glb = trimesh.load(tmp_path / "q" / "box-where-would-you-sit-on-this.glb", force="mesh",
                       process=False)
    scores = np.load(tmp_path / "q" / "box-where-would-you-sit-on-this.npy")
    assert len(glb.vertices) == 8 and len(glb.faces) == 12
    np.testing.assert_allclose(glb.vertices, read_shape(mesh).vertices, atol=1e-6)
    np.testing.assert_array_equal(glb.visual.vertex_colors[:, :3], heatmap_colors(scores))
    for f in files:
        alone = np.load(tmp_path / "o" / f"{f.stem}.npy")
        asked = np.load(tmp_path / "q" / f"{f.stem}-where-would-you-grasp-this-object.npy")
        np.testing.assert_allclose(asked, alone, atol=1e-6)
        other = np.load(tmp_path / "q" / f"{f.stem}-where-would-you-sit-on-this.npy")
        assert np.abs(other - alone).max() > 1e-4  # another question, another heatmap
    listed.write_text("# nothing but a comment\n")
    code, _, err = run_cli("predict", *files, "--model", trained_run, "--questions", listed)
    assert code == 2 and "no --question values in the file" in err


def test_ply_and_obj_json_lines(run_cli, trained_run, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    # (clouds smaller than the model's 512 points are in the stdin test)
    big = ascii_ply(src / "ball.ply", sphere(700))  # more than the model's 512: FPS
    mesh = box_obj(src / "box.obj")  # a mesh: sampled on its surface
    code, out, err = run_cli("predict", big, mesh, "--model", trained_run, "--question",
                             QUESTION, "--out", tmp_path / "o", "--json", "--face-scores")
    assert code == 0, err
    docs = [json.loads(line) for line in out.splitlines()]
    assert [d["path"] for d in docs] == [str(big), str(mesh)]
    expected = {"ball": 700, "box": 8}  # a mesh comes back as its own 8 vertices
    for d, (stem, n) in zip(docs, expected.items(), strict=True):
        assert {"path", "points", "min", "mean", "max", "fraction_above_0.5", "outputs"} <= set(d)
        assert d["points"] == n and 0 <= d["min"] <= d["mean"] <= d["max"] <= 1
        assert set(d["outputs"]) == {"ply", "npy"}
        scores = (check_outputs(tmp_path / "o", stem, n) if stem == "ball"
                  else check_mesh_outputs(tmp_path / "o", stem, read_shape(mesh)))
        assert d["mean"] == pytest.approx(float(scores.mean()), abs=1e-6)
        assert d["fraction_above_0.5"] == pytest.approx(float((scores > 0.5).mean()))
    assert "vertices" not in docs[0] and (docs[1]["vertices"], docs[1]["faces"]) == (8, 12)


def check_mesh_outputs(out: Path, stem: str, source) -> np.ndarray:
    """The PLY of a mesh keeps its vertices and faces, with a score per vertex (and per
    face: the mean of its vertices')."""
    import trimesh

    scores = np.load(out / f"{stem}.npy")
    assert scores.shape == (len(source.vertices),) and (scores >= 0).all() and (scores <= 1).all()
    back = read_shape(out / f"{stem}.ply")
    assert back.is_mesh
    np.testing.assert_allclose(back.vertices, source.vertices, atol=1e-6)
    np.testing.assert_array_equal(back.faces, source.faces)
    raw = trimesh.load(out / f"{stem}.ply", process=False).metadata["_ply_raw"]
    np.testing.assert_allclose(np.ravel(raw["vertex"]["data"]["score"]), scores, atol=1e-7)
    np.testing.assert_allclose(np.ravel(raw["face"]["data"]["score"]),
                               scores[source.faces].mean(axis=1), atol=1e-6)
    return scores


def test_stdin_and_equal_stems(run_cli, trained_run, tmp_path, monkeypatch):
    """Paths from stdin; two files named x.ply; clouds smaller than the model's."""
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        ascii_ply(tmp_path / sub / "x.ply", sphere(300, seed=len(sub)))
    listing = f"{tmp_path / 'a' / 'x.ply'}\n\n  \n{tmp_path / 'b' / 'x.ply'}\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO(listing))
    code, out, err = run_cli("predict", "-", "--model", trained_run, "--question", QUESTION,
                             "--out", tmp_path / "o", "--json")
    assert code == 0, err
    docs = [json.loads(line) for line in out.splitlines()]
    assert [Path(d["outputs"]["ply"]).name for d in docs] == ["x.ply", "x-2.ply"]
    check_outputs(tmp_path / "o", "x", 300)
    check_outputs(tmp_path / "o", "x-2", 300)


def bad_files(tmp_path: Path) -> dict[str, Path]:
    empty = tmp_path / "empty.ply"
    empty.write_text("ply\nformat ascii 1.0\nelement vertex 0\nproperty float x\n"
                     "property float y\nproperty float z\nend_header\n")
    two = tmp_path / "two.xyz"
    two.write_text("0 0 0\n1 1 1\n")
    nan = tmp_path / "nan.xyz"
    nan.write_text("0 0 0\n1 0 0\nnan 1 0\n0 0 1\n")
    broken = tmp_path / "broken.ply"
    broken.write_text("ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\n"
                      "property float y\nproperty float z\nend_header\n0 0 0\n1 oops 0\n")
    return {"empty": empty, "two": two, "nan": nan, "broken": broken}


@pytest.mark.parametrize("kind", ["empty", "two", "nan", "broken"])
def test_a_bad_file_exits_2_naming_it(run_cli, trained_run, tmp_path, kind):
    path = bad_files(tmp_path)[kind]
    code, out, err = run_cli("predict", path, "--model", trained_run, "--question", QUESTION,
                             "--out", tmp_path / "o")
    assert code == 2
    lines = err.strip().splitlines()
    assert lines[-1].startswith(f"error: {path}") and "Traceback" not in err
    assert not (tmp_path / "o").exists()  # nothing written, not even the folder


def test_one_bad_file_among_good_ones(run_cli, trained_run, piad_demo, tmp_path):
    bad = bad_files(tmp_path)["nan"]
    good = piad_demo / "Point_Test_Bag_1.txt"
    # globs the shell left alone (quoted) are expanded by the command
    code, out, err = run_cli("predict", str(piad_demo / "Point_Test_Bag_*.txt"), bad,
                             str(tmp_path / "nothing*.ply"), "--model",
                             trained_run, "--question", QUESTION, "--out", tmp_path / "o",
                             "--json")
    assert code == 2
    docs = {d["path"]: d for d in map(json.loads, out.splitlines())}
    assert docs[str(good)]["points"] == 2048 and "error" not in docs[str(good)]
    assert str(bad) in docs[str(bad)]["error"] and "NaN" in docs[str(bad)]["error"]
    assert "no file matches" in docs[str(tmp_path / "nothing*.ply")]["error"]
    assert f"warning: {bad}" in err
    assert err.strip().splitlines()[-1].startswith("error: predict: 2 of 3 shapes failed")
    check_outputs(tmp_path / "o", "Point_Test_Bag_1", 2048)
    assert not (tmp_path / "o" / "nan.ply").exists()


def test_newest_run_is_picked_and_named(run_cli, trained_run, piad_demo, tmp_path,
                                         monkeypatch):
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs" / "pointrefer"
    runs.mkdir(parents=True)
    (runs / "seen-1").symlink_to(trained_run, target_is_directory=True)
    newest = (trained_run / "best.pt").stat().st_mtime
    # older runs whose files are not checkpoints at all: picking one would fail loudly
    for name, ckpt in (("seen-2", "best.pt"), ("unseen-1", "last.pt")):
        (runs / name).mkdir()
        (runs / name / ckpt).write_bytes(b"not a checkpoint")
        os.utime(runs / name / ckpt, (newest - 100, newest - 100))
    code, out, err = run_cli("predict", piad_demo / "Point_Test_Chair_1.txt", "--question",
                             QUESTION, "--render")
    assert code == 0, err
    assert str(Path("runs") / "pointrefer" / "seen-1") in err
    check_outputs(tmp_path / "runs" / "predict-1", "Point_Test_Chair_1", 2048)
    png = (tmp_path / "runs" / "predict-1" / "Point_Test_Chair_1.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["pointrefer", "predict-1"]
    # the next predict writes to the next free number
    code, _, err = run_cli("predict", piad_demo / "Point_Test_Chair_1.txt", "--question",
                           QUESTION)
    assert code == 0, err
    assert (tmp_path / "runs" / "predict-2" / "Point_Test_Chair_1.npy").is_file()


def test_no_run_at_all_says_how_to_get_one(run_cli, piad_demo, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli("predict", piad_demo / "Point_Test_Bag_1.txt", "--question", QUESTION)
    assert code == 2
    assert err.startswith("error: runs/pointrefer: no trained pointrefer run")
    assert "affcli train pointrefer" in err and "--model" in err
    code, _, err = run_cli("predict", piad_demo / "Point_Test_Bag_1.txt")
    assert code == 2 and "--question" in err and "--model" in err


def test_conditioning_must_match_the_model(run_cli, trained_run, piad_demo, tmp_path):
    shape = piad_demo / "Point_Test_Bag_1.txt"
    code, _, err = run_cli("predict", shape, "--model", trained_run, "--instruction", "Lift it.")
    assert code == 2 and err.startswith("error: --question: a pointrefer model needs")
    code, _, err = run_cli("predict", shape, "--model", trained_run, "--question", QUESTION,
                           "--instruction", "Lift it.")
    assert code == 2 and err.startswith("error: --instruction: not used by pointrefer")


def test_bad_image_and_option_values_exit_2(run_cli, trained_run, piad_demo, tmp_path):
    shape = piad_demo / "Point_Test_Bag_1.txt"
    missing = tmp_path / "missing.jpg"
    code, _, err = run_cli("predict", shape, "--model", trained_run, "--image", missing,
                           "--boxes", piad_demo / "Img_Test_Bag_lift_1.json")
    assert code == 2 and err.startswith(f"error: {missing}: image not found")
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"\x89PNG not really")
    code, _, err = run_cli("predict", shape, "--model", trained_run, "--image", garbage,
                           "--object-box", "1,2,3,4")
    assert code == 2 and err.startswith(f"error: {garbage}: unreadable image")
    code, _, err = run_cli("predict", shape, "--model", trained_run, "--image",
                           piad_demo / "Img_Test_Bag_lift_1.jpg", "--object-box", "1,2,3")
    assert code == 2 and err.startswith("error: --object-box: expected four numbers")
    code, _, err = run_cli("predict", shape, "--model", trained_run, "--question", QUESTION,
                           "--batch-size", "0")
    assert code == 2 and "--batch-size" in err
    code, _, err = run_cli("predict", shape, "--question", QUESTION, "--model",
                           tmp_path / "no-such-run")
    assert code == 2 and "no-such-run" in err


def test_iagnet_with_image_and_boxes(run_cli, piad_demo, tmp_path):
    """An untrained IAGNet at 512 points: the image path end to end."""
    from affcli import models

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = models.build("iagnet", n_points=512)
    net.save_pretrained(tmp_path / "iag")
    image = piad_demo / "Img_Test_Bag_lift_1.jpg"
    boxes = piad_demo / "Img_Test_Bag_lift_1.json"
    shape = piad_demo / "Point_Test_Bag_1.txt"
    code, out, err = run_cli("predict", shape, "--model", tmp_path / "iag", "--image", image,
                             "--boxes", boxes, "--out", tmp_path / "o1", "--json")
    assert code == 0, err
    assert json.loads(out)["points"] == 2048
    check_outputs(tmp_path / "o1", shape.stem, 2048)

    # numbers in either corner order are the JSON's boxes
    from affcli.data.formats.piad import parse_box_json
    from affcli.models.inputs import parse_box

    sub, obj = parse_box_json(boxes, boxes.read_bytes())
    from_json = net.conditioning_item({"image": image, "boxes": boxes})
    from_numbers = net.conditioning_item({
        "image": image, "subject_box": parse_box(f"{sub[2]},{sub[3]},{sub[0]},{sub[1]}"),
        "object_box": parse_box(f"{obj[2]} {obj[3]} {obj[0]} {obj[1]}")})
    for name in ("image", "subject_box", "object_box"):
        assert (from_json[name] == from_numbers[name]).all()
    assert from_json["object_box"].max() <= 224 and from_json["subject_box"].any()

    code, _, err = run_cli("predict", shape, "--model", tmp_path / "iag", "--image", image)
    assert code == 2 and err.startswith("error: --boxes: an iagnet model needs")


# ---------------------------------------------------------------------------------------------
# the engine's pieces


def test_resampling_normalisation_and_interpolation():
    pts = sphere(900)
    prep = P.prepare_points(pts, 256)
    assert prep.sample.shape == (256, 3)
    np.testing.assert_allclose(prep.sample.mean(axis=0), 0, atol=1e-5)
    assert np.linalg.norm(prep.sample, axis=1).max() == pytest.approx(1, abs=1e-5)
    # the sampled points are original points, in the same frame
    idx = P.resample_indices(pts, 256)
    assert len(set(idx.tolist())) == 256
    np.testing.assert_allclose(prep.normalized[idx], prep.sample, atol=1e-5)
    heat = np.random.default_rng(0).random(256).astype(np.float32)
    scores = P.interpolate_scores(prep.sample, heat, prep.normalized)
    assert scores.shape == (900,) and (scores >= 0).all() and (scores <= 1).all()
    np.testing.assert_allclose(scores[idx], heat, atol=1e-4)  # sampled points keep theirs
    # fewer points than the model takes: every point is kept, the rest are repeats, seeded
    few = P.resample_indices(pts[:10], 32)
    assert set(few.tolist()) == set(range(10))
    np.testing.assert_array_equal(few, P.resample_indices(pts[:10], 32))
    with pytest.raises(Exception, match="coincide"):
        P.prepare_points(np.ones((5, 3)), 16)


def test_stems_conditioning_and_boxes():
    from affcli.models.inputs import parse_box

    assert P.unique_stems(["a/x.ply", "b/x.ply", "c/x.obj", "x-2.ply"]) == \
        ["x", "x-2", "x-3", "x-2-2"]
    assert parse_box("30, 40 10 20") == (10.0, 20.0, 30.0, 40.0)
    with pytest.raises(AffError, match="four numbers"):
        parse_box("1,2,3")
    # the models' declared inputs pick the model when none is named
    assert P.Conditioning(question="q").implied_models() == ["pointrefer"]
    assert P.Conditioning(image=Path("i.jpg"), boxes=Path("b.json")).implied_models() == \
        ["iagnet"]
    assert P.Conditioning(image=Path("i.jpg"), instruction="x").implied_models() == \
        ["lmaffordance3d"]
    with pytest.raises(AffError, match="no installed model takes exactly"):
        P.Conditioning(question="q", instruction="x").implied_models()


ROOT = Path(__file__).resolve().parents[2]


def _script_env() -> dict[str, str]:
    """The environment of an example script: affcli of this interpreter on PATH."""
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "OMP_NUM_THREADS": "1"}


def test_folder_script_collects_json_lines_and_failures(trained_run, piad_demo, tmp_path):
    import subprocess

    shapes = tmp_path / "my scans"  # a space in the folder: the script must cope
    shapes.mkdir()
    for name in ("Point_Test_Bag_1.txt", "Point_Test_Chair_1.txt"):
        (shapes / name).write_bytes((piad_demo / name).read_bytes())
    (tmp_path / "bad").mkdir()
    bad_files(tmp_path / "bad")["broken"].rename(shapes / "broken.ply")
    proc = subprocess.run(
        ["bash", str(ROOT / "examples" / "predict_folder.sh"), str(shapes), QUESTION,
         str(trained_run)], cwd=tmp_path, env={**_script_env(), "OUT": str(tmp_path / "o")},
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr  # one file failed, the others were scored
    assert "2 scored, 1 failed" in proc.stdout and "broken.ply" in proc.stdout
    rows = [json.loads(line) for line in (tmp_path / "o" / "predictions.jsonl").open()]
    assert sorted(Path(r["path"]).name for r in rows) == [
        "Point_Test_Bag_1.txt", "Point_Test_Chair_1.txt", "broken.ply"]
    check_outputs(tmp_path / "o", "Point_Test_Chair_1", 2048)


def test_api_example_runs(trained_run, piad_demo, tmp_path):
    import subprocess

    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "predict_api.py"), str(trained_run),
         str(piad_demo / "Point_Test_Bag_1.txt")], cwd=tmp_path, env=_script_env(),
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "pointrefer from" in proc.stdout and "3000 scores" in proc.stdout
    assert "error:" in proc.stdout and "at least 3" in proc.stdout  # the AffError shown
    check_outputs(tmp_path / "predictions", "Point_Test_Bag_1", 2048)


def test_existing_outputs_are_kept_unless_force(run_cli, trained_run, piad_demo, tmp_path):
    shape = piad_demo / "Point_Test_Bag_1.txt"
    args = ("predict", shape, "--model", trained_run, "--question", QUESTION, "--out",
            tmp_path / "o", "-q")
    code, _, err = run_cli(*args)
    assert code == 0, err
    npy = tmp_path / "o" / "Point_Test_Bag_1.npy"
    npy.write_bytes(b"mine")
    code, _, err = run_cli(*args)
    assert code == 2 and "Point_Test_Bag_1" in err and "--force" in err
    assert npy.read_bytes() == b"mine"  # neither file of the shape was replaced
    code, _, err = run_cli(*args, "--force")
    assert code == 0, err
    check_outputs(tmp_path / "o", "Point_Test_Bag_1", 2048)
