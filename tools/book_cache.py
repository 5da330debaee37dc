"""Keep the book's execution cache in step with the library and the profile it ran with.

``execute_notebooks: cache`` (jupyter-cache) keys each notebook on its source alone: after a
change to ``feclip`` or a switch of profile, an unchanged chapter would be served from the
cache with outputs of the old library or the other profile. ``make book`` therefore runs this
script first. It fingerprints every file of the installed ``feclip`` package (the code and the
shipped model configurations) together with the resolved profile, compares the fingerprint
with the one stored beside the cache by the previous build, and on a mismatch deletes what was
computed with the old one: the execution cache, Sphinx's saved environment (which would
otherwise skip re-reading unchanged notebooks), the executed notebooks and HTML, and the smoke
data and runs under ``_build/cache``. The new fingerprint is written last and atomically, so a
build interrupted half-way through the clean-up cleans up again next time.

Usage (what ``make book`` runs)::

    python tools/book_cache.py --build-dir _build --package feclip --profile auto
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

STAMP_NAME = "feclip-fingerprint.txt"
# Children of the build folder computed with a given library and profile.
STALE_CHILDREN = (".jupyter_cache", ".doctrees", "jupyter_execute", "html", "cache")


def package_fingerprint(package_dir: Path, keys: Mapping[str, str] | None = None) -> str:
    """SHA-256 over every file of a package (paths and bytes) and a few ``key=value`` settings.

    Byte-code caches are skipped: they change when Python merely imports the package.

    Args:
        package_dir: The package's folder (the one holding ``__init__.py``).
        keys: Settings the executed notebooks also depend on, e.g. ``{"profile": "smoke"}``.

    Returns:
        The hexadecimal digest.

    Raises:
        FileNotFoundError: If ``package_dir`` is not a folder.
    """
    if not package_dir.is_dir():
        raise FileNotFoundError(f"package folder {package_dir} does not exist")
    digest = hashlib.sha256()
    files = sorted(
        path
        for path in package_dir.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix not in {".pyc", ".pyo"}
    )
    for path in files:
        digest.update(path.relative_to(package_dir).as_posix().encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    for name, value in sorted((keys or {}).items()):
        digest.update(f"{name}={value}\0".encode())
    return digest.hexdigest()


def refresh_build_cache(build_dir: Path, fingerprint: str, stale: Sequence[str] = STALE_CHILDREN) -> list[Path]:
    """Delete what the last build computed if it ran with another fingerprint, then store this one.

    A build folder without a stored fingerprint counts as a mismatch: its cache may come from
    any version of the library.

    Args:
        build_dir: The book's build folder (``_build``).
        fingerprint: The fingerprint of the library and profile about to run.
        stale: Names of the children of ``build_dir`` to delete on a mismatch.

    Returns:
        The paths deleted (empty when the fingerprint matched or nothing was there).
    """
    stamp = build_dir / STAMP_NAME
    if stamp.is_file() and stamp.read_text().strip() == fingerprint:
        return []
    deleted = []
    for name in stale:
        path = build_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            continue
        deleted.append(path)
    build_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=build_dir, prefix=f".{STAMP_NAME}.", delete=False) as handle:
        handle.write(fingerprint + "\n")
    os.replace(handle.name, stamp)
    return deleted


def installed_package_dir(name: str) -> Path:
    """The folder of the package ``name`` as this interpreter would import it.

    Raises:
        ModuleNotFoundError: If the package is not installed for this interpreter.
    """
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"package {name!r} is not installed for {sys.executable}")
    return Path(next(iter(spec.submodule_search_locations)))


def resolved_profile(name: str) -> str:
    """What ``FECLIP_PROFILE=name`` runs: ``auto`` resolved to ``full`` or ``smoke``, with its data root."""
    from feclip.profiles import resolve_profile  # imports torch: only when a profile is asked for

    profile = resolve_profile(name)
    return f"{profile.name}:{profile.data_root}"


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--build-dir", type=Path, required=True, help="the book's build folder (_build)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--package", help="name of the installed package to fingerprint (feclip)")
    source.add_argument("--package-dir", type=Path, help="folder of the package to fingerprint")
    parser.add_argument("--profile", help="FECLIP_PROFILE value the build runs with (auto, smoke, full)")
    parser.add_argument("--key", action="append", default=[], metavar="NAME=VALUE", help="another setting to key on")
    args = parser.parse_args(argv)

    keys = {}
    for item in args.key:
        name, separator, value = item.partition("=")
        if not separator or not name:
            parser.error(f"--key {item!r}: expected NAME=VALUE")
        keys[name] = value
    if args.profile is not None:
        keys["profile"] = resolved_profile(args.profile)
    package_dir = args.package_dir if args.package_dir is not None else installed_package_dir(args.package)
    deleted = refresh_build_cache(args.build_dir, package_fingerprint(package_dir, keys))
    if deleted:
        names = ", ".join(path.name for path in deleted)
        print(f"book_cache: {package_dir} or the profile changed since the last build; removed {names}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
