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
        self.message = message
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


class MissingDependency(ImportError):
    """An optional package is not installed (or cannot be imported): the one-line message says what to install.

    An :class:`ImportError`, so ``except ImportError`` still catches it; the ``abmil`` command prints it as
    ``abmil: error: ...`` and exits with status 2.
    """


def extra_packages(extra: str) -> list[str]:
    """The pip names of abmil's ``extra`` (``slides``: ``openslide-python``, ``openslide-bin``), from the installed
    package's metadata (pyproject.toml); [] where abmil is not installed."""
    import re
    from importlib import metadata

    try:
        requires = metadata.requires("abmil") or []
    except metadata.PackageNotFoundError:
        return []
    marker = re.compile(r"""extra\s*==\s*["']""" + re.escape(extra) + r"""["']""")
    return [re.match(r"[A-Za-z0-9_.\-]+(\[[^\]]*\])?", r).group(0) for r in requires if marker.search(r)]


def optional_import(module: str, extra: str, purpose: str, *, package: str | None = None):
    """``import module`` for ``purpose`` (e.g. "reading whole-slide images"), or :class:`MissingDependency` naming the
    install that provides it: ``package`` (default: all of the extra's packages), and the extra itself from a clone or
    a wheel of abmil (abmil is not on a package index: ``pip install 'abmil[extra]'`` cannot work)."""
    import importlib

    from . import __version__

    try:
        return importlib.import_module(module)
    except ImportError as e:
        packages = [package] if package else extra_packages(extra) or [module]
        names = " ".join(f"'{p}'" if "[" in p else p for p in packages)
        missing = e.name is not None and (e.name == module or module.startswith(f"{e.name}."))
        why = "is not installed" if missing else f"cannot be imported ({' '.join(str(e).split())})"
        raise MissingDependency(
            f"{purpose} needs {module}, which {why}: pip install {names} (or, in a clone of abmil, pip install -e "
            f"'.[{extra}]'; with its wheel, pip install './dist/abmil-{__version__}-py3-none-any.whl[{extra}]')",
            name=module) from None
