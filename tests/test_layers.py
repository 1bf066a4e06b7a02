"""Layers point one way: no module imports a module of a higher layer (every import, lazy ones too,
and ``importlib.import_module("mcgr....")`` calls), and no two modules import each other, directly or
around a loop.

    helpers (the package root's constants, _validate, _interop, _backends, _arguments, _digest, geometry, ...)
    < ops and the Triton kernels (the top-level kernels/ package, shipped as mcgr.kernels)
    < io < models < synth < infer < archive < eval < train < applications (cli, demo, info, __main__)

infer is the algorithm (the pipeline, TT-GPR, the model loader) and uses no stage above it. archive
is the batch service of ``mcgr infer`` (inputs, result store, engines, its command line): it runs
inference and uses neither evaluation nor training. Evaluation runs inference (not the archive).
Training sits above archive because ``mcgr adapt`` takes its images in the archive's input forms
(files, folders, globs, manifests: ``mcgr.archive.inputs``), and above eval because it evaluates
its model cards; nothing below imports training, so no cycle arises. A new top-level module must be
placed here (the test fails on an unknown one), so the layering stays a decision. The package root
re-exports Pipeline lazily and sits above everything; ``mcgr._backends`` loads ``mcgr.ops.<op>`` by
name, the registry the ops register their launchers into (REGISTRY below): both stay out of the
cycle check, as no module runs at import time what they import.
"""
from __future__ import annotations

import ast
from pathlib import Path

import mcgr

PKG = Path(mcgr.__file__).resolve().parent
# the Triton kernels: mcgr/kernels in a wheel, the top-level kernels/ folder in a clone
KERNELS = PKG / "kernels" if (PKG / "kernels").is_dir() else PKG.parent / "kernels"
SOURCES = {"mcgr": PKG, "mcgr.kernels": KERNELS}
REGISTRY = {("mcgr._backends", "mcgr.ops")}  # (importer, imported by name): the launcher registry

# rank of each first-level name under mcgr; equal ranks may import each other
LAYERS = {
    "_C": 0, "_validate": 0, "_interop": 0, "_backends": 0, "_arguments": 0, "_memory": 0, "_digest": 0,
    "geometry": 0,
    "ops": 1, "kernels": 1,
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


def _imported(path: Path, module: str, root: str = "mcgr") -> list[tuple[int, str]]:
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
        elif isinstance(node, ast.Call):
            out += [(node.lineno, t) for t in _import_module_target(node)]
    return [(ln, t) for ln, t in out if t == root or t.startswith(root + ".")]


def _import_module_target(call: ast.Call) -> list[str]:
    """The module an ``importlib.import_module(NAME)`` call names: a string, or an f-string's constant
    part up to its last dot (``f"mcgr.ops.{op}"`` -> ``mcgr.ops``)."""
    f = call.func
    name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
    if name != "import_module" or not call.args:
        return []
    arg = call.args[0]
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return [arg.value]
    if isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
        prefix = str(arg.values[0].value).rpartition(".")[0]
        return [prefix] if prefix else []
    return []


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
    for module, path in _modules(SOURCES).items():
        src = _rank_of_source(module)
        for line, target in _imported(path, module):
            dst = _rank_of_target(target)
            if any(module == a and (target == b or target.startswith(b + ".")) for a, b in REGISTRY):
                continue
            if dst is not None and dst[0] > src:
                bad.append(f"{path}:{line}: {module} ({LAYER_NAMES.get(src, 'root')}) "
                           f"imports {target} ({LAYER_NAMES[dst[0]]})")
    return bad


def _modules(sources: dict[str, Path]) -> dict[str, Path]:
    """Dotted name -> file of every module under each (dotted prefix, folder) of ``sources``."""
    out = {}
    for prefix, root in sources.items():
        for path in sorted(root.rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            out[".".join((prefix,) + (parts[:-1] if parts[-1] == "__init__" else parts))] = path
    return out


def _import_graph(sources: dict[str, Path], package: str = "mcgr", skip=frozenset()) -> dict[str, set[str]]:
    """Module -> the modules it imports (every import, lazy ones too). ``from a.b import c`` reaches
    ``a.b.c`` when that is a module, else ``a.b``; a name under no source file (a compiled extension)
    is left out, and so are the edges of ``skip`` ((importer, imported prefix) pairs) and those of the
    package root (a lazy facade: with no edge out of it, the constants modules import from it close
    no loop)."""
    mods = _modules(sources)
    graph = {m: set() for m in mods}
    for module, path in mods.items():
        if module == package:
            continue
        for _, target in _imported(path, module, package):
            parent = target.rpartition(".")[0]
            dst = target if target in mods else parent if parent in mods else None
            if dst is None or dst == module:
                continue
            if any(module == a and (dst == b or dst.startswith(b + ".")) for a, b in skip):
                continue
            graph[module].add(dst)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def test_no_import_cycles():
    cycles = _cycles(_import_graph(SOURCES, skip=REGISTRY))
    assert not cycles, "modules that import each other (directly or around a loop):\n" + "\n".join(
        " <-> ".join(c) for c in cycles)


def test_the_check_sees_a_cycle(tmp_path):
    """A synthetic package: a <-> b through a lazy import, c -> d -> e -> c, f imports nobody back."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "from pkg.a import thing\n",
        "a.py": "import os\nfrom pkg import b\nthing = 1\n",
        "b.py": "def g():\n    from .a import thing\n    return thing\n",
        "sub/__init__.py": "",
        "sub/c.py": "from pkg.sub.d import h\n",
        "sub/d.py": "import importlib\nh = 0\ndef k():\n    return importlib.import_module('pkg.e')\n",
        "e.py": "from pkg.sub import c\nfrom pkg import CONST\n",
        "f.py": "from pkg.a import thing\nfrom pkg.native import fast\n",
    }
    for name, text in files.items():
        (pkg / name).write_text(text)
    graph = _import_graph({"pkg": pkg}, "pkg")
    assert graph["pkg.b"] == {"pkg.a"} and graph["pkg.sub.d"] == {"pkg.e"} and graph["pkg.e"] == {"pkg.sub.c", "pkg"}
    assert _cycles(graph) == [["pkg.a", "pkg.b"], ["pkg.e", "pkg.sub.c", "pkg.sub.d"]]
    assert _cycles(_import_graph({"pkg": pkg}, "pkg", skip={("pkg.b", "pkg.a"), ("pkg.sub.d", "pkg.e")})) == []


def test_no_module_imports_a_higher_layer():
    bad = _violations()
    assert not bad, "lower layer imports a higher one:\n" + "\n".join(bad)


def test_every_top_level_module_has_a_layer():
    names = {p.stem for p in PKG.glob("*.py") if p.name != "__init__.py"}
    names |= {p.name for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    missing = sorted(n for n in names if n not in LAYERS)
    assert not missing, f"place these in tests/test_layers.py LAYERS: {missing}"


def test_the_check_sees_an_upward_import(tmp_path):
    """The parser resolves absolute, relative, lazy and by-name imports, so a violation cannot slip through unseen."""
    f = tmp_path / "probe.py"
    f.write_text("import os\nfrom mcgr.infer.pipeline import Pipeline\n\ndef g():\n"
                 "    from ..eval import objects\n    import mcgr.cli\n"
                 "    importlib.import_module('mcgr.train.adapt')\n    import_module(f'mcgr.demo.{x}')\n")
    found = _imported(f, "mcgr.ops.probe")
    assert found == [(2, "mcgr.infer.pipeline.Pipeline"), (5, "mcgr.eval.objects"), (6, "mcgr.cli"),
                     (7, "mcgr.train.adapt"), (8, "mcgr.demo")]
    assert [_rank_of_target(t)[1] for _, t in found] == ["infer", "eval", "cli", "train", "demo"]
    assert all(_rank_of_target(t)[0] > _rank_of_source("mcgr.ops.probe") for _, t in found)
    assert _rank_of_target("mcgr.Pipeline") == (LAYERS["infer"], "infer")
    assert _rank_of_target("mcgr.MODEL_SPACING_MM") == (0, "MODEL_SPACING_MM")
