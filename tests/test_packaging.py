"""The two dependency lists (pyproject.toml and environment.yml) agree, and the set-up files say what they should."""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10, which feclip supports: the tomli backport from the dev extra
    import tomli as tomllib

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _pyproject_requirements() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in ("book", "dev"):
        requirements += project["optional-dependencies"][extra]
    return {_name(r): r.replace(" ", "") for r in requirements}


def _environment_requirements() -> dict[str, str]:
    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in environment["dependencies"] if isinstance(d, dict) and "pip" in d)
    return {_name(r): r.replace(" ", "") for r in pip_section if not r.startswith("-e")}


def test_environment_yml_lists_the_same_requirements_as_pyproject() -> None:
    assert _environment_requirements() == _pyproject_requirements()


def test_required_dependencies_are_declared() -> None:
    names = set(_pyproject_requirements())
    wanted = {
        "torch", "torchvision", "open-clip-torch", "numpy", "scipy", "pillow", "scikit-learn", "matplotlib",
        "seaborn", "ipywidgets", "tqdm", "safetensors", "jupyter-book", "ipykernel", "pytest", "nbmake",
        "pyyaml", "tomli",
    }
    assert wanted <= names, wanted - names


# Imported but not declared, each for a reason: installed by a declared package, or optional.
_PROVIDED = {
    "huggingface-hub": "a dependency of open_clip_torch, read only to find its cache",
    "ipython": "optional (imported under try/except ImportError); installed with ipykernel",
    "pybtex": "installed with jupyter-book (sphinxcontrib-bibtex)",
}


def _third_party_imports(paths: list[Path]) -> dict[str, str]:
    """Distribution name -> one file importing it, for the absolute imports of ``paths``."""
    local = {path.stem for path in paths} | {"feclip", "common"}  # "common": benchmarks/common.py, on sys.path there
    distributions = packages_distributions()
    found = {}
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
            for module in modules:
                top = module.split(".")[0]
                if top in sys.stdlib_module_names or top in local or top == "tomli":  # tomli: the 3.10 fallback
                    continue
                for distribution in distributions.get(top, [top]):
                    found.setdefault(distribution.lower().replace("_", "-"), str(path.relative_to(ROOT)))
    return found


def test_every_imported_package_is_declared() -> None:
    paths = sorted((ROOT / "feclip").rglob("*.py")) + sorted((ROOT / "tests").glob("*.py"))
    declared = set(_pyproject_requirements())
    undeclared = {name: where for name, where in _third_party_imports(paths).items()
                  if name not in declared and name not in _PROVIDED}
    assert not undeclared, f"imported but not in pyproject.toml (and environment.yml): {undeclared}"


def test_the_library_imports_only_its_own_dependencies() -> None:
    """feclip/ needs nothing of the book extra (seaborn, ipywidgets live there for the notebooks only)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    allowed = {_name(r) for r in project["dependencies"] + project["optional-dependencies"]["export"]}
    imported = _third_party_imports(sorted((ROOT / "feclip").rglob("*.py")))
    extra = {name: where for name, where in imported.items() if name not in allowed and name not in _PROVIDED}
    assert not extra, f"the library imports packages that are not its dependencies: {extra}"


def test_python_3_10_is_really_supported() -> None:
    """requires-python says 3.10: every source file must parse with 3.10's grammar, and tomllib (3.11) has a fallback."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    floor = tuple(int(part) for part in project["requires-python"].removeprefix(">=").split("."))
    assert floor == (3, 10)
    for path in [*(ROOT / "feclip").rglob("*.py"), *(ROOT / "tests").glob("*.py"), *(ROOT / "benchmarks").glob("*.py")]:
        source = path.read_text(encoding="utf-8")
        try:
            ast.parse(source, feature_version=floor)
        except SyntaxError as error:
            pytest.fail(f"{path.relative_to(ROOT)} does not parse as Python {floor[0]}.{floor[1]}: {error}")
        if re.search(r"^\s*import tomllib", source, re.MULTILINE):
            fallback = re.search(r"^\s+import tomli as tomllib\s*$", source, re.MULTILINE)
            assert fallback, f"{path.relative_to(ROOT)} imports tomllib without the 3.10 fallback"
    tomli = _pyproject_requirements()["tomli"]
    assert "python_version<'3.11'" in tomli.replace('"', "'"), tomli  # only where tomllib is missing


def test_torch_is_not_pinned_to_an_exact_version() -> None:
    torch_requirement = _pyproject_requirements()["torch"]
    assert "==" not in torch_requirement and "<" not in torch_requirement, torch_requirement


def test_python_floor_and_console_script() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == ">=3.10"
    assert project["scripts"]["feclip"] == "feclip.cli:main"


def test_readme_shows_the_two_commands_first_and_ci_runs_make_test() -> None:
    readme = (ROOT / "README.md").read_text()
    first_block = readme.split("```bash", 1)[1].split("```", 1)[0]
    assert "make book" in first_block and "make test" in first_block
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci
    assert "Apache License" in (ROOT / "LICENSE").read_text()
