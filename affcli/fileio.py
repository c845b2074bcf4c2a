"""Files in and out. Atomic file writing: every output affcli writes goes through
`atomic_output`, so a failure or Ctrl-C never leaves a half-written file, and files get the
permissions the user's umask asks for (mkstemp's 0600 is not what users expect of a dataset or
checkpoint). Also the one JSON-safe conversion every JSON affcli prints or writes goes through,
the numbered output folders (runs/.../<prefix>-N) and the reading of users' files."""

from __future__ import annotations

import errno
import json
import math
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from affcli.errors import AffError


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class DiskFullError(AffError):
    """A write failed for want of space (ENOSPC, a quota, a file size limit): exit 1, the
    previous file intact, no temporary file left."""

    exit_code = 1


_FULL = {errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}


def _full_disk_cause(exc: BaseException) -> int | None:
    """The out-of-space errno behind `exc`, if any: torch's writer wraps the OSError of the
    Python file it writes to in a RuntimeError, and writers in C++ or Rust leave only the
    system's message in theirs."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            break
        if isinstance(seen, OSError) and seen.errno in _FULL:
            return seen.errno
        seen = seen.__cause__ or seen.__context__
    text = str(exc)
    return next((code for code in _FULL if os.strerror(code) in text), None)


def disk_full_error(exc: BaseException, out: str | os.PathLike[str]) -> DiskFullError | None:
    """The DiskFullError to raise for `exc` while writing `out`, or None when `exc` is not
    for want of space."""
    code = _full_disk_cause(exc)
    if code is None:
        return None
    out = Path(out)
    return DiskFullError(out, f"cannot write: {os.strerror(code)} ({_free_space(out.parent)}"
                         "); the previous file, if any, is unchanged")


def _free_space(folder: Path) -> str:
    import shutil

    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return "free space unknown"
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    size, unit = float(free), 0
    while size >= 1024 and unit < len(units) - 1:
        size, unit = size / 1024, unit + 1
    return f"{size:.1f} {units[unit]} free there"


def _fsync(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    try:
        os.fsync(fd)
    except OSError:
        if not directory:  # some file systems cannot sync a directory; a file must sync
            raise
    finally:
        os.close(fd)


@contextmanager
def atomic_output(out: str | os.PathLike[str], force: bool = True, durable: bool = False
                  ) -> Iterator[Path]:
    """Yields a temporary path beside `out`; renamed onto `out` only if the block succeeds.

    A failure (or Ctrl-C) leaves no partial file behind, and an existing output is untouched.
    With `force` False an existing `out` is an error (exit 2) rather than replaced, also when
    another process created it while this one was writing: the finished file is hard-linked
    into place, which fails if the name is taken, so of several writers at once exactly one
    wins and the others exit 2. With `force` the last rename wins; a reader sees one whole
    file or another, never a mix. A write that runs out of space is a DiskFullError naming
    `out` and the free space. `durable`: the file is synced to the disk before the rename and
    the folder after it, so a power cut or kill leaves the old file or the whole new one
    (checkpoints).
    """
    out = Path(out)
    if out.exists() and not force:
        raise AffError(out, "output exists; pass --force to overwrite it")
    if out.exists() and out.is_dir():
        raise AffError(out, "output is a directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # after the writer: some (safetensors) replace the file with one of mode 0600
        os.chmod(tmp, 0o666 & ~current_umask())
        if durable:
            _fsync(tmp)
        if force:
            os.replace(tmp, out)
        else:
            _claim(tmp, out)
        if durable:
            _fsync(out.parent, directory=True)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        full = disk_full_error(exc, out)
        if full is not None:
            raise full from None
        raise


def _claim(tmp: Path, out: Path) -> None:
    """Moves `tmp` to `out` only if `out` does not exist, atomically (rename(2) would
    replace it silently)."""
    try:
        os.link(tmp, out)
    except FileExistsError:
        raise AffError(out, "output exists (another process wrote it while this one was "
                       "working); pass --force to overwrite it") from None
    except OSError as exc:
        # file systems without hard links (some FUSE and network mounts): check, then rename;
        # a writer finishing in between can still be replaced
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK,
                             errno.EXDEV):
            raise
        if out.exists():
            raise AffError(out, "output exists; pass --force to overwrite it") from None
        os.replace(tmp, out)
        return
    tmp.unlink()


def next_numbered_dir(parent: str | os.PathLike[str], prefix: str) -> Path:
    """parent/<prefix>-N for the next free N (1 in an empty parent), created along with
    `parent`. The mkdir is the claim: two runs starting at once never share a folder, the
    loser of a race takes the next number."""
    base = Path(parent)
    base.mkdir(parents=True, exist_ok=True)
    pattern = re.compile(rf"^{re.escape(prefix)}-(\d+)$")
    n = max((int(m.group(1)) for p in base.iterdir() if (m := pattern.match(p.name))),
            default=0) + 1
    while True:
        path = base / f"{prefix}-{n}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            n += 1


def read_user_bytes(path: str | os.PathLike[str], what: str = "file") -> bytes:
    """The bytes of a file the user (or a dataset) named, or an AffError (exit 2) naming it:
    missing, a folder, or unreadable (permissions, I/O error) - never a traceback. `what` says
    what the file should be, for the messages ("image", "point cloud or mesh file")."""
    path = Path(path)
    if path.is_dir():  # checked first: reading a folder fails differently per platform
        article = "an" if what[:1].lower() in "aeiou" else "a"
        raise AffError(path, f"is a folder, expected {article} {what}")
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise AffError(path, f"{what} not found") from None
    except OSError as exc:
        raise AffError(path, f"cannot read the {what} ({exc.strerror or exc})") from None


def jsonable(value: Any) -> Any:
    """Plain JSON types; NaN/inf become null so every consumer can parse the document."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy / torch scalars
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def same_file(a: str | os.PathLike[str] | None, b: str | os.PathLike[str]) -> bool:
    """Whether two paths name the same file (False when either cannot be resolved)."""
    try:
        return a is not None and Path(a).resolve() == Path(b).resolve()
    except OSError:
        return False


def write_json(path: str | os.PathLike[str], doc: Any) -> Path:
    """`doc` as indented JSON (NaN as null), atomically."""
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(jsonable(doc), indent=2) + "\n")
    return Path(path)
