"""The two dependency lists (pyproject.toml and environment.yml) agree, and the set-up files say what they should."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

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
    }
    assert wanted <= names, wanted - names


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
