"""tools/book_cache.py: the book's execution cache follows the library and the profile, not only the notebooks."""

from __future__ import annotations

import hashlib
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "book_cache.py"
_spec = importlib.util.spec_from_file_location("book_cache", SCRIPT)
book_cache = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(book_cache)


def _package(root: Path) -> Path:
    package = root / "pkg"
    (package / "model_configs").mkdir(parents=True)
    (package / "__init__.py").write_text("VALUE = 1\n")
    (package / "model_configs" / "tiny.json").write_text('{"width": 8}\n')
    return package


def _build(root: Path) -> Path:
    """A build folder as a finished `make book` leaves it, with one file in each computed child."""
    build = root / "_build"
    for child in (*book_cache.STALE_CHILDREN, "keep-me"):
        (build / child).mkdir(parents=True)
        (build / child / "marker").write_text(child)
    return build


def test_fingerprint_equals_a_hand_computed_digest(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_bytes(b"x = 1\n")
    expected = hashlib.sha256(b"__init__.py\0x = 1\n\0profile=smoke:/data\0").hexdigest()
    assert book_cache.package_fingerprint(package, {"profile": "smoke:/data"}) == expected


def test_fingerprint_follows_code_configs_and_keys_but_not_bytecode(tmp_path: Path) -> None:
    package = _package(tmp_path)
    before = book_cache.package_fingerprint(package, {"profile": "smoke"})
    (package / "__pycache__").mkdir()
    (package / "__pycache__" / "__init__.cpython-311.pyc").write_bytes(b"\x00compiled")
    assert book_cache.package_fingerprint(package, {"profile": "smoke"}) == before
    assert book_cache.package_fingerprint(package, {"profile": "full"}) != before
    (package / "model_configs" / "tiny.json").write_text('{"width": 16}\n')
    after_config = book_cache.package_fingerprint(package, {"profile": "smoke"})
    assert after_config != before
    (package / "extra.py").write_text("")
    assert book_cache.package_fingerprint(package, {"profile": "smoke"}) != after_config


def test_fingerprint_of_a_missing_package_names_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        book_cache.package_fingerprint(tmp_path / "nowhere")


def test_refresh_clears_a_build_without_a_fingerprint_and_keeps_one_that_matches(tmp_path: Path) -> None:
    build = _build(tmp_path)
    deleted = book_cache.refresh_build_cache(build, "aaa")
    assert sorted(path.name for path in deleted) == sorted(book_cache.STALE_CHILDREN)
    assert sorted(path.name for path in build.iterdir()) == [book_cache.STAMP_NAME, "keep-me"]
    assert (build / book_cache.STAMP_NAME).read_text() == "aaa\n"

    (build / ".jupyter_cache").mkdir()
    (build / "cache" / "runs").mkdir(parents=True)
    assert book_cache.refresh_build_cache(build, "aaa") == []
    assert (build / ".jupyter_cache").is_dir() and (build / "cache" / "runs").is_dir()

    assert {path.name for path in book_cache.refresh_build_cache(build, "bbb")} == {".jupyter_cache", "cache"}
    assert not (build / ".jupyter_cache").exists() and not (build / "cache").exists()
    assert (build / "keep-me" / "marker").read_text() == "keep-me"
    assert (build / book_cache.STAMP_NAME).read_text() == "bbb\n"
    assert [path.name for path in build.iterdir() if path.name.startswith(".feclip")] == []  # no temp file left


def test_refresh_creates_a_missing_build_folder(tmp_path: Path) -> None:
    assert book_cache.refresh_build_cache(tmp_path / "_build", "aaa") == []
    assert (tmp_path / "_build" / book_cache.STAMP_NAME).read_text() == "aaa\n"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120)


def test_command_line_clears_the_cache_after_a_library_change(tmp_path: Path) -> None:
    package, build = _package(tmp_path), _build(tmp_path)
    arguments = ("--build-dir", str(build), "--package-dir", str(package), "--key", "profile=smoke")
    assert _run(*arguments).returncode == 0
    (build / ".jupyter_cache").mkdir()
    (build / ".jupyter_cache" / "executed").write_text("chapter outputs")

    unchanged = _run(*arguments)
    assert unchanged.returncode == 0 and unchanged.stdout == ""
    assert (build / ".jupyter_cache" / "executed").is_file()

    (package / "__init__.py").write_text("VALUE = 2\n")
    changed = _run(*arguments)
    assert changed.returncode == 0 and "removed .jupyter_cache" in changed.stdout
    assert not (build / ".jupyter_cache").exists()


def test_command_line_rejects_a_malformed_key(tmp_path: Path) -> None:
    result = _run("--build-dir", str(tmp_path), "--package-dir", str(_package(tmp_path)), "--key", "profile")
    assert result.returncode == 2 and "--key 'profile': expected NAME=VALUE" in result.stderr


def test_the_installed_feclip_is_found_and_auto_resolves_to_a_profile() -> None:
    assert book_cache.installed_package_dir("feclip") == ROOT / "feclip"
    assert book_cache.resolved_profile("smoke").startswith("smoke:")
    with pytest.raises(ModuleNotFoundError, match="not_a_package_here"):
        book_cache.installed_package_dir("not_a_package_here")


def test_make_book_refreshes_the_cache_before_building() -> None:
    result = subprocess.run(["make", "-n", "book"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    refresh = next(i for i, line in enumerate(lines) if "tools/book_cache.py" in line)
    build = next(i for i, line in enumerate(lines) if "jupyter-book build" in line)
    assert refresh < build
    assert "--package feclip" in lines[refresh] and "--profile" in lines[refresh]
