"""A restricted unpickler for dataset pickles.

A plain `pickle.load` runs whatever callable the file names. Dataset pickles need only
numpy arrays and plain containers, so everything else is refused before it is called.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

from affcli.errors import AffError
from affcli.fileio import read_user_bytes

# (module, name) pairs needed to rebuild numpy arrays and scalars, across numpy 1.x and 2.x.
_ALLOWED: frozenset[tuple[str, str]] = frozenset(
    {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("collections", "OrderedDict"),
        ("builtins", "dict"),
        ("builtins", "list"),
        ("builtins", "tuple"),
        ("builtins", "set"),
        ("builtins", "frozenset"),
        ("builtins", "bytearray"),
        ("_codecs", "encode"),  # how protocol-2 pickles of numpy carry raw bytes
    }
)


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused to load {module}.{name}: only numpy arrays "
                                     "and plain containers are allowed")


def safe_load_pickle(path: str | Path, data: bytes | None = None) -> Any:
    """Load a pickle that may hold only numpy arrays, numbers, strings and containers.

    `data` is the file's bytes when the caller has read them already. Raises AffError naming
    the file for a missing, truncated, corrupt or unsafe pickle.
    """
    path = Path(path)
    if data is None:
        data = read_user_bytes(path)
    try:
        return _RestrictedUnpickler(io.BytesIO(data)).load()
    except pickle.UnpicklingError as exc:
        raise AffError(path, f"not a safe dataset pickle: {exc}") from None
    except (EOFError, ValueError, TypeError, AttributeError, ImportError, IndexError,
            KeyError, MemoryError, OverflowError, UnicodeDecodeError) as exc:
        kind = "truncated" if isinstance(exc, EOFError) else "corrupt"
        raise AffError(path, f"{kind} pickle ({type(exc).__name__}: {exc})") from None
