"""``abmil --help`` without torch: the parser reads the library's defaults from its source (abmil._light), and reads
the same values as the imported library."""
from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("torch", "numpy", "sklearn", "scipy", "pandas", "h5py", "matplotlib", "PIL")

# Every library module the parser reads names from, imported for real (then the parser uses the real objects).
REAL_MODULES = ("abmil.data.patches", "abmil.experiments.benchmarks", "abmil.experiments.histology",
                "abmil.experiments.mnist_bags", "abmil.nn.zoo", "abmil.report.metrics", "abmil.train.engines",
                "abmil.train.presets", "abmil.slides.study", "abmil.explain.heatmap", "abmil.slides.heatmap",
                "abmil.slides.predict", "abmil.slides.train", "abmil.train.loss", "abmil.report.evaluate",
                "abmil.data.mnist")

# Prints, per (sub)command, its help text and every action's default and choices, as JSON.
DESCRIBE = """
import argparse, importlib, json, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
from abmil.cli import build_parser

def walk(parser, path, out):
    out[path] = {"help": parser.format_help(), "defaults": {
        a.dest: [repr(a.default), None if a.choices is None or isinstance(a, argparse._SubParsersAction)
                 else repr(list(a.choices))] for a in parser._actions},
        "set": {k: getattr(v, "__qualname__", repr(v)) for k, v in parser._defaults.items()}}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub, child in action.choices.items():
                walk(child, f"{path} {sub}", out)
    return out

print(json.dumps(walk(build_parser(), "abmil", {})))
"""


def _describe(*modules: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", DESCRIBE, *modules], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_help_imports_neither_torch_nor_numpy():
    code = ("import sys\nfrom abmil.cli import main\n"
            "status = [main(argv) for argv in"
            " (['--help'], ['train', '--help'], ['heatmap', '--help'], ['--version'])]\n"
            f"print([m for m in {HEAVY!r} if m in sys.modules], status)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[] [0, 0, 0, 0]"


def test_light_parser_has_the_imported_librarys_defaults_choices_and_help():
    light, real = _describe(), _describe(*REAL_MODULES)
    assert light.keys() == real.keys() and len(light) > 10
    for command in real:
        assert light[command] == real[command], command


def test_a_name_that_needs_torch_comes_from_the_real_module():
    code = ("import sys\nfrom abmil._light import library_names\n"
            "(light,) = library_names('abmil.data.augment', 'HED_FROM_RGB')\n"
            "imported = 'torch' in sys.modules\nimport abmil.data.augment as real\n"
            "print(imported, light is real.HED_FROM_RGB)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "True"]


def test_light_dataclass_fields_are_the_librarys():
    import dataclasses

    from abmil._light import _light_module
    from abmil.slides.train import WSIConfig

    light = _light_module("abmil.slides.train").WSIConfig
    assert light is not WSIConfig
    assert [(f.name, f.default) for f in dataclasses.fields(light)] == \
           [(f.name, f.default) for f in dataclasses.fields(WSIConfig)]
