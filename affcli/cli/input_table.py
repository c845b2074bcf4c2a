"""The conditioning options `affcli predict` offers, cached so that building the command
(for `--help`, a usage error, or `affcli --help`) does not import the models, and with them
torch (3 s on a 2-core machine).

The table comes from the models' `inputs` declarations. It is cached as JSON under
`$AFFCLI_CACHE_DIR` (default `$XDG_CACHE_HOME/affcli`, else `~/.cache/affcli`) under a
fingerprint of what could change it: affcli's version, the built-in model modules (name,
size, mtime) and the installed `affcli.models` plugins (entry point, distribution, version).
A new or updated model, built-in or plugin, changes the fingerprint; an unwritable cache
folder only means the table is built every time.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

ENTRY_POINT_GROUP = "affcli.models"  # (= affcli.models.ENTRY_POINT_GROUP, without torch)


def cache_dir() -> Path:
    if os.environ.get("AFFCLI_CACHE_DIR"):
        return Path(os.environ["AFFCLI_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "affcli"


def fingerprint() -> str:
    import affcli

    zoo = Path(affcli.__file__).parent / "models" / "zoo"
    modules = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns)
                     for p in zoo.glob("*.py"))
    plugins = sorted(
        (ep.name, ep.value, getattr(ep.dist, "name", ""), getattr(ep.dist, "version", ""))
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP))
    doc = json.dumps([affcli.__version__, str(zoo), modules, plugins])
    return hashlib.sha256(doc.encode()).hexdigest()[:20]


def declared_inputs(build: Callable[[], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The option table: from the cache when it matches the installed models, else from
    `build()` (which imports them), then cached."""
    path = cache_dir() / f"predict-inputs-{fingerprint()}.json"
    try:
        table = json.loads(path.read_text())
        if isinstance(table, list) and all(isinstance(row, dict) for row in table):
            return table
    except (OSError, ValueError):
        pass
    table = build()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(table))
        os.replace(tmp, path)  # atomic: a concurrent reader sees all or nothing
    except OSError:
        pass
    return table
