"""Imports flow one way: data -> modeling -> evaluation -> engine -> tools / launch / projects.

Every import of every module in unidet2 is read from its source (module level and inside functions alike), so a
circle hidden in a function body fails here too. The one exception is a module's command-line entry point (a
``main``/``cli`` function of a module run as ``python -m``, e.g. ``unidet2.data.check``): it sits in the tools
layer and may read configs with the engine, as ``tools/*.py`` do; nothing in the library calls it.
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


ENTRY_POINTS = ("main", "cli")


def _is_script(tree: ast.Module) -> bool:
    """The module has an ``if __name__ == "__main__":`` block."""
    return any(isinstance(node, ast.If) and "__main__" in ast.unparse(node.test) for node in tree.body)


def _imports(path: Path, package: str) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    skipped: set[int] = set()
    if _is_script(tree):
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name in ENTRY_POINTS:
                skipped.update(id(child) for child in ast.walk(node))
    found = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
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
    # a script's entry point may read configs with the engine; the same import elsewhere in it may not
    source.write_text("def main():\n    from unidet2.engine import load_config\n\n\ndef helper():\n"
                      "    from unidet2.engine import do_test\n\n\nif __name__ == '__main__':\n    main()\n")
    assert _imports(source, "unidet2.data") == [(6, "unidet2.engine")]
