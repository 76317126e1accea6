"""Settings files for the command line: ``abmil train --config run.toml``; flags given on the command line win.

A settings file is TOML (or JSON) with one key per flag of the command, named as the flag is (``batch-size`` or
``batch_size``), valued as it would be typed (``epochs = 20``, ``pooling = "gated"``, ``models = ["attention",
"gated"]`` or ``"attention,gated"``, ``bf16 = true``). A run records the settings it ran with as
``OUT/config.json`` (see :func:`resolved_settings`), which ``--config`` reads back to repeat the run.

Every key is checked before anything runs: an unknown key, a value of the wrong type or outside the flag's choices
is an error naming the file and the key.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from .errors import DataError

#: Flags that are not settings of a run: never read from, nor written to, a settings file.
NOT_SETTINGS = frozenset({"help", "version", "config", "handler", "command", "experiment", "explainer", "resume",
                          "verbosity"})  # how much train prints is no setting of the run


def _load(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise DataError("settings file not found", path=path) from None
    except OSError as e:
        raise DataError(f"cannot read the settings file ({e.strerror or e})", path=path) from None
    try:
        if path.lower().endswith(".json"):
            data = json.loads(raw.decode("utf-8"))
        else:
            if sys.version_info >= (3, 11):
                import tomllib
            else:  # pragma: no cover - Python 3.10
                import tomli as tomllib
            data = tomllib.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError and TOMLDecodeError are ValueErrors
        raise DataError(f"not a valid {'JSON' if path.lower().endswith('.json') else 'TOML'} file: {e}",
                        path=path) from None
    if not isinstance(data, dict):
        raise DataError("a settings file holds key = value pairs, one per flag", path=path)
    return data


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """The parser's optional flags by every name a settings file may use for them."""
    out: dict[str, argparse.Action] = {}
    for action in parser._actions:  # argparse exposes no public list of a parser's actions
        if not action.option_strings or action.dest in NOT_SETTINGS or action.help == argparse.SUPPRESS:
            continue
        out.setdefault(action.dest, action)
        for flag in action.option_strings:
            if flag.startswith("--"):
                out.setdefault(flag[2:], action)
                out.setdefault(flag[2:].replace("-", "_"), action)
    return out


def _value(action: argparse.Action, key: str, value: Any, path: str) -> Any:
    """``value`` as the flag would have parsed it, or a DataError naming the key."""
    def bad(why: str) -> DataError:
        return DataError(f"setting {key!r}: {why} (got {value!r})", path=path)

    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise bad("expected true or false")
        return value if isinstance(action, argparse._StoreTrueAction) else not value
    if isinstance(value, dict) or value is None:
        raise bad("expected a value, not a table")
    if isinstance(value, bool):
        raise bad("expected a value for the flag, not true/false")
    if isinstance(action, argparse._AppendAction):
        items = value if isinstance(value, list) else [value]
        return [str(v) for v in items]
    if isinstance(value, list):
        value = ",".join(str(v) for v in value)  # list flags parse "a,b" themselves
    convert = action.type or str
    try:
        out = convert(str(value))  # as if typed: TOML's 20 and "20" both parse as the flag parses "20"
    except (TypeError, ValueError, argparse.ArgumentTypeError) as e:
        raise bad(str(e) or "not a valid value") from None
    if action.choices is not None and out not in action.choices:
        raise bad(f"expected one of {', '.join(map(str, action.choices))}")
    return out


def settings_defaults(parser: argparse.ArgumentParser, path: str | os.PathLike) -> dict[str, Any]:
    """``{dest: value}`` for the flags of ``parser`` that the settings file at ``path`` sets, checked."""
    path = os.fspath(path)
    options = _options(parser)
    out: dict[str, Any] = {}
    for key, value in _load(path).items():
        action = options.get(key)
        if action is None:
            known = sorted({a.option_strings[-1][2:] for a in options.values()})
            raise DataError(f"unknown setting {key!r} for this command (known: {', '.join(known)})", path=path)
        out[action.dest] = _value(action, key, value, path)
    return out


def leaf_parser(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.ArgumentParser | None:
    """The (sub)parser that parses the options of ``argv``'s command, e.g. ``reproduce benchmarks``'s."""
    current, rest = parser, list(argv)
    while True:
        sub = next((a for a in current._actions if isinstance(a, argparse._SubParsersAction)), None)
        if sub is None:
            return current
        name = next((t for t in rest if not t.startswith("-")), None)
        if name not in sub.choices:
            return None
        current, rest = sub.choices[name], rest[rest.index(name) + 1:]


def config_path(argv: Sequence[str]) -> str | None:
    """The value of ``--config`` in ``argv`` (``--config FILE`` or ``--config=FILE``), else None."""
    for i, token in enumerate(argv):
        if token == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if token.startswith("--config="):
            return token.split("=", 1)[1]
    return None


def apply_settings_file(parser: argparse.ArgumentParser, argv: Sequence[str]) -> None:
    """Make the settings file named by ``--config`` in ``argv`` the defaults of its command's parser (in place).

    Flags on the command line still override them; a required flag the file sets is no longer required."""
    path = config_path(argv)
    leaf = leaf_parser(parser, argv)
    if path is None or leaf is None:
        return
    defaults = settings_defaults(leaf, path)
    for action in leaf._actions:
        if action.dest in defaults:
            action.required = False
    leaf.set_defaults(**defaults)


def add_config_flag(parser: argparse.ArgumentParser) -> None:
    """Give every command of ``parser`` (recursively) the ``--config FILE`` flag."""
    sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    if sub is None:
        parser.add_argument("--config", metavar="FILE", default=None,
                            help="read settings from a TOML or JSON file (keys = flag names); flags given here win")
        return
    for child in dict.fromkeys(sub.choices.values()):  # aliases map to the same parser
        add_config_flag(child)


def resolved_settings(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, Any]:
    """The settings a command ran with, as a settings file holds them (flag names, JSON-able values)."""
    out: dict[str, Any] = {}
    for action in parser._actions:
        if not action.option_strings or action.dest in NOT_SETTINGS or action.help == argparse.SUPPRESS:
            continue
        value = getattr(args, action.dest, None)
        if value is None:
            continue
        name = action.option_strings[-1][2:]
        if isinstance(action, argparse._StoreFalseAction):
            value = not value
        out[name] = list(value) if isinstance(value, (list, tuple)) else value
    return out


def settings_json(settings: Mapping[str, Any]) -> str:
    return json.dumps(dict(settings), indent=2, sort_keys=True, default=str) + "\n"
