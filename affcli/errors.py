"""One error type for bad input, carrying where (file, record) and what is wrong.

Only the CLI turns these into exit codes; library code raises them.
"""

from __future__ import annotations

from os import PathLike

EXIT_INTERNAL = 1
EXIT_BAD_INPUT = 2


class AffError(Exception):
    """Bad user input: a file or record that cannot be used, or a bad option.

    `file` names what the user gave us (path or option), `record` narrows it down
    (a line, a sample index, a key), `reason` says what is wrong.
    """

    exit_code = EXIT_BAD_INPUT

    def __init__(
        self,
        file: str | PathLike[str] | None,
        reason: str,
        record: str | int | None = None,
        hint: str | None = None,
    ) -> None:
        self.file = None if file is None else str(file)
        self.record = record
        self.reason = reason
        self.hint = hint  # further lines of help, printed after the one error line
        super().__init__(self.one_line())

    def one_line(self) -> str:
        where = self.file or ""
        if self.record is not None:
            where = f"{where}:{self.record}" if where else str(self.record)
        return f"{where}: {self.reason}" if where else self.reason
