"""Imports flow one way: data -> modeling -> evaluation -> engine -> tools / launch / projects.

Every import of every module in unidet2 is read from its source (module level and inside functions alike), so a
circle hidden in a function body fails here too.
"""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LAYERS = ["unidet2.data", "unidet2.modeling", "unidet2.evaluation", "unidet2.engine"]
TOP = ["launch", "projects", "tools", "benchmarks"]


def _layer(module: str) -> int | None:
    for index, prefix in enumerate(LAYERS):
        if module == prefix or module.startswith(prefix + "."):
            return index
    return None


def _imports(path: Path, package: str) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the module's package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.append((node.lineno, name))
    return found


def test_library_layers_import_only_downwards():
    violations = []
    for path in sorted((REPO / "unidet2").rglob("*.py")):
        relative = path.relative_to(REPO).with_suffix("")
        module = ".".join(relative.parts)
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        own = _layer(module)
        for lineno, imported in _imports(path, package.removesuffix(".__init__")):
            if any(imported == top or imported.startswith(top + ".") for top in TOP):
                violations.append(f"{relative}.py:{lineno} imports {imported} (the library never imports its users)")
            target = _layer(imported)
            if own is not None and target is not None and target > own:
                violations.append(f"{relative}.py:{lineno} ({LAYERS[own]}) imports {imported} ({LAYERS[target]})")
    assert not violations, "\n".join(violations)


def test_the_checker_sees_an_upward_import_inside_a_function(tmp_path):
    source = tmp_path / "mod.py"
    source.write_text("def f():\n    from unidet2.engine import do_test\n    from . import sibling\n")
    imports = _imports(source, "unidet2.data")
    assert imports == [(2, "unidet2.engine"), (3, "unidet2.data")]
    assert _layer("unidet2.engine") > _layer("unidet2.data")
