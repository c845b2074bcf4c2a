"""Shared fixtures: small synthetic datasets in their raw formats and prepared HDF5 files.

Everything is built once per test run, for all pytest-xdist workers (`build_once`), with
K=2 shapes per class (the smallest K synth takes).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

# Under pytest-xdist (`make test` runs two workers on two cores) each worker computes on one
# thread: two 2-thread workers would oversubscribe the cores. Set before torch and numba
# start their thread pools.
if os.environ.get("PYTEST_XDIST_WORKER"):
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ.setdefault(var, "1")

import torch

# Without a GPU the Triton kernels run in Triton's interpreter; this must be set before
# anything imports triton.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest

from affcli.cli import main
from affcli.data.prepare import prepare
from affcli.data.synth.run import synthesize

PIAD_DEMO = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "piad_demo"
K = 2


@pytest.fixture(scope="session")
def build_once(tmp_path_factory: pytest.TempPathFactory):
    """build_once(name, build) -> a path under a folder all pytest-xdist workers of this
    run share; `build(path)` makes it the first time any worker asks (under a file lock),
    so the synthetic sets and the trained run cost once per run, not once per worker."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "built-once"
    root.mkdir(exist_ok=True)

    def get(name: str, build: Callable[[Path], object]) -> Path:
        path, done = root / name, root / f"{name}.done"
        with FileLock(str(root / f"{name}.lock")):
            if not done.exists():
                if path.is_dir():  # left by a worker that died while building it
                    shutil.rmtree(path)
                path.unlink(missing_ok=True)
                build(path)
                done.touch()
        return path

    return get


@pytest.fixture(scope="session")
def raw_root(build_once):
    """raw_root(name) -> folder with the synthetic raw dataset (laso, piad or agpil)."""

    def get(name: str) -> Path:
        return build_once(f"raw-{name}", lambda out: synthesize(name, out, seed=7,
                                                                  shapes_per_class=K))

    return get


@pytest.fixture(scope="session")
def prepared(raw_root, build_once):
    """prepared(name, setting="seen", view="full") -> path of the prepared HDF5 file."""

    def get(name: str, setting: str = "seen", view: str = "full") -> Path:
        return build_once(f"{name}_{setting}_{view}.h5",
                          lambda out: prepare(name, raw_root(name), setting, view, out))

    return get


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]):
    """run_cli(*args) -> (exit code, stdout, stderr) of `affcli args...` in-process."""

    def run(*args: str) -> tuple[int, str, str]:
        code = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def piad_demo() -> Path:
    if not (PIAD_DEMO / "Point_Test_Bag_1.txt").exists():
        pytest.skip(f"the real PIAD samples are not at {PIAD_DEMO}")
    return PIAD_DEMO


@pytest.fixture(scope="session")
def trained_run(prepared, build_once) -> Path:
    """A PointRefer run folder trained briefly by `affcli train` on the synthetic LASO set
    (512-point clouds, frozen text encoder: small enough for the CPU; one test pass instead
    of the recipe's 3 votes, which `eval` then takes from the run). Shared: tests copy it
    before they change it."""

    def train(out: Path) -> None:
        code = main(["train", "pointrefer", "--data", str(prepared("laso")), "--epochs", "1",
                     "--batch-size", "2", "--max-batches", "2", "--points", "512",
                     "--workers", "0", "--set", "freeze_text_encoder=true", "--votes", "1",
                     "--out", str(out), "--quiet"])
        assert code == 0

    return build_once("pointrefer-seen", train)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The longest tests (marked slow) first: under `--dist load` the two workers start on
    them, instead of one worker finishing alone with a long test taken last."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
