"""The installed package: one namespace (``latentfuse``), every sub-package listed, imports in layers.

The repository keeps its folders at the top level (``model/``, ``export/``, ...); ``pyproject.toml`` maps them
to ``latentfuse.model``, ``latentfuse.export``, ... so that ``pip install`` puts nothing else at the top of
site-packages. The layers (docs/design.md, "Packages and layers"): a library module imports only its own
package and the packages below it, ``model`` < ``runtime`` < ``calibration`` < ``export`` < ``bench``; the
command-line modules (``*cli.py``) sit above all of them.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAYERS = ("model", "runtime", "calibration", "export", "bench")  # bottom to top
PYTHON_DIRS = (*LAYERS, "scripts", "tests")


def _package_modules(top: str):
    for path in sorted((REPO / top).rglob("*.py")):
        rel = path.relative_to(REPO)
        if "cpp" in rel.parts:
            continue
        parts = list(rel.with_suffix("").parts)
        yield path, ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import in the file, function bodies included."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            out.extend((node.lineno, alias.name) for alias in node.names)
    return out


def test_pyproject_lists_every_sub_package_under_the_namespace():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert config["package-dir"] == {f"latentfuse.{top}": top for top in LAYERS}
    on_disk = {"latentfuse." + ".".join(p.parent.relative_to(REPO).parts)
               for top in LAYERS for p in (REPO / top).rglob("__init__.py") if "cpp" not in p.parts}
    # data-only folders of the model package (files, no __init__.py): each a package with its package-data
    data = {"latentfuse." + ".".join(d.relative_to(REPO).parts) for d in (REPO / "model").rglob("*")
            if d.is_dir() and "__pycache__" not in d.parts and not (d / "__init__.py").exists()
            and any(f.is_file() for f in d.iterdir())}
    assert set(config["packages"]) == on_disk | data
    assert set(config["package-data"]) >= data
    entry = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]["latentfuse"]
    assert entry == "latentfuse.runtime.cli:main"


def test_no_code_imports_a_bare_top_level_folder():
    """`from model.x import y` would only work from the repository root, and would load a second copy of
    the module beside `latentfuse.model.x`."""
    bare = [f"{path.relative_to(REPO)}:{line}: {name}"
            for top in PYTHON_DIRS for path in (REPO / top).rglob("*.py") if "cpp" not in path.parts or top == "tests"
            for line, name in _imported(path) if name.split(".")[0] in LAYERS]
    assert bare == []


def test_library_modules_import_only_their_layer_and_below():
    wrong = []
    for level, top in enumerate(LAYERS):
        for path, module in _package_modules(top):
            if path.name.endswith("cli.py"):  # the command line: the application layer, above every package
                continue
            for line, name in _imported(path):
                parts = name.split(".")
                if parts[0] == "latentfuse" and len(parts) > 1 and LAYERS.index(parts[1]) > level:
                    wrong.append(f"{module}:{line} imports {name}")
    assert wrong == []


def test_modules_import_each_other_without_circles():
    graph = {module: {name.removeprefix("latentfuse.") for _, name in _imported(path) if name.startswith("latentfuse.")}
             for top in LAYERS for path, module in _package_modules(top)}
    state: dict[str, int] = {}  # 1 on the current path, 2 done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path + [node, nxt]
            if nxt not in state and (cycle := visit(nxt, path + [node])):
                return cycle
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node, [])
            assert cycle is None, "import circle: " + " -> ".join(cycle[cycle.index(cycle[-1]):])


def test_only_the_namespace_is_importable_from_a_neutral_folder(tmp_path):
    """After `pip install`, from a folder that is not the repository: `latentfuse.*` imports, `model` does not
    (nor `export`, `runtime`, `calibration`, `bench`), and the command is there."""
    code = ("import importlib.util, sys\n"
            f"leaked = [n for n in {LAYERS!r} if importlib.util.find_spec(n) is not None]\n"
            "import latentfuse.model.components, latentfuse.runtime.pipeline, latentfuse.export.bundle\n"
            "import latentfuse.calibration.plan, latentfuse.bench.plan\n"
            "print(leaked)\n")
    env = {"PATH": str(Path(sys.executable).parent), "HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", f"importable at the top level: {result.stdout.strip()}"
    help_text = subprocess.run([str(Path(sys.executable).parent / "latentfuse"), "--help"], cwd=tmp_path, env=env,
                               capture_output=True, text=True, timeout=300)
    assert help_text.returncode == 0 and "fuse" in help_text.stdout
