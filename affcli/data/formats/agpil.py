"""AGPIL raw format: PIAD's layout per view and setting, plus instruction JSON.

`<root>/<View>_view/<Setting>/` holds `Img_*`, `Point_*` and `Description_*` list files
(`Box_*` too when the release has boxes; without them the object box is the whole image).
Each description file is JSON `{"Description": "<instruction>"}`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from affcli.data.formats.common import missing_root, setting_dir
from affcli.data.formats.piad import find_list, read_listed
from affcli.data.h5 import Prepared

VIEWS = ("full", "partial", "rotation")


def read_agpil(root: Path, setting: str, view: str = "full", num_points: int = 2048,
               progress_factory: Callable[[int], Callable[[int], None]] | None = None
               ) -> Prepared:
    root = Path(root)
    base = setting_dir(root, setting.capitalize(), view=view.capitalize())
    if not root.is_dir() or find_list(base, "Img", "train", required=False) is None:
        raise missing_root("agpil", root)
    return read_listed("agpil", root, base, setting, view, num_points, progress_factory)
