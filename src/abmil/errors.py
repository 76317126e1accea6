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


class OutputError(OSError):
    """A file or folder could not be written (no space, no permission, a file where a folder should be, ...).

    An :class:`OSError` whose ``filename`` is the output that failed (not a temporary file beside it) and whose
    message names it: ``cannot write PATH: No space left on device``. Built with :meth:`of` from the error caught;
    the plain ``(errno, strerror, filename)`` constructor keeps it picklable (worker processes send it back).
    """

    @classmethod
    def of(cls, path: object, cause: OSError) -> OutputError:
        if isinstance(cause, OutputError):
            return cause
        return cls(cause.errno, cause.strerror or str(cause), str(path))

    def __str__(self) -> str:
        return f"cannot write {self.filename}: {self.strerror}"
