"""The compiled-or-twin switch: how ATRACE_PUREPYTHON is read, what each façade picks, and stubs,
compiled modules and twins that declare one API."""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import types
from pathlib import Path
from typing import Any

import pytest

import atrace
from _select import selected_in_subprocess
from atrace._speedups import FORCE_TWINS, PAIRS, implementations, load
from atrace.config import purepython
from atrace.errors import ConfigError

PACKAGE = Path(atrace.__file__).parent
FACADES = sorted(PAIRS)


def source(module: str, suffix: str) -> Path:
    """The file of a module of atrace by its dotted name (``.pyi``, ``.pyx`` or ``.py``)."""
    return PACKAGE.joinpath(*module.split(".")[1:]).with_suffix(suffix)


def compiled_module(name: str) -> types.ModuleType:
    """A compiled module; one that will not import fails the test with what to do about it."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        pytest.fail(
            f"{name} does not import ({exc}); build it with "
            "`python setup.py build_ext --inplace` or run with ATRACE_PUREPYTHON=1"
        )


# ---- the API a stub declares, and the API a module has ------------------------------------------


class Text(str):
    """A default value as the stub's source spells it, which ``repr`` leaves as it is."""

    def __repr__(self) -> str:
        return str(self)


def stub_signature(node: ast.FunctionDef, method: bool) -> inspect.Signature:
    """A stub function's signature, annotations and defaults kept as their source text."""
    P = inspect.Parameter
    args = node.args

    def param(arg: ast.arg, kind: Any, default: ast.expr | None = None) -> inspect.Parameter:
        return P(
            arg.arg,
            kind,
            default=P.empty if default is None else Text(ast.unparse(default)),
            annotation=P.empty if arg.annotation is None else ast.unparse(arg.annotation),
        )

    positional = [*args.posonlyargs, *args.args]
    defaults = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    params = [
        param(a, P.POSITIONAL_ONLY if a in args.posonlyargs else P.POSITIONAL_OR_KEYWORD, d)
        for a, d in zip(positional, defaults, strict=True)
    ]
    if args.vararg:
        params.append(param(args.vararg, P.VAR_POSITIONAL))
    keyword_only = zip(args.kwonlyargs, args.kw_defaults, strict=True)
    params += [param(a, P.KEYWORD_ONLY, d) for a, d in keyword_only]
    if args.kwarg:
        params.append(param(args.kwarg, P.VAR_KEYWORD))
    returns = inspect.Signature.empty if node.returns is None else ast.unparse(node.returns)
    return inspect.Signature(params[1:] if method else params, return_annotation=returns)


def runtime_signature(obj: Any, method: bool) -> inspect.Signature | None:
    """What Python knows of a callable's signature; None when it cannot tell."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return None  # a builtin without a text signature
    params = list(sig.parameters.values())[1:] if method else list(sig.parameters.values())
    if [p.kind.name for p in params] == ["VAR_POSITIONAL", "VAR_KEYWORD"]:
        return None  # a compiled class's slot wrapper, e.g. __init__: (*args, **kwargs)
    return sig.replace(parameters=params)


def bare(sig: inspect.Signature) -> inspect.Signature:
    """The signature without annotations (a compiled function has none to compare)."""
    return sig.replace(
        parameters=[p.replace(annotation=p.empty) for p in sig.parameters.values()],
        return_annotation=sig.empty,
    )


def differences(stub: Path, module: types.ModuleType, annotated: bool) -> dict[str, str]:
    """Where ``module`` departs from what the stub declares, by qualified name."""
    found: dict[str, str] = {}

    def compare(where: str, node: ast.FunctionDef, obj: Any, method: bool) -> None:
        want = stub_signature(node, method)
        got = runtime_signature(obj, method)
        if got is None:
            return
        if not annotated or not inspect.isfunction(inspect.unwrap(obj)):
            want, got = bare(want), bare(got)
        if str(got) != str(want):
            found[where] = f"{got} where the stub says {want}"

    tree = ast.parse(stub.read_text())
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    # ``info = _level``: a public name the stub declares with a private function's signature.
    aliases = {
        node.targets[0].id: functions[node.value.id]
        for node in tree.body
        if isinstance(node, ast.Assign)
        and isinstance(node.targets[0], ast.Name)
        and isinstance(node.value, ast.Name)
        and node.value.id in functions
    }
    for name, function in [*functions.items(), *aliases.items()]:
        if name.startswith("_"):
            continue  # a helper of the stub itself
        where = f"{module.__name__}.{name}"
        obj = getattr(module, name, None)
        if not callable(obj):
            found[where] = "missing, or not a function"
        else:
            compare(where, function, obj, method=False)
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            continue
        if isinstance(node, ast.ClassDef):
            cls = getattr(module, node.name, None)
            if not isinstance(cls, type):
                found[f"{module.__name__}.{node.name}"] = "missing, or not a class"
                continue
            declared = set()
            for item in node.body:
                if isinstance(item, ast.FunctionDef):
                    name = item.name
                elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    name = item.target.id
                else:
                    continue
                declared.add(name)
                where = f"{module.__name__}.{node.name}.{name}"
                is_data = isinstance(item, ast.AnnAssign) or bool(item.decorator_list)
                if not hasattr(cls, name):
                    found[where] = "missing"
                elif is_data != (not callable(getattr(cls, name))):
                    found[where] = "an attribute in one, a method in the other"
                elif isinstance(item, ast.FunctionDef) and not is_data:
                    compare(where, item, getattr(cls, name), method=True)
            for name in {n for n in dir(cls) if not n.startswith("_")} - declared:
                found[f"{module.__name__}.{node.name}.{name}"] = "not declared in the stub"
        elif (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and not hasattr(module, node.target.id)
        ):
            found[f"{module.__name__}.{node.target.id}"] = "missing"
    return found


def stub_all(stub: Path) -> tuple[str, ...]:
    """The ``__all__`` a stub declares."""
    for node in ast.parse(stub.read_text()).body:
        if isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == "__all__":
            value: tuple[str, ...] = ast.literal_eval(node.value)
            return value
    raise AssertionError(f"{stub} declares no __all__")


def imported_modules(path: Path, module: str) -> set[str]:
    """Every module a source file imports, anywhere in it, by absolute dotted name.

    For Cython, only the lines that Python's parser reads (imports, not cimports) are kept.
    """
    lines = path.read_text().splitlines()
    if path.suffix == ".pyx":
        text, kept = "\n".join(lines), []
        for match in re.finditer(r"^[ \t]*((?:from|import) [^\n(]*(?:\([^)]*\))?)", text, re.M):
            if " cimport " not in match.group(1) and not match.group(1).startswith("cimport"):
                kept.append(match.group(1))
        tree = ast.parse("\n".join(kept))
    else:
        tree = ast.parse("\n".join(lines))
    package = module.rpartition(".")[0].split(".")
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1]) if node.level else ""
            origin = ".".join(p for p in (base, node.module or "") if p)
            found.add(origin)
            found |= {f"{origin}.{alias.name}" for alias in node.names}
    return found


# ---- tests ----------------------------------------------------------------------------------


class TestSwitch:
    @pytest.mark.parametrize("value", ["1", "true", "TRUE", "yes", "On", " 1 "])
    def test_true_values_force_the_twins(self, value: str) -> None:
        """1, true, yes and on, in any case, force the twins."""
        assert purepython({"ATRACE_PUREPYTHON": value}) is True

    @pytest.mark.parametrize("value", ["", "0", "false", "No", "OFF", " "])
    def test_false_values_leave_the_compiled_modules(self, value: str) -> None:
        """0, false, no, off and empty leave the compiled modules in charge."""
        assert purepython({"ATRACE_PUREPYTHON": value}) is False

    def test_unset_leaves_the_compiled_modules(self) -> None:
        """Without the variable, the compiled modules run."""
        assert purepython({}) is False

    @pytest.mark.parametrize("value", ["2", "maybe", "python", "1.0"])
    def test_any_other_value_is_a_config_error(self, value: str) -> None:
        """An unknown value is refused with an error naming the variable and the value."""
        with pytest.raises(ConfigError, match=rf"^ATRACE_PUREPYTHON='{re.escape(value)}': ") as e:
            purepython({"ATRACE_PUREPYTHON": value})
        assert e.value.field == "ATRACE_PUREPYTHON" and e.value.value == value

    def test_reads_the_process_environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """With no mapping given, the process environment is read."""
        monkeypatch.setenv("ATRACE_PUREPYTHON", "yes")
        assert purepython() is True
        monkeypatch.setenv("ATRACE_PUREPYTHON", "off")
        assert purepython() is False


IMPLEMENTATIONS = "from atrace._speedups import implementations\nprint(implementations())"
ALL_TWINS = repr(dict.fromkeys(PAIRS, "python"))
ALL_COMPILED = repr(dict.fromkeys(PAIRS, "cython"))


class TestSelection:
    @pytest.mark.parametrize("value", ["1", "true"])
    def test_true_value_forces_every_twin(self, value: str) -> None:
        """A fresh interpreter with a true value runs every twin."""
        assert selected_in_subprocess(IMPLEMENTATIONS, value) == ALL_TWINS

    @pytest.mark.skipif(FORCE_TWINS, reason="ATRACE_PUREPYTHON runs need not build the modules")
    @pytest.mark.parametrize("value", [None, "", "0"])
    def test_compiled_modules_are_the_default(self, value: str | None) -> None:
        """Unset, empty or "0", the variable leaves every compiled module in charge."""
        assert selected_in_subprocess(IMPLEMENTATIONS, value) == ALL_COMPILED

    def test_bad_value_stops_import_with_a_clear_error(self) -> None:
        """An unknown value makes importing atrace fail with a ConfigError that says why."""
        code = "try:\n import atrace\nexcept Exception as exc:\n print(type(exc).__name__, exc)"
        out = selected_in_subprocess(code, "maybe")
        assert out.startswith("ConfigError ATRACE_PUREPYTHON='maybe': expected 1, true"), out

    @pytest.mark.parametrize("facade", FACADES)
    def test_unbuilt_compiled_module_falls_back_to_the_twin(self, facade: str) -> None:
        """A compiled module that cannot be imported leaves its twin running behind the façade."""
        prelude = f"import sys; sys.modules[{PAIRS[facade][0]!r}] = None"
        code = f"import {facade} as f\nprint(f.IMPLEMENTATION)"
        assert selected_in_subprocess(code, None, prelude) == "python"

    def test_load_falls_back_to_the_twin(self) -> None:
        """load() gives the twin, and says so, when the compiled module does not exist."""
        module, implementation = load("atrace._no_such_module", "atrace._ring_py")
        assert (module.__name__, implementation) == ("atrace._ring_py", "python")

    @pytest.mark.skipif(FORCE_TWINS, reason="ATRACE_PUREPYTHON runs need not build the modules")
    def test_load_prefers_the_compiled_module(self) -> None:
        """load() gives the compiled module when it imports and nothing forces the twin."""
        module, implementation = load("atrace._ring", "atrace._ring_py")
        assert (module.__name__, implementation) == ("atrace._ring", "cython")

    def test_implementations_names_every_facade(self) -> None:
        """implementations() reports each façade's IMPLEMENTATION, forced twins when set."""
        found = implementations()
        assert list(found) == list(PAIRS)
        assert set(found.values()) <= {"cython", "python"}
        if FORCE_TWINS:
            assert set(found.values()) == {"python"}


@pytest.mark.parametrize("facade", FACADES)
class TestPairs:
    def test_facade_exports_the_module_it_names(self, facade: str) -> None:
        """The façade's __all__ is a tuple with IMPLEMENTATION, and its names are that module's."""
        module = importlib.import_module(facade)
        compiled, twin = PAIRS[facade]
        running = importlib.import_module(compiled if module.IMPLEMENTATION == "cython" else twin)
        assert isinstance(module.__all__, tuple) and "IMPLEMENTATION" in module.__all__
        assert module.IMPLEMENTATION in ("cython", "python")
        shared = set(module.__all__) & set(stub_all(source(compiled, ".pyi")))
        assert shared
        for name in shared:
            assert getattr(module, name) is getattr(running, name), name
        defined = {
            name
            for name, value in vars(module).items()
            if not name.startswith("_")
            and getattr(value, "__module__", None) in (facade, running.__name__)
        }
        assert defined <= set(module.__all__)

    def test_stub_compiled_module_and_twin_declare_one_api(self, facade: str) -> None:
        """The stub, the compiled module and the twin have the same names and signatures."""
        compiled_name, twin_name = PAIRS[facade]
        stub = source(compiled_name, ".pyi")
        twin = importlib.import_module(twin_name)
        assert tuple(twin.__all__) == stub_all(stub)
        found = differences(stub, twin, annotated=True)
        checked = [twin_name]
        if not FORCE_TWINS:
            compiled = compiled_module(compiled_name)
            assert tuple(compiled.__all__) == stub_all(stub)
            found |= differences(stub, compiled, annotated=False)
            checked.append(compiled_name)
        assert found == {}, found

    def test_neither_module_imports_the_other_or_the_facade(self, facade: str) -> None:
        """The compiled module and the twin import neither each other nor their façade."""
        compiled, twin = PAIRS[facade]
        assert imported_modules(source(compiled, ".pyx"), compiled).isdisjoint({twin, facade})
        assert imported_modules(source(twin, ".py"), twin).isdisjoint({compiled, facade})
