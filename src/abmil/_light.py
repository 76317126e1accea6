"""The library's constants and defaults read from its source without importing torch, numpy or scikit-learn.

``abmil --help`` must answer in well under a second, yet every flag's default and choices come from the library
(:func:`abmil.cli.default_of`), whose modules import torch at the top. :func:`library_names` runs a module's
*top-level* statements only — assignments, function, class and import statements — with its third-party imports
left out: constants, dataclasses (their field defaults) and functions (their signatures) come out as the module
defines them, by the module's own code. A statement that needs a name left out fails; every name it would have
bound is then unavailable (never a stale earlier binding), and asking for such a name imports the real module
instead. So a value is always the library's; only its speed depends on how the module is written. (A function's
body runs as written when called, with the names its module could bind: the parser calls only small helpers.)

What comes back is for reading defaults (dataclass fields, signatures, constants): the classes and functions are
copies, not the library's objects, and are not for training.
"""
from __future__ import annotations
import __future__

import ast
import importlib
import os
import sys
from types import ModuleType
from typing import Any

# Imports a light module keeps: the standard library's (imported) and abmil's (light); each is read only when a
# definition needs its name.
_STDLIB = frozenset(sys.stdlib_module_names) - {"__future__"}
_DEFINITIONS = (ast.Assign, ast.AnnAssign, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
_PREFIX = "_abmil_light."  # the copies live in sys.modules under this prefix (dataclasses looks a class's module up)
# Per light module: its imports not read yet, name -> (module, what): what ".attr" for `from module import attr`,
# None for `import module as name`, the top package's name for `import package.module`.
_pending: dict[str, dict[str, tuple[str, str | None]]] = {}


class _NotRun(Exception):
    """A top-level statement that is not a definition: not run, so what it binds is unavailable."""


def _bound_names(node: ast.stmt) -> set[str]:
    """Every module-level name a statement may bind."""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return {node.name}
    names = {sub.id for sub in ast.walk(node) if isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Store)}
    names |= {(a.asname or a.name).split(".")[0] for sub in ast.walk(node) if isinstance(sub, ast.alias)
              for a in [sub]}
    return names


def _def_time_names(node: ast.stmt, future: bool) -> set[str]:
    """The names a definition reads when it runs (not those its function bodies read when called)."""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        args = node.args
        parts: list[ast.AST] = [*node.decorator_list, *args.defaults, *(d for d in args.kw_defaults if d)]
        if not future:
            parts += [a.annotation for a in (*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg,
                                             args.kwarg) if a is not None and a.annotation is not None]
            parts += [node.returns] if node.returns else []
    elif isinstance(node, ast.ClassDef):
        parts = [*node.decorator_list, *node.bases, *(k.value for k in node.keywords)]
        return {n.id for p in parts for n in ast.walk(p) if isinstance(n, ast.Name)}.union(
            *(_def_time_names(stmt, future) for stmt in node.body))
    else:
        parts = [node]
    return {n.id for p in parts for n in ast.walk(p) if isinstance(n, ast.Name)}


def _absolute(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    parts = module.split(".")
    base = parts if is_package else parts[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _run_import(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> None:
    """Note an import as pending (read when a definition needs it); ImportError for a third-party one."""
    pending = _pending[module]
    if isinstance(node, ast.Import):
        for alias in node.names:
            top = alias.name.split(".")[0]
            if top not in _STDLIB and not (top == "abmil" and alias.asname):
                raise ImportError(alias.name)
            # `import a.b` binds `a` (once a.b is imported); `import a.b as c` binds a.b
            pending[alias.asname or top] = (alias.name, None if alias.asname else top)
        return
    source = _absolute(module, node, is_package)
    top = source.split(".")[0]
    if top == "__future__":
        return
    if top not in _STDLIB and top != "abmil":
        raise ImportError(source)
    for alias in node.names:
        pending[alias.asname or alias.name] = (source, "." + alias.name)


def _source_file(module: str) -> tuple[str, bool] | None:
    """(path, is_package) of an abmil module's source, found without importing its packages (their ``__init__``
    may import torch); None if there is none."""
    import abmil

    parts = module.split(".")
    if parts[0] != "abmil":
        return None
    base = os.path.join(os.path.dirname(abmil.__file__), *parts[1:])
    for path, is_package in ((os.path.join(base, "__init__.py"), True), (base + ".py", False)):
        if os.path.isfile(path):
            return path, is_package
    return None


def _resolve(source: str, what: str | None) -> Any:
    """A pending import's value: ``source`` itself (None), its top package (a name), or its attribute (``.name``)."""
    light = source.split(".")[0] == "abmil"
    if what is None or not what.startswith("."):
        if light:
            return _light_module(source)
        importlib.import_module(source)
        return sys.modules[what or source]
    if light:
        return _light_name(source, what[1:])
    real = importlib.import_module(source)
    try:
        return getattr(real, what[1:])
    except AttributeError:
        return importlib.import_module(f"{source}{what}")


def _light_name(module: str, name: str) -> Any:
    """``name`` of the light ``module`` (reading a pending import first); KeyError where it cannot be had."""
    namespace = _light_module(module).__dict__
    if name in _pending[module]:
        source, what = _pending[module].pop(name)
        try:
            namespace[name] = _resolve(source, what)
        except (KeyError, ImportError):
            pass
    if name in namespace:
        return namespace[name]
    if _source_file(f"{module}.{name}") is not None:  # a submodule
        return _light_module(f"{module}.{name}")
    raise KeyError(name)


def _light_module(module: str) -> ModuleType:
    """``module`` with only its top-level definitions run and its third-party imports left out (cached)."""
    light = sys.modules.get(_PREFIX + module)
    if light is not None:
        return light
    found = _source_file(module)
    if found is None:
        raise ImportError(module)
    origin, is_package = found
    with open(origin, encoding="utf-8") as f:
        tree = ast.parse(f.read(), origin)
    future = any(isinstance(node, ast.ImportFrom) and node.module == "__future__"
                 and any(a.name == "annotations" for a in node.names) for node in tree.body)
    flags = __future__.annotations.compiler_flag if future else 0
    light = ModuleType(_PREFIX + module)
    light.__file__ = origin
    namespace = light.__dict__
    _pending[module] = {}
    sys.modules[light.__name__] = light  # before the body: an import cycle sees what is bound so far
    for node in tree.body:
        try:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                _run_import(node, module, is_package)
                continue
            if not isinstance(node, _DEFINITIONS):
                raise _NotRun  # control flow, bare calls: not run; what they bind is unknown
            for name in _def_time_names(node, future) & _pending[module].keys():
                _light_name(module, name)
            code = compile(ast.Module([node], type_ignores=[]), origin, "exec", flags=flags, dont_inherit=True)
            exec(code, namespace)  # noqa: S102 - the package's own definitions
            for name in _bound_names(node):  # a name bound again after its import is this definition's
                _pending[module].pop(name, None)
        except Exception:  # a left-out name (NameError, ImportError, AttributeError, ...): unbind what it binds
            for name in _bound_names(node):
                namespace.pop(name, None)
                _pending[module].pop(name, None)
    return light


def library_names(module: str, *names: str) -> tuple[Any, ...]:
    """``names`` of the abmil ``module``: the imported module's own where it is imported already, else read from
    its source as above, each name the light copy cannot give imported for real."""
    if module in sys.modules:
        real = sys.modules[module]
        return tuple(getattr(real, name) for name in names)
    values = []
    for name in names:
        try:
            values.append(_light_name(module, name))
        except (KeyError, ImportError):
            values.append(getattr(importlib.import_module(module), name))
    return tuple(values)
