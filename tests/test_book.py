"""The book's structure: table of contents, pages and notebooks agree, and the book builds without warnings.

The full build (``make book``) executes every notebook; here the build runs with execution off,
so a broken table of contents, reference or directive fails in seconds.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _toc_files() -> list[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in toc["parts"]:
        assert part.get("caption"), f"every part needs a caption: {part}"
        files += [chapter["file"] for chapter in part["chapters"]]
    return files


def test_toc_is_jb_book_with_the_expected_parts() -> None:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    assert toc["format"] == "jb-book"
    captions = [part["caption"] for part in toc["parts"]]
    for wanted in ("CLIP", "WinCLIP", "FE-CLIP", "Practice"):
        assert wanted in captions


def test_every_toc_entry_exists_and_every_notebook_is_in_the_toc() -> None:
    files = _toc_files()
    for entry in files:
        candidates = [ROOT / f"{entry}{suffix}" for suffix in (".md", ".ipynb")]
        assert any(c.is_file() for c in candidates), f"{entry} in _toc.yml has no .md or .ipynb file"
    listed = {entry for entry in files if entry.startswith("notebooks/")}
    assert {f"notebooks/{nb.stem}" for nb in NOTEBOOKS} == listed


def test_config_executes_with_cache_and_a_timeout() -> None:
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert config["execute"]["execute_notebooks"] == "cache"
    assert config["execute"]["timeout"] > 0
    assert config["launch_buttons"]["colab_url"].startswith("https://colab.research.google.com")
    assert "dollarmath" in config["parse"]["myst_enable_extensions"]


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_notebooks_are_committed_without_outputs(notebook: Path) -> None:
    cells = json.loads(notebook.read_text())["cells"]
    for index, cell in enumerate(cells):
        if cell["cell_type"] == "code":
            assert not cell.get("outputs"), f"{notebook.name} cell {index} has outputs"
            assert cell.get("execution_count") is None, f"{notebook.name} cell {index} has an execution count"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_notebooks_follow_the_chapter_shape(notebook: Path) -> None:
    cells = json.loads(notebook.read_text())["cells"]
    text = "\n".join("".join(c["source"]) for c in cells)
    code = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
    assert "colab.research.google.com" in text, f"{notebook.name}: no Colab badge"
    assert "FECLIP_PROFILE" in code[1] or "FECLIP_PROFILE" in code[0] or "resolve_profile" in code[1], (
        f"{notebook.name}: the parameters cell must set PROFILE from FECLIP_PROFILE"
    )
    for heading in ("## Summary", "## Exercises"):
        assert heading in text, f"{notebook.name}: missing '{heading}'"
    assert "import feclip" in text or "from feclip" in text
    assert "assert " in "\n".join(code), f"{notebook.name}: asserts nothing"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_notebooks_use_no_live_interact(notebook: Path) -> None:
    """``widgets.interact`` can stall an unattended kernel run for minutes (jupyter/nbclient#312): use interact_manual."""
    code = "\n".join("".join(c["source"]) for c in json.loads(notebook.read_text())["cells"] if c["cell_type"] == "code")
    assert "widgets.interact(" not in code and "@interact\n" not in code, notebook.name


def test_book_builds_without_warnings_with_execution_off(tmp_path: Path) -> None:
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    config["execute"]["execute_notebooks"] = "off"
    config_path = tmp_path / "_config.yml"
    config_path.write_text(yaml.safe_dump(config))
    jupyter_book = Path(sys.executable).parent / "jupyter-book"
    command = [str(jupyter_book if jupyter_book.exists() else shutil.which("jupyter-book")), "build", str(ROOT)]
    command += ["--config", str(config_path), "--path-output", str(tmp_path / "out"), "-W", "--keep-going", "-q"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert (tmp_path / "out" / "_build" / "html" / "book" / "intro.html").is_file()
