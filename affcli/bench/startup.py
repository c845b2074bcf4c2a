"""`affcli bench predict`: how long a user waits for `affcli predict`, measured as they run it.

Every figure but the last is the wall time of a fresh process (the installed `affcli`
script), the median over `repeats` runs taken in turns, so a slow moment of the machine
touches every row alike:

- `import torch` alone (`python -c "import torch"`), the floor every torch program pays;
- `affcli predict --help` and a call with an unknown option (neither should import torch);
- one shape from process start to exit: a mesh (STL, read by trimesh) and a point cloud
  (PLY, affcli's own reader);
- `shapes` meshes in one call, whose time per shape after the first is compared with the
  model's own batched forward per shape (measured in this process on the same clouds).
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

QUESTION = "Where would you grasp this object?"


def affcli_command() -> list[str]:
    """The `affcli` script beside this interpreter (what a user's shell runs), else
    `python -m affcli`."""
    script = Path(sys.executable).parent / "affcli"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "affcli"]


def write_shapes(folder: Path, count: int, seed: int = 0) -> tuple[Path, Path, list[Path]]:
    """(a mug-like STL mesh, a PLY point cloud, `count` STL meshes of varied proportions)."""
    import trimesh

    from affcli.data.pointio import write_ply

    rng = np.random.default_rng(seed)

    def mug(radius: float, height: float) -> Any:
        body = trimesh.creation.cylinder(radius=radius, height=height, sections=48)
        handle = trimesh.creation.torus(major_radius=height / 4, minor_radius=radius / 8)
        handle.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, [1, 0, 0]))
        handle.apply_translation([radius, 0, 0])
        return trimesh.util.concatenate([body, handle])

    folder.mkdir(parents=True, exist_ok=True)
    mesh = folder / "mug.stl"
    mug(0.4, 1.0).export(mesh)
    cloud = folder / "cloud.ply"
    write_ply(cloud, mug(0.4, 1.0).sample(4096, seed=seed).astype(np.float32), None)
    many = []
    for i in range(count):
        path = folder / "many" / f"shape-{i:03d}.stl"
        path.parent.mkdir(exist_ok=True)
        mug(0.3 + 0.2 * rng.random(), 0.8 + 0.4 * rng.random()).export(path)
        many.append(path)
    return mesh, cloud, many


def conditioning_args(model_type: str, folder: Path) -> list[str]:
    """Command-line values for every input the model declares (a question, a generated
    image, boxes), so any model can be benchmarked."""
    from PIL import Image

    from affcli import models

    args: list[str] = []
    for spec in models.model_class(model_type).inputs:
        if spec.kind == "text":
            args += [spec.option, QUESTION]
        elif spec.kind == "image":
            image = folder / "interaction.jpg"
            pixels = np.random.default_rng(0).integers(0, 255, (224, 224, 3), np.uint8)
            Image.fromarray(pixels).save(image)
            args += [spec.option, str(image)]
        elif spec.kind == "box":
            args += [spec.option, spec.example or "20,20,200,200"]
    return args


def conditioning_values(cond_args: list[str]) -> dict[str, Any]:
    """`conditioning_args` as the predictor's Conditioning takes them (input name -> value)."""
    from affcli.models.inputs import parse_box

    values: dict[str, Any] = {}
    for option, value in zip(cond_args[::2], cond_args[1::2], strict=True):
        name = option.removeprefix("--").replace("-", "_")
        values[name] = parse_box(value, option) if name.endswith("_box") else value
    return values


def _wall(cmd: list[str], expect: tuple[int, ...] = (0,)) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode not in expect:
        raise RuntimeError(f"{' '.join(cmd[:3])} ... exited {done.returncode}: "
                           f"{done.stderr.strip().splitlines()[-1:]}")
    return seconds


def batched_forward_s(model_dir: Path, cond_args: list[str], clouds: list[Path],
                      batch_size: int, repeats: int) -> float:
    """The model's own forward per shape: the predictor's batched call on the prepared
    clouds of `clouds` (reading, sampling and writing excluded), median over repeats."""
    from affcli.engine import predictor as P

    pred = P.Predictor.load(model_dir, P.Conditioning(**conditioning_values(cond_args)), "cpu",
                            batch_size)
    prepared = [P.prepare_shape(p, pred.n_points).sample for p in clouds[:batch_size]]
    pred.score_variants(prepared)  # the first call pays one-off set-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        pred.score_variants(prepared)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) / len(prepared)


def bench_predict(model_dir: Path, model_type: str, shapes: int = 100, repeats: int = 5,
                  batch_size: int = 8, announce: Callable[[str], None] = lambda s: None
                  ) -> dict[str, Any]:
    """The figures above as a document: seconds per row, and each target's verdict."""
    work = Path(tempfile.mkdtemp(prefix="affcli-bench-predict-"))
    try:
        announce(f"writing {shapes} + 2 shapes ...")
        mesh, cloud, many = write_shapes(work / "shapes", shapes)
        cond = conditioning_args(model_type, work)
        affcli = affcli_command()
        out = ["--out", str(work / "out"), "--force", "--quiet"]
        one = [*affcli, "predict", "--model", str(model_dir), *cond, *out]
        rows: dict[str, list[float]] = {k: [] for k in (
            "import_torch", "predict_help", "bad_option", "one_mesh", "one_cloud")}
        announce(f"timing start-up ({repeats} runs of each, in turns) ...")
        for _ in range(repeats):
            rows["import_torch"].append(_wall([sys.executable, "-c", "import torch"]))
            rows["predict_help"].append(_wall([*affcli, "predict", "--help"]))
            rows["bad_option"].append(_wall([*affcli, "predict", "--no-such-option"], (2,)))
            rows["one_mesh"].append(_wall([*one, str(mesh)]))
            rows["one_cloud"].append(_wall([*one, str(cloud)]))
        medians = {k: statistics.median(v) for k, v in rows.items()}
        announce(f"timing {shapes} shapes in one call ...")
        many_s = statistics.median(
            _wall([*one, *map(str, many)]) for _ in range(max(1, repeats // 2)))
        per_shape = (many_s - medians["one_mesh"]) / max(1, shapes - 1)
        forward = batched_forward_s(model_dir, cond, many, batch_size, repeats)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    floor = medians["import_torch"]
    return {
        "benchmark": "predict", "model": str(model_dir), "model_type": model_type,
        "repeats": repeats, "shapes": shapes, "seconds": medians, "many_shapes_s": many_s,
        "per_shape_s": per_shape, "forward_per_shape_s": forward,
        "targets": {
            "help_and_bad_option_under_0.5_s": max(medians["predict_help"],
                                                   medians["bad_option"]) <= 0.5,
            "one_shape_within_1.5_s_of_import_torch": max(
                medians["one_mesh"], medians["one_cloud"]) - floor <= 1.5,
            "per_shape_within_1.3x_forward": per_shape <= 1.3 * forward,
        },
    }
