"""Exceptions raised at the library's boundary."""
from __future__ import annotations


class DataError(ValueError):
    """Bad input data. The message names the file, bag or field at fault."""

    def __init__(self, message: str, *, path: str | None = None, bag: object | None = None):
        where = []
        if path is not None:
            where.append(f"file {path}")
        if bag is not None:
            where.append(f"bag {bag}")
        self.path = path
        self.bag = bag
        super().__init__(f"{', '.join(where)}: {message}" if where else message)
