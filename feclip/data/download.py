"""Verified, resumable downloads, and ``feclip download``: data sets laid out where the readers look.

:func:`download_file` fetches one URL to a file: into ``<file>.part``, resuming an interrupted
transfer with an HTTP ``Range`` request (on this call's retries or on the next call), checking
the SHA-256, then renaming into place. A checksum mismatch deletes the partial file and names
the URL and both hashes. :func:`download` does this for a data set of
:mod:`feclip.data.sources`, prints its licence first, extracts into a staging folder, lays
it out for our readers and renames it to ``<root>/<name>`` in one step; a second call finds
it and does nothing. ``root`` defaults to ``$FECLIP_DATA`` (else ``./data``), where the full
profile looks for ``mvtec`` and ``visa``.

Why ``urllib`` and not a download library: resuming needs the partial file to survive a
failure and a ``Range`` header on the next request. pooch's ``HTTPDownloader`` opens its
output with ``"w+b"`` and sends no ``Range``, and ``pooch.retrieve`` streams into a fresh
temporary file that it deletes when the transfer fails; ``torch.hub.download_url_to_file``
also writes a fresh temporary file without ``Range``. (pooch's custom downloaders are handed
that fresh temporary file too, so one cannot resume inside pooch either.) So the transfer is
one small function, :func:`_fetch`, on the standard library's opener (redirects, proxies,
TLS), with tqdm for progress; everything else (hashing, atomic rename, extraction with
``tarfile``'s ``data`` filter) is the standard library.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import shutil
import sys
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

from feclip.data.sources import SOURCES, DataSource, check_layout, get_source

__all__ = [
    "ChecksumMismatchError",
    "DownloadError",
    "ManualDownloadRequired",
    "add_download_arguments",
    "data_root",
    "dataset_spec",
    "download",
    "download_file",
    "extract_archive",
    "run_download",
    "sha256_of",
]

DEFAULT_TIMEOUT_S = 15.0  # per socket operation: an unreachable or silent host fails within this
RETRIES = 3  # reconnections after a transfer that was cut after making progress
RETRY_WAIT_S = 1.0
CHUNK_BYTES = 1 << 20
DOWNLOADS_DIR = ".downloads"  # under the data root: archives (and their .part files) in transit


class DownloadError(OSError):
    """A download or an archive failed; the message names the URL or file and what to do."""


class ChecksumMismatchError(DownloadError):
    """A file's SHA-256 is not the pinned one."""


class ManualDownloadRequired(DownloadError):
    """The data set has no direct download; the message says what a person must do."""


class _Interrupted(Exception):
    """The connection was cut during the body; the partial file is kept for a resume."""


def _say(message: str) -> None:
    print(f"feclip: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- one verified file


def sha256_of(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _normalise_sha256(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip().lower()
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise ValueError(f"sha256 must be 64 hexadecimal digits, got {value!r}")
    return value


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _content_range(header: str | None) -> tuple[int | None, int | None]:
    """``(first byte, total)`` of a ``Content-Range`` header (``bytes 10-99/100`` or ``bytes */100``)."""
    if not header or not header.startswith("bytes "):
        return None, None
    span, _, total = header[len("bytes "):].partition("/")
    first = int(span.split("-")[0]) if span != "*" else None
    return first, int(total) if total.isdigit() else None


def _fetch(url: str, partial: Path, timeout: float, progress: bool) -> None:
    """Fetch ``url`` into ``partial``, continuing from its size with a ``Range`` request.

    Raises:
        DownloadError: The host cannot be reached or answers with an HTTP error.
        _Interrupted: The body stopped early; ``partial`` holds what arrived.
    """
    offset = _size(partial)
    headers = {"User-Agent": "feclip-download", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:  # nothing left to send: complete if the size is the server's
            _, total = _content_range(err.headers.get("Content-Range"))
            if total is not None and total != offset:  # not this file's prefix: start over
                partial.unlink()
                return _fetch(url, partial, timeout, progress)
            return None
        raise DownloadError(f"{url}: HTTP {err.code} {err.reason}") from err
    except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
        reason = getattr(err, "reason", err)
        raise DownloadError(f"cannot reach {url}: {reason}") from err
    with response:
        first, _ = _content_range(response.headers.get("Content-Range"))
        if response.status == 206 and first != offset:  # a range we did not ask for: start over
            response.close()
            partial.unlink()
            return _fetch(url, partial, timeout, progress)
        # 206: the rest of the file; 200: no Range was sent, or the server ignored it (start over).
        mode = "ab" if response.status == 206 else "wb"
        offset = offset if response.status == 206 else 0
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else None
        with open(partial, mode) as handle, tqdm(total=total, initial=offset, unit="B", unit_scale=True,
                                                 unit_divisor=1024, desc=partial.name[: -len(".part")],
                                                 disable=not progress, leave=False) as bar:
            while True:
                try:
                    chunk = response.read(CHUNK_BYTES)
                except (OSError, http.client.HTTPException) as err:  # reset, timeout, IncompleteRead
                    raise _Interrupted(str(err) or type(err).__name__) from err
                if not chunk:
                    break
                handle.write(chunk)
                bar.update(len(chunk))
    if total is not None and _size(partial) < total:
        raise _Interrupted(f"connection closed after {_size(partial)} of {total} bytes")
    return None


def download_file(
    url: str,
    dest: str | Path,
    sha256: str | None = None,
    progress: bool = True,
    *,
    timeout: float = DEFAULT_TIMEOUT_S,
    retries: int = RETRIES,
) -> Path:
    """Download ``url`` to ``dest``: resumable, atomic, checksum-verified.

    The bytes go to ``<dest>.part``; a cut connection is resumed with an HTTP ``Range``
    request (up to ``retries`` times in this call, or by calling again later); a server that
    ignores ``Range`` restarts the file cleanly. Only a complete file whose SHA-256 matches is
    renamed to ``dest``. An existing ``dest`` is verified and returned without downloading.

    Args:
        url: ``http://`` or ``https://`` URL.
        dest: File to create.
        sha256: Expected hex SHA-256 (None: not verified; the computed hash is printed).
        progress: Show a tqdm progress bar.
        timeout: Seconds each connect or read may block; an unreachable host fails within this.
        retries: Reconnections after a transfer that was cut after making progress.

    Returns:
        ``dest``.

    Raises:
        DownloadError: Unreachable host, HTTP error, or a transfer that kept being cut (the
            partial file stays for the next call).
        ChecksumMismatchError: The SHA-256 differs; the partial file is deleted.
    """
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"only http:// and https:// URLs are downloaded, got {url!r}")
    expected = _normalise_sha256(sha256)
    dest = Path(dest)
    if dest.is_file():
        if expected is not None and (actual := sha256_of(dest)) != expected:
            raise ChecksumMismatchError(f"{dest} exists but its SHA-256 is {actual}, expected {expected} "
                                        f"(the file of {url}); delete it to download again")
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".part")
    attempt = 0
    while True:
        before = _size(partial)
        try:
            _fetch(url, partial, timeout, progress)
            break
        except _Interrupted as cut:
            attempt += 1
            if _size(partial) <= before or attempt > retries:
                raise DownloadError(f"download of {url} was interrupted ({cut}); {_size(partial)} bytes are kept "
                                    f"in {partial}: run the same command again to resume") from None
            time.sleep(RETRY_WAIT_S)
    actual = sha256_of(partial)
    if expected is not None and actual != expected:
        partial.unlink()
        raise ChecksumMismatchError(f"checksum mismatch for {url}: expected SHA-256 {expected}, got {actual}; "
                                    f"the downloaded file {partial} was deleted")
    if expected is None:
        _say(f"SHA-256 of {dest.name}: {actual} (no checksum was given to verify it against)")
    os.replace(partial, dest)
    return dest


# --------------------------------------------------------------------------- archives


def extract_archive(archive: str | Path, destination: str | Path, progress: bool = True) -> None:
    """Extract a zip or tar (``.tar``, ``.tar.gz``, ``.tar.xz``, ...) archive into ``destination``.

    The format is read from the file's content, not its name. Members cannot land outside
    ``destination``: zipfile drops absolute paths and ``..`` parts, and tar members go
    through tarfile's ``data`` filter (links leaving the folder, devices and absolute paths
    are refused).
    """
    archive, destination = Path(archive), Path(destination)
    if not archive.is_file():
        raise FileNotFoundError(f"archive not found: {archive}")
    destination.mkdir(parents=True, exist_ok=True)
    bar = {"desc": f"extracting {archive.name}", "unit": " files", "disable": not progress, "leave": False}
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zip_file:
            for member in tqdm(zip_file.infolist(), **bar):
                zip_file.extract(member, destination)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tar_file:
            for member in tqdm(tar_file, **bar):
                _extract_tar_member(tar_file, member, destination)
    else:
        raise DownloadError(f"{archive} is neither a zip nor a tar archive")


def _extract_tar_member(tar_file: tarfile.TarFile, member: tarfile.TarInfo, destination: Path) -> None:
    if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12 / 3.11.4
        try:
            tar_file.extract(member, destination, filter="data")
        except tarfile.FilterError as err:
            raise DownloadError(f"refusing unsafe archive member {member.name!r}: {err}") from err
        return
    target = (destination / member.name).resolve()
    if member.issym() or member.islnk() or not target.is_relative_to(destination.resolve()):
        raise DownloadError(f"refusing unsafe archive member {member.name!r}")
    tar_file.extract(member, destination)


# --------------------------------------------------------------------------- data sets


def data_root(root: str | Path | None = None) -> Path:
    """``root``, else ``$FECLIP_DATA``, else ``./data`` (the folder the full profile reads)."""
    return Path(root if root is not None else os.environ.get("FECLIP_DATA", "data")).expanduser()


def dataset_spec(name: str, root: str | Path | None = None) -> str:
    """``build_dataset`` spec of a prepared data set, e.g. ``dataset_spec("btad")`` -> ``"mvtec:data/btad"``."""
    return get_source(name).spec(data_root(root))


def _by_hand(source: DataSource, root: Path) -> str:
    archive = root / DOWNLOADS_DIR / source.archive_name
    return (f"to place it by hand, download {source.url} elsewhere (browser, or `curl -C - -o FILE URL`, which "
            f"resumes), then run `feclip download {source.name} --from-archive FILE --root {root}` "
            f"(or put the file at {archive} and run `feclip download {source.name} --root {root}`)")


def _manual_instructions(source: DataSource, root: Path) -> str:
    return (f"{source.title} has no direct download (licence: {source.licence}). 1. {source.manual_steps}. "
            f"2. Run `feclip download {source.name} --from-archive FILE [FILE ...] --root {root}`; "
            f"it is prepared into {root / source.name} (read it as {source.spec(root)}).")


def _verify_archives(source: DataSource, archives: list[Path]) -> None:
    for archive in archives:
        if not archive.is_file():
            raise FileNotFoundError(f"--from-archive: file not found: {archive}")
    if source.sha256 is None or len(archives) != 1:
        for archive in archives:
            _say(f"SHA-256 of {archive.name}: {sha256_of(archive)} (no published checksum to verify it against)")
        return
    actual = sha256_of(archives[0])
    if actual != source.sha256:  # the user's own file: reported, never deleted
        raise ChecksumMismatchError(f"{archives[0]} is not the {source.title} archive of {source.url}: "
                                    f"expected SHA-256 {source.sha256}, got {actual}")


def download(
    source: str | DataSource,
    root: str | Path | None = None,
    *,
    from_archive: str | Path | Sequence[str | Path] | None = None,
    progress: bool = True,
    keep_archive: bool = False,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> Path:
    """Download, verify and lay out a data set as ``<root>/<name>``; nothing to do if it is there.

    The licence is printed before anything is fetched. The archive is verified against its
    pinned SHA-256, extracted into ``<root>/.<name>.staging``, laid out for our readers, and
    renamed to ``<root>/<name>`` only when complete, so an interrupted run leaves no
    half-prepared data set (run it again: a cut download resumes).

    Args:
        source: A name of :data:`~feclip.data.sources.SOURCES` (``"mvtec"``, ``"visa"``, ...) or a
            :class:`~feclip.data.sources.DataSource`.
        root: Data root (default ``$FECLIP_DATA``, else ``./data``).
        from_archive: Archive file(s) the user downloaded elsewhere, used instead of the URL
            (checked against the pinned SHA-256 when there is one, and never deleted).
        progress: Show tqdm progress bars.
        keep_archive: Keep a downloaded archive in ``<root>/.downloads`` after preparing.
        timeout: Seconds a connect or read may block.

    Returns:
        The prepared folder ``<root>/<name>``.

    Raises:
        ManualDownloadRequired: No direct download and no ``from_archive``; says what to do.
        DownloadError: Unreachable URL (the message says how to place the archive by hand),
            checksum mismatch, or an unreadable archive.
        feclip.data.sources.LayoutError: The archive, or an existing ``<root>/<name>``, has the
            wrong layout.
    """
    source = get_source(source) if isinstance(source, str) else source
    root = data_root(root)
    destination = root / source.name
    if destination.exists():
        check_layout(destination, source.reader)
        _say(f"{source.title} is already at {destination}; nothing to do (read it as {source.spec(root)})")
        return destination
    if isinstance(from_archive, (str, os.PathLike)):
        from_archive = [from_archive]
    archives = [Path(a).expanduser() for a in from_archive or []]
    if not archives and not source.direct:
        raise ManualDownloadRequired(_manual_instructions(source, root))
    _say(f"{source.title}: licence {source.licence}. By downloading you accept it. Homepage: {source.homepage}")
    downloaded = None
    if archives:
        _verify_archives(source, archives)
    else:
        downloaded = root / DOWNLOADS_DIR / source.archive_name
        _say(f"downloading {source.url}")
        try:
            download_file(source.url, downloaded, source.sha256, progress, timeout=timeout)
        except ChecksumMismatchError:
            raise
        except DownloadError as err:
            raise DownloadError(f"{err}. {_by_hand(source, root)}") from err
        archives = [downloaded]
    staging = root / f".{source.name}.staging"
    shutil.rmtree(staging, ignore_errors=True)  # a previous run's leftovers: ours, never user data
    try:
        for archive in archives:
            extract_archive(archive, staging / "extracted", progress)
        source.prepare(staging / "extracted", staging / source.name)
        check_layout(staging / source.name, source.reader)
        os.replace(staging / source.name, destination)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if downloaded is not None and not keep_archive:
        downloaded.unlink()
    _say(f"{source.title} is ready at {destination} (read it as {source.spec(root)})")
    return destination


# --------------------------------------------------------------------------- command line


def add_download_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``feclip download``'s arguments to ``parser`` (run them with :func:`run_download`)."""
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"data sets: {', '.join(SOURCES)}, or 'all' for every one with a direct download")
    parser.add_argument("--root", type=Path, default=None,
                        help="data root; each set goes to ROOT/NAME (default: $FECLIP_DATA, else ./data)")
    parser.add_argument("--from-archive", nargs="+", type=Path, default=None, metavar="FILE",
                        help="archive(s) you downloaded elsewhere: verified and prepared instead of downloading")
    parser.add_argument("--list", action="store_true", help="list the data sets, their licences and sources")
    parser.add_argument("--keep-archive", action="store_true", help="keep the downloaded archive in ROOT/.downloads")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="S",
                        help="seconds a connection may stay silent (default %(default)s)")


def _listing(root: Path) -> str:
    lines = [f"data sets (root {root}):"]
    for source in SOURCES.values():
        state = "present" if (root / source.name).exists() else "missing"
        how = "direct, SHA-256 pinned" if source.direct else "manual (--from-archive)"
        lines.append(f"  {source.name:<9} {source.title:<55} {how:<24} {state:<8} {source.paper_tables}")
        lines.append(f"  {'':<9} licence: {source.licence}")
    return "\n".join(lines)


def run_download(args: argparse.Namespace) -> int:
    """Run ``feclip download`` from arguments added by :func:`add_download_arguments`; returns the exit status."""
    root = data_root(args.root)
    if args.list or not args.names:
        print(_listing(root))
        if not args.list:
            _say("name the data sets to download, e.g. `feclip download mvtec visa`")
        return 0 if args.list else 2
    names = [s.name for s in SOURCES.values() if s.direct] if args.names == ["all"] else args.names
    sources = [get_source(name) for name in names]
    if args.from_archive and len(sources) != 1:
        raise ValueError("--from-archive needs exactly one data set name")
    for source in sources:
        download(source, root, from_archive=args.from_archive, progress=not args.no_progress,
                 keep_archive=args.keep_archive, timeout=args.timeout)
        print(source.spec(root))
    return 0
