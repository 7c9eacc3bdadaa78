"""The two layers: the pure core imports only jax, optax, numpy, chex and itself; the shell calls
into it, never the reverse; no module imports itself back through others or is shadowed by a
public name."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import jaxdigits as jd

PACKAGE = Path(jd.__file__).parent
CORE_MAY_IMPORT = {"jax", "jaxlib", "optax", "numpy", "chex"}


def module_names() -> list[str]:
    """``model``-style names of the shell's modules and ``core.model``-style names of the core's."""
    return sorted(".".join(p.relative_to(PACKAGE).with_suffix("").parts) for p in PACKAGE.rglob("*.py")
                  if p.stem not in ("__init__", "__main__"))


def imports_of(name: str) -> set[str]:
    """Every module ``name`` imports, at the top or inside a function, as absolute names."""
    tree = ast.parse((PACKAGE / (name.replace(".", "/") + ".py")).read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            if node.module in ("jaxdigits", "jaxdigits.core"):
                found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def test_the_core_imports_nothing_of_the_application_and_no_third_party_library_beyond_jax_optax_numpy_chex():
    stdlib = set(sys.stdlib_module_names)
    for name in (n for n in module_names() if n.startswith("core.")):
        for imported in imports_of(name):
            top = imported.split(".")[0]
            if top == "jaxdigits":
                assert imported == "jaxdigits.core" or imported.startswith("jaxdigits.core."), f"core module {name} imports the application's {imported}"
            else:
                assert top in stdlib or top in CORE_MAY_IMPORT, f"core module {name} imports {imported}"


def test_the_core_touches_no_files_printing_sockets_or_environment():
    forbidden = {"os", "sys", "socket", "pathlib", "subprocess", "signal", "threading", "tempfile", "shutil"}
    for name in (n for n in module_names() if n.startswith("core.")):
        tree = ast.parse((PACKAGE / (name.replace(".", "/") + ".py")).read_text())
        calls = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
        assert not (calls & {"print", "open", "input"}), f"core module {name} calls {calls & {'print', 'open', 'input'}}"
        assert not {i.split(".")[0] for i in imports_of(name)} & forbidden, f"core module {name} imports {forbidden}"


def test_importing_the_core_loads_the_core_alone():
    code = ("import sys, jaxdigits.core.epoch, jaxdigits.core.group, jaxdigits.core.metrics, jaxdigits.core.programs;"
            "print(sorted(m for m in sys.modules if m.startswith('jaxdigits') or m.split('.')[0] in "
            "('tqdm', 'matplotlib', 'safetensors', 'PIL', 'tensorflow_datasets')))")
    loaded = eval(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert loaded and all(m == "jaxdigits" or m.startswith("jaxdigits.core") for m in loaded), loaded


def test_no_module_imports_itself_back_through_others():
    modules = module_names()
    imports = {}
    for name in modules:
        targets = {i.removeprefix("jaxdigits.") for i in imports_of(name) if i.startswith("jaxdigits.")}
        imports[name] = targets & set(modules)

    def reaches(start, target, seen=()):
        return any(m == target or (m not in seen and reaches(m, target, (*seen, m))) for m in imports[start])

    assert [m for m in modules if reaches(m, m)] == []


def test_every_public_name_is_exported_lazily_from_its_module():
    for name in jd.__all__:
        assert getattr(jd, name) is not None


def test_no_module_is_shadowed_and_the_modules_import_each_other_without_cycles():
    package = Path(jd.__file__).parent
    modules = sorted(p.stem for p in package.glob("*.py") if p.stem not in ("__init__", "__main__"))
    for name in modules:
        module = importlib.import_module(f"jaxdigits.{name}")
        assert getattr(jd, name, module) is module, f"jaxdigits.{name} is shadowed"
    imports = {}
    for name in modules:
        tree = ast.parse((package / f"{name}.py").read_text())
        found = {n.module.split(".")[1] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module
                 and n.module.startswith("jaxdigits.")}
        found |= {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module == "jaxdigits" for a in n.names}
        imports[name] = found & set(modules)

    def reaches(start, target, seen=()):
        return any(m == target or (m not in seen and reaches(m, target, (*seen, m))) for m in imports[start])

    assert [m for m in modules if reaches(m, m)] == []


def test_no_function_in_the_package_is_over_60_lines():
    long = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 60:
                long.append(f"{path.relative_to(PACKAGE)}:{node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert long == []
