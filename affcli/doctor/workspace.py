"""The doctor's scratch folder: tiny synthetic sets (`affcli synth` + `affcli prepare`), loose
shape files for predict, run folders. Removed at the end of the run.

Each dataset kind is built once and shared by the training, torchrun and inference rows; a
kind that could not be built fails every row that needs it with the same error.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from affcli.doctor.plan import Plan
from affcli.doctor.report import Row, describe


class Workspace:
    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.root = Path(tempfile.mkdtemp(prefix="affcli-doctor-"))
        self._data: dict[str, Path | BaseException] = {}
        self._shapes: list[Path] | BaseException | None = None

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def data(self, kind: str) -> Path:
        """The prepared file (seen setting, full view) of a synthetic set of `kind`."""
        if kind not in self._data:
            try:
                self._data[kind] = self._build(kind)
            except Exception as exc:  # noqa: BLE001 (kept: every row needing it reports it)
                self._data[kind] = exc
        got = self._data[kind]
        if isinstance(got, BaseException):
            raise RuntimeError(f"no synthetic {kind} data ({describe(got)})")
        return got

    def _build(self, kind: str) -> Path:
        from affcli.data.prepare import prepare
        from affcli.data.synth.run import synthesize

        raw, out = self.root / f"raw-{kind}", self.root / f"{kind}.h5"
        synthesize(kind, raw, seed=0, shapes_per_class=self.plan.shapes_per_class,
                   classes=self.plan.synth_classes)
        prepare(kind, raw, "seen", "full", out)
        shutil.rmtree(raw, ignore_errors=True)
        return out

    def shapes(self) -> list[Path]:
        """Loose shape files, as users give them to `affcli predict`."""
        if self._shapes is None:
            try:
                from affcli.data.synth.run import synthesize

                synthesize("shapes", self.root / "shapes", seed=0, shapes_per_class=1,
                           classes=self.plan.synth_classes)
                self._shapes = sorted((self.root / "shapes").glob("*.ply"))
            except Exception as exc:  # noqa: BLE001
                self._shapes = exc
        if isinstance(self._shapes, BaseException):
            raise RuntimeError(f"no shape files ({describe(self._shapes)})")
        return self._shapes

    def build(self, kinds: list[str], row: Row,
              ready: Callable[[str], None] | None = None) -> None:
        """The data row: every kind the model rows need, built up front, in order; `ready`
        hears of each as soon as it is there (torchrun starts on its own at once)."""
        import h5py

        failed = []
        for kind in kinds:
            try:
                with h5py.File(self.data(kind), "r") as f:  # samples per split
                    row.figures[kind] = " ".join(f"{s}={f[s]['samples/object'].shape[0]}"
                                                 for s in ("train", "val", "test") if s in f)
            except RuntimeError as exc:
                failed.append(str(exc))
            if ready is not None:
                ready(kind)
        row.figures["classes"] = ("all" if self.plan.synth_classes is None
                                  else "+".join(self.plan.synth_classes))
        row.figures["shapes_per_class"] = self.plan.shapes_per_class
        if failed:
            raise RuntimeError("; ".join(failed))
