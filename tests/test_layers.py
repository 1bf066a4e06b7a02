"""Layers point one way: no module imports a module of a higher layer (every import, lazy ones too).

    helpers (the package root's constants, _validate, _interop, _backends, _arguments, _digest, geometry,
    kernels, ...) < ops < io < models < synth < infer < archive < eval < train < applications (cli, demo,
    info, __main__)

infer is the algorithm (the pipeline, TT-GPR, the model loader) and uses no stage above it. archive
is the batch service of ``mcgr infer`` (inputs, result store, engines, its command line): it runs
inference and uses neither evaluation nor training. Evaluation runs inference (not the archive).
Training sits above archive because ``mcgr adapt`` takes its images in the archive's input forms
(files, folders, globs, manifests: ``mcgr.archive.inputs``), and above eval because it evaluates
its model cards; nothing below imports training, so no cycle arises. A new top-level module must be
placed here (the test fails on an unknown one), so the layering stays a decision.
"""
from __future__ import annotations

import ast
from pathlib import Path

import mcgr

PKG = Path(mcgr.__file__).resolve().parent

# rank of each first-level name under mcgr; equal ranks may import each other
LAYERS = {
    "_C": 0, "_validate": 0, "_interop": 0, "_backends": 0, "_arguments": 0, "_memory": 0, "_digest": 0,
    "geometry": 0, "kernels": 0,
    "ops": 1,
    "io": 2,
    "models": 3,
    "synth": 4,
    "infer": 5,
    "archive": 6,
    "eval": 7,
    "train": 8,
    "cli": 9, "demo": 9, "info": 9, "__main__": 9,
}
LAYER_NAMES = {0: "helpers", 1: "ops", 2: "io", 3: "models", 4: "synth", 5: "infer", 6: "archive", 7: "eval",
               8: "train", 9: "applications"}
ROOT_FACADE = 10  # mcgr/__init__.py re-exports Pipeline lazily: it sits above everything it names


def _root_constants() -> set[str]:
    """Names the package root defines itself (``__version__``, ``MODEL_SPACING_MM``): helper layer."""
    tree = ast.parse((PKG / "__init__.py").read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return names


ROOT_CONSTANTS = _root_constants()


def _module_name(path: Path) -> str:
    parts = ("mcgr",) + path.relative_to(PKG).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(path: Path, module: str) -> list[tuple[int, str]]:
    """(line, dotted target) of every mcgr import in ``path``, relative imports resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                src = ".".join(base + ([node.module] if node.module else []))
            else:
                src = node.module or ""
            for a in node.names:
                out.append((node.lineno, f"{src}.{a.name}" if a.name != "*" else src))
    return [(ln, t) for ln, t in out if t == "mcgr" or t.startswith("mcgr.")]


def _rank_of_target(target: str) -> tuple[int, str] | None:
    parts = target.split(".")
    if len(parts) == 1:
        return None  # `import mcgr`: the root's constants
    first = parts[1]
    if first in LAYERS:
        return LAYERS[first], first
    if len(parts) == 2 and first in ROOT_CONSTANTS:
        return 0, first
    if len(parts) == 2 and first in mcgr.__all__:  # the lazy facade: what it names decides
        obj = getattr(mcgr, first)
        return _rank_of_target(obj.__module__)
    raise AssertionError(f"{target}: place mcgr.{first} in a layer (tests/test_layers.py LAYERS)")


def _rank_of_source(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:
        return ROOT_FACADE
    first = parts[1]
    assert first in LAYERS, f"{module}: place mcgr.{first} in a layer (tests/test_layers.py LAYERS)"
    return LAYERS[first]


def _violations() -> list[str]:
    bad = []
    for path in sorted(PKG.rglob("*.py")):
        module = _module_name(path)
        src = _rank_of_source(module)
        for line, target in _imported(path, module):
            dst = _rank_of_target(target)
            if dst is not None and dst[0] > src:
                bad.append(f"{path.relative_to(PKG.parent)}:{line}: {module} ({LAYER_NAMES.get(src, 'root')}) "
                           f"imports {target} ({LAYER_NAMES[dst[0]]})")
    return bad


def test_no_module_imports_a_higher_layer():
    bad = _violations()
    assert not bad, "lower layer imports a higher one:\n" + "\n".join(bad)


def test_every_top_level_module_has_a_layer():
    names = {p.stem for p in PKG.glob("*.py") if p.name != "__init__.py"}
    names |= {p.name for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    missing = sorted(n for n in names if n not in LAYERS)
    assert not missing, f"place these in tests/test_layers.py LAYERS: {missing}"


def test_the_check_sees_an_upward_import(tmp_path):
    """The parser resolves absolute, relative and lazy imports, so a violation cannot slip through unseen."""
    f = tmp_path / "probe.py"
    f.write_text("import os\nfrom mcgr.infer.pipeline import Pipeline\n\ndef g():\n"
                 "    from ..eval import objects\n    import mcgr.cli\n")
    found = _imported(f, "mcgr.ops.probe")
    assert found == [(2, "mcgr.infer.pipeline.Pipeline"), (5, "mcgr.eval.objects"), (6, "mcgr.cli")]
    assert [_rank_of_target(t)[1] for _, t in found] == ["infer", "eval", "cli"]
    assert all(_rank_of_target(t)[0] > _rank_of_source("mcgr.ops.probe") for _, t in found)
    assert _rank_of_target("mcgr.Pipeline") == (LAYERS["infer"], "infer")
    assert _rank_of_target("mcgr.MODEL_SPACING_MM") == (0, "MODEL_SPACING_MM")
