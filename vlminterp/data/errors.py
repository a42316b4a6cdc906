"""Errors raised by the dataset loaders: a malformed file and a missing image."""

from __future__ import annotations

from pathlib import Path

__all__ = ["DatasetFormatError", "MissingImageError"]


class DatasetFormatError(ValueError):
    """A benchmark file does not have the documented format.

    Attributes:
        path: The file.
        where: The place in the file (``"line 12"``, ``"row 3"``, ``"entry '17'"``, ``"header"``).
        field: The field at fault, or None when the whole row/line is.
    """

    def __init__(self, path: str | Path, where: str, field: str | None, problem: str):
        self.path, self.where, self.field = Path(path), where, field
        what = f"field {field!r} " if field is not None else ""
        super().__init__(
            f"{self.path}, {where}: {what}{problem}. The file does not have the benchmark's published format; "
            "re-download it or fix that row."
        )


class MissingImageError(FileNotFoundError):
    """Images of a benchmark are missing (one file, or the whole image folder)."""
