"""The package's shape: no import cycles, settings read in one place, one data model."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import atrace
from atrace.config import ENV

PACKAGE = Path(atrace.__file__).parent


def module_name(path: Path) -> str:
    parts = ("atrace", *path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def sources() -> dict[str, Path]:
    """Every module of the package, Python and Cython, by dotted name."""
    found = {}
    for path in sorted(PACKAGE.rglob("*")):
        if path.suffix in (".py", ".pyx") and "__pycache__" not in path.parts:
            found[module_name(path)] = path
    return found


def parse(path: Path) -> ast.Module:
    """A Python module's tree; for Cython, the lines Python's parser understands (its imports)."""
    text = path.read_text()
    if path.suffix == ".py":
        return ast.parse(text)
    kept: list[str] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.split("#", 1)[0].strip()
        if pending:
            pending += " " + stripped
        elif stripped.startswith(("import ", "from ")) and " cimport " not in stripped:
            pending = stripped
        else:
            continue
        if pending.count("(") == pending.count(")"):
            kept.append(pending)
            pending = ""
    return ast.parse("\n".join(kept))


def imports(name: str, path: Path, known: set[str]) -> Iterator[str]:
    """The atrace modules ``name`` imports anywhere: at the top, inside functions, under
    ``TYPE_CHECKING``."""
    package = name if path.stem == "__init__" else name.rpartition(".")[0]
    for node in ast.walk(parse(path)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                origin = ".".join([*base, node.module] if node.module else base)
            else:
                origin = node.module or ""
            # ``from package import module`` depends on the module; ``from module import name``
            # on the module that defines the name.
            targets = [
                f"{origin}.{alias.name}" if f"{origin}.{alias.name}" in known else origin
                for alias in node.names
            ]
        else:
            continue
        for target in targets:
            # The deepest known module the dotted name reaches (an attribute import names its
            # module; importing a package's submodule names the submodule).
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                yield target


def import_graph() -> dict[str, set[str]]:
    found = sources()
    known = set(found)
    return {name: set(imports(name, path, known)) for name, path in found.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


class TestImports:
    def test_the_walk_sees_every_kind_of_import(self, tmp_path: Path) -> None:
        """Top-level, in-function, TYPE_CHECKING and Cython imports are all edges."""
        path = tmp_path / "mod.py"
        path.write_text(
            "from . import top\n"
            "TYPE_CHECKING = False\n"
            "if TYPE_CHECKING:\n"
            "    from .typed import Name\n"
            "def f():\n"
            "    from ..other import thing\n"
            "    import atrace.absolute\n"
        )
        known = {"atrace.pkg.top", "atrace.pkg.typed", "atrace.other", "atrace.absolute"}
        found = set(imports("atrace.pkg.mod", path, known))
        assert found == known
        pyx = tmp_path / "mod.pyx"
        pyx.write_text("from libc.stdint cimport int64_t\nfrom .top import (\n    a,\n    b,\n)\n")
        assert set(imports("atrace.pkg.mod", pyx, known)) == {"atrace.pkg.top"}
        assert any(t.startswith("atrace.") for t in import_graph()["atrace._emit._hot"])

    def test_finds_a_cycle_when_there_is_one(self) -> None:
        """The cycle finder reports a two-module loop and a three-module loop, and no false one."""
        graph = {"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"e"}, "e": {"c"}, "f": {"a"}}
        assert cycles(graph) == [["a", "b"], ["c", "d", "e"]]
        assert cycles({"a": {"b"}, "b": set()}) == []

    def test_no_import_cycle(self) -> None:
        """No module of atrace imports, directly or through others, a module that imports it."""
        found = cycles(import_graph())
        assert found == [], "\n".join(" <-> ".join(c) for c in found)


# ---- settings -------------------------------------------------------------------------------

# A variable's name as atrace spells them; a trailing ``_`` or ``*`` (a family, as in
# ``OTEL_EXPORTER_OTLP_*``) is not a name.
VARIABLE = re.compile(r"\b(?:ATRACE|OTEL)_[A-Z0-9_]*[A-Z0-9](?![A-Z0-9_])")
ENVIRON_READERS = frozenset({"environ", "environb", "getenv", "getenvb"})
CYTHON_READ = re.compile(
    r"\bos\.(?:environb?|getenvb?)\b|\bfrom\s+os\s+cimport\b|\bfrom\s+os\s+import\b"
)


def environment_reads(text: str, *, cython: bool = False) -> list[int]:
    """The lines of a module that read the process environment: ``os.environ``, ``os.getenv``
    and their bytes forms, under any alias of ``os``, or imported from it by name."""
    if cython:
        return [n for n, line in enumerate(text.splitlines(), 1) if CYTHON_READ.search(line)]
    tree = ast.parse(text)
    aliases = {"os"} | {
        alias.asname
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
        if alias.name == "os" and alias.asname
    }
    lines = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and node.attr in ENVIRON_READERS
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
        ) or (
            isinstance(node, ast.ImportFrom)
            and node.module == "os"
            and any(alias.name in ENVIRON_READERS for alias in node.names)
        ):
            lines.add(node.lineno)
    return sorted(lines)


def variables_used(tree: ast.Module) -> tuple[set[str], list[re.Pattern[str]]]:
    """The variable names a module uses as whole strings, and the f-strings it builds names with
    (each placeholder standing for one upper-case word). Docstrings, other bare strings and the
    ENV table itself are left out: naming a variable there is not reading it."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            skipped.add(id(node.value))
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == "ENV" for t in targets):
                skipped.update(id(sub) for sub in ast.walk(node))
    names: set[str] = set()
    templates: list[re.Pattern[str]] = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if VARIABLE.fullmatch(node.value):
                names.add(node.value)
        elif isinstance(node, ast.JoinedStr) and node.values:
            first = node.values[0]
            if isinstance(first, ast.Constant) and str(first.value).startswith(
                ("ATRACE_", "OTEL_")
            ):
                templates.append(
                    re.compile(
                        "".join(
                            re.escape(str(part.value))
                            if isinstance(part, ast.Constant)
                            else "[A-Z]+"
                            for part in node.values
                        )
                    )
                )
    return names, templates


def private_names_imported(name: str, path: Path, known: set[str]) -> list[str]:
    """The underscore names ``name`` imports from another atrace module (modules not counted:
    ``from . import _query`` names a private module, which is how a public package keeps one)."""
    package = name if path.stem == "__init__" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(parse(path)):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            base = package.split(".")
            base = base[: len(base) - node.level + 1]
            origin = ".".join([*base, node.module] if node.module else base)
        else:
            origin = node.module or ""
        if not origin.startswith("atrace"):
            continue
        for alias in node.names:
            private = alias.name.startswith("_") and not alias.name.startswith("__")
            if private and f"{origin}.{alias.name}" not in known:
                found.append(f"{origin}.{alias.name}")
    return found


class TestNames:
    def test_finds_a_private_name_import(self, tmp_path: Path) -> None:
        """The scan reports ``from .x import _y`` and not ``from . import _module``."""
        path = tmp_path / "mod.py"
        path.write_text("from .x import _y, z\nfrom . import _module\nfrom .. import __version__\n")
        known = {"atrace.pkg._module", "atrace.pkg.x"}
        assert private_names_imported("atrace.pkg.mod", path, known) == ["atrace.pkg.x._y"]

    def test_no_private_name_crosses_a_module_boundary(self) -> None:
        """No module imports another module's underscore names: what is shared has a plain
        name (inside a private package, names need no underscore)."""
        found = sources()
        known = set(found)
        crossing = {
            name: imported
            for name, path in found.items()
            if (imported := private_names_imported(name, path, known))
        }
        assert crossing == {}


class TestSettings:
    def test_the_checks_see_every_way_of_reading(self) -> None:
        """The scan finds os.environ, os.getenv, an aliased os and names imported from os, and
        tells a name in use from one in a docstring, the ENV table or an f-string family."""
        code = (
            "import os\n"
            "import os as system\n"
            "from os import getenv\n"
            "a = os.environ.get('ATRACE_A')\n"
            "b = system.getenv('ATRACE_B')\n"
            "c = os.environ['ATRACE_C']\n"
            "d = os.path.join('x')\n"
        )
        assert environment_reads(code) == [3, 4, 5, 6]
        assert environment_reads("x = os.environ.get('A')\ncdef int y = 0\n", cython=True) == [1]
        tree = ast.parse(
            '"""Reads ATRACE_DOC."""\n'
            "ENV = {'ATRACE_LISTED': 'listed'}\n"
            "x = read('ATRACE_USED')\n"
            "y = read(f'OTEL_FAMILY_{part}')\n"
        )
        names, templates = variables_used(tree)
        assert names == {"ATRACE_USED"}
        assert [t.pattern for t in templates] == ["OTEL_FAMILY_[A-Z]+"]

    def test_only_config_reads_the_environment(self) -> None:
        """No module but atrace.config reads os.environ or os.getenv; the rest ask config.env()."""
        readers = {}
        for name, path in sources().items():
            lines = environment_reads(path.read_text(), cython=path.suffix == ".pyx")
            if lines:
                readers[name] = lines
        assert readers.pop("atrace.config", None), "atrace.config should read the environment"
        assert readers == {}

    def test_every_variable_in_env_is_read(self) -> None:
        """Each name in config.ENV is used outside the table, whole or built by an f-string."""
        names: set[str] = set()
        templates: list[re.Pattern[str]] = []
        for path in sources().values():
            if path.suffix == ".py":
                found, built = variables_used(ast.parse(path.read_text()))
                names |= found
                templates += built
        unread = {n for n in ENV if n not in names and not any(t.fullmatch(n) for t in templates)}
        assert unread == set()

    def test_every_variable_named_is_in_env(self) -> None:
        """Every ATRACE_* or OTEL_* name written anywhere in the package is listed in config.ENV."""
        named: dict[str, set[str]] = {}
        for module, path in sources().items():
            for match in VARIABLE.finditer(path.read_text()):
                named.setdefault(match.group(), set()).add(module)
        assert "ATRACE_PUREPYTHON" in named  # the scan sees them at all
        assert {n: m for n, m in named.items() if n not in ENV} == {}
