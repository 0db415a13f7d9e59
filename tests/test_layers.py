"""Imports run one way: a module imports only from its own layer or the layers below it, and no
pathfm module is imported inside a function (torch, an optional extra, is the one lazy import).

The layers, bottom to top, are listed here once; README's "Layout" table names the same folders.
"""

import ast
from pathlib import Path

import pytest
from testutil import REPO

LAYERS = (
    # basics: errors, schedules, optimiser transforms, pytree names, atomic files, device layout
    ("pathfm", "pathfm.errors", "pathfm.schedules", "pathfm.adamw", "pathfm.pytree",
     "pathfm.atomic", "pathfm.parallel"),
    ("pathfm.models",),  # Flax modules and their array ops
    ("pathfm.data",),  # host input: slides, index, sampler, crops, masks; device colour ops
    ("pathfm.ssl",),  # methods and losses
    ("pathfm.interop",),  # timm names, weights in and out
    ("pathfm.evaluation",),  # protocols as a library: RankMe/ODCorr, kNN, probes, MIL, data sets
    ("pathfm.train",),  # state, step, loop, checkpoints
    # what users start: the config and its check, the runs, main, report, preview, plots and
    # the tile-store build
    ("pathfm.config", "pathfm.runs", "pathfm.main", "pathfm.report", "pathfm.preview",
     "pathfm.visualization", "pathfm.build_tile_store"),
)  # fmt: skip
SOURCES = sorted((REPO / "pathfm").rglob("*.py"))


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")


def layer_of(module: str) -> int:
    """The layer of a pathfm module: the one whose longest listed prefix matches."""
    matches = [
        (len(prefix), rank)
        for rank, prefixes in enumerate(LAYERS)
        for prefix in prefixes
        if module == prefix or module.startswith(prefix + ".")
    ]
    assert matches, f"{module} is in no layer: add it to LAYERS"
    return max(matches)[1]


def pathfm_imports(tree: ast.AST) -> list[tuple[ast.stmt, str]]:
    """(statement, imported pathfm module) for every import of a pathfm module in `tree`."""
    found = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.module.split(".")[0] == "pathfm"
        ):
            if node.module == "pathfm":  # `from pathfm import parallel`
                found += [(node, f"pathfm.{alias.name}") for alias in node.names]
            else:
                found.append((node, node.module))
        elif isinstance(node, ast.Import):
            found += [(node, a.name) for a in node.names if a.name.split(".")[0] == "pathfm"]
    return found


def _resolve(name: str) -> str:
    """`pathfm.x.y` as a module: `from pathfm.parallel import distributed` names a module, while
    `from pathfm import __version__` names an attribute of the package."""
    parts = name.split(".")
    while parts and not (
        (REPO.joinpath(*parts).with_suffix(".py")).exists() or REPO.joinpath(*parts).is_dir()
    ):
        parts.pop()
    return ".".join(parts)


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_no_module_imports_from_a_layer_above_it(path):
    module = module_name(path)
    upward = [
        f"line {node.lineno}: {target}"
        for node, target in pathfm_imports(ast.parse(path.read_text()))
        if layer_of(_resolve(target)) > layer_of(module)
    ]
    assert not upward, f"{module} imports from a layer above it: {upward}"


def test_no_pathfm_module_is_imported_inside_a_function():
    local = []
    for path in SOURCES:
        tree = ast.parse(path.read_text())
        for function in ast.walk(tree):
            if isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                local += [
                    f"{module_name(path)}:{node.lineno} {target}"
                    for node, target in pathfm_imports(function)
                ]
    assert not local


def test_the_layer_check_sees_an_upward_import(tmp_path):
    """The check itself: a data module importing the training loop is caught."""
    tree = ast.parse("from pathfm.train.loop import train\n")
    ((_, target),) = pathfm_imports(tree)
    assert layer_of(_resolve(target)) > layer_of("pathfm.data.sampler")


def test_the_readme_layout_names_every_package():
    readme = (REPO / "README.md").read_text()
    layout = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    for package in sorted(p.parent.name for p in (REPO / "pathfm").glob("*/__init__.py")):
        assert f"`pathfm/{package}/`" in layout, f"README's Layout lacks pathfm/{package}/"
