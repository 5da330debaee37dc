"""Published FE-CLIP checkpoints: fetched once into a cache, verified, then loaded by :meth:`FEClip.from_pretrained`.

**What is published.** One file: the ``.safetensors`` checkpoint that :func:`feclip.checkpoint.save_checkpoint`
(and every training epoch) writes. Its header already holds the whole JSON document of the ``.json``
sidecar (model config, backbone, seed of a random backbone, backbone fingerprint, training facts), so
nothing else is downloaded; the sidecar may sit beside it for people to read, and is never needed.
Publish the file's SHA-256 with it (``sha256sum last.safetensors``), and load it with::

    model = FEClip.from_pretrained("https://example.org/feclip-visa.safetensors", sha256="<64 hex digits>")

**Where it goes.** ``$FECLIP_CACHE/checkpoints`` when ``FECLIP_CACHE`` is set, else torch's own cache
(``torch.hub.get_dir()/feclip/checkpoints``: ``~/.cache/torch/hub`` or ``$TORCH_HOME/hub``). Every URL
gets a folder of its own (named by a hash of the URL) holding the file under its published name: two
URLs whose files share a name never collide, and a second call finds the file and downloads nothing.

**How.** :func:`feclip.data.download.download_file`, the data sets' downloader: resumable, atomic,
verified. A file whose SHA-256 differs, or that is not an FE-CLIP checkpoint, is deleted again: nothing
wrong stays in the cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import urllib.parse
from pathlib import Path

from feclip.checkpoint import checkpoint_paths, read_metadata
from feclip.data.download import ChecksumMismatchError, download_file, sha256_of

__all__ = ["CACHE_ENV", "checkpoint_cache_dir", "fetch_checkpoint", "is_url"]

CACHE_ENV = "FECLIP_CACHE"


def is_url(value: str | Path) -> bool:
    """Whether ``value`` is an ``http://`` or ``https://`` URL (anything else is a local path)."""
    return isinstance(value, str) and value.startswith(("http://", "https://"))


def checkpoint_cache_dir(cache_dir: str | Path | None = None) -> Path:
    """The folder downloaded checkpoints are kept in: ``cache_dir``, ``$FECLIP_CACHE/checkpoints`` or torch's cache."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser() / "checkpoints"
    import torch.hub

    return Path(torch.hub.get_dir()) / "feclip" / "checkpoints"


def _cached_path(url: str, cache_dir: Path) -> Path:
    """``<cache>/<hash of the URL>/<the URL's file name>``, the name ending in ``.safetensors``."""
    name = urllib.parse.unquote(Path(urllib.parse.urlparse(url).path).name) or "checkpoint"
    if not name.endswith(".safetensors"):
        name += ".safetensors"
    return cache_dir / hashlib.sha256(url.encode()).hexdigest()[:16] / name


def _remove_from_cache(path: Path) -> None:
    path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # the URL's folder, if nothing else is in it
        path.parent.rmdir()


def fetch_checkpoint(
    path_or_url: str | Path, sha256: str | None = None, *, cache_dir: str | Path | None = None, progress: bool = True
) -> Path:
    """A checkpoint's local ``.safetensors`` file: downloaded into the cache for a URL, verified when ``sha256`` is given.

    Args:
        path_or_url: An ``http(s)://`` URL of a published ``.safetensors`` checkpoint, or a local checkpoint
            (a ``.safetensors`` file, the same without its suffix, or a run folder meaning its ``last.safetensors``).
        sha256: The file's expected hex SHA-256 (``None``: not verified; a download prints the hash it got).
        cache_dir: Where downloads are kept (default :func:`checkpoint_cache_dir`).
        progress: Show a progress bar while downloading.

    Returns:
        The path of the checkpoint's ``.safetensors`` file.

    Raises:
        FileNotFoundError: No local checkpoint there.
        feclip.data.download.ChecksumMismatchError: The SHA-256 differs (a download is deleted; the message
            names the file or URL and both hashes).
        feclip.data.download.DownloadError: The URL cannot be fetched (unreachable, HTTP error).
        ValueError: The downloaded file is not an FE-CLIP checkpoint (it is deleted).
    """
    if not is_url(path_or_url):
        weights, _ = checkpoint_paths(path_or_url)
        if not weights.is_file():
            raise FileNotFoundError(f"checkpoint not found: {path_or_url}")
        if sha256 is not None and (actual := sha256_of(weights)) != sha256.strip().lower():
            raise ChecksumMismatchError(f"{weights} has SHA-256 {actual}, expected {sha256.strip().lower()}")
        return weights
    url = str(path_or_url)
    target = _cached_path(url, checkpoint_cache_dir(cache_dir))
    try:
        download_file(url, target, sha256, progress=progress)
    except BaseException:
        with contextlib.suppress(OSError):  # an empty folder is all a failed download may have left
            target.parent.rmdir()
        raise
    try:
        read_metadata(target)
    except ValueError as error:
        _remove_from_cache(target)
        raise ValueError(f"{url} is not an FE-CLIP checkpoint ({error}); the download was deleted") from None
    return target
