"""Published checkpoints (feclip.hub): served by a local HTTP server, cached once, verified, nothing wrong kept."""

from __future__ import annotations

import functools
import hashlib
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from train_helpers import make_model

from feclip.data.download import ChecksumMismatchError, DownloadError
from feclip.hub import CACHE_ENV, checkpoint_cache_dir, fetch_checkpoint, is_url
from feclip.model import FEClip


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:  # no request lines in the test output
        pass


@pytest.fixture()
def server(tmp_path: Path) -> Iterator[tuple[str, Path, list[str]]]:
    """``(base URL, served folder, requested paths)`` of an HTTP server on 127.0.0.1."""
    served, requests = tmp_path / "served", []
    served.mkdir()

    class Handler(_QuietHandler):
        def do_GET(self) -> None:
            requests.append(self.path)
            super().do_GET()

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(served)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", served, requests
    finally:
        httpd.shutdown()
        httpd.server_close()


def _published(tiny_clip, folder: Path, name: str = "feclip-visa.safetensors") -> tuple[FEClip, str]:
    """A trained-looking tiny model saved as ``folder/name``; returns it and the file's SHA-256."""
    model = make_model(tiny_clip, seed=5)
    with torch.no_grad():
        for parameter in model.fc_patch.parameters():
            parameter.mul_(3.0)
    path = model.save(folder / name)
    return model, hashlib.sha256(path.read_bytes()).hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_a_url_is_downloaded_once_verified_and_kept_in_its_own_folder(tiny_clip, server, tmp_path: Path) -> None:
    base, served, requests = server
    _, digest = _published(tiny_clip, served)
    (served / "feclip-visa.json").write_text("{}")  # a sidecar beside it is never fetched
    cache = tmp_path / "cache"
    path = fetch_checkpoint(f"{base}/feclip-visa.safetensors", digest, cache_dir=cache, progress=False)
    assert path == cache / hashlib.sha256(f"{base}/feclip-visa.safetensors".encode()).hexdigest()[:16] / "feclip-visa.safetensors"
    assert _files(cache) == [path] and hashlib.sha256(path.read_bytes()).hexdigest() == digest
    assert fetch_checkpoint(f"{base}/feclip-visa.safetensors", digest, cache_dir=cache, progress=False) == path
    assert requests == ["/feclip-visa.safetensors"]  # the second call found it in the cache
    (served / "other").mkdir()
    _published(tiny_clip, served / "other")  # the same file name under another URL: its own folder
    other = fetch_checkpoint(f"{base}/other/feclip-visa.safetensors", cache_dir=cache, progress=False)
    assert other != path and other.name == path.name and len(_files(cache)) == 2


def test_a_wrong_sha256_is_one_clear_error_and_nothing_is_cached(tiny_clip, server, tmp_path: Path) -> None:
    base, served, _ = server
    _, digest = _published(tiny_clip, served)
    wrong = "0" * 64
    cache = tmp_path / "cache"
    with pytest.raises(ChecksumMismatchError, match=f"checksum mismatch for {base}/feclip-visa.safetensors: "
                                                    f"expected SHA-256 {wrong}, got {digest}"):
        fetch_checkpoint(f"{base}/feclip-visa.safetensors", wrong, cache_dir=cache, progress=False)
    assert _files(cache) == [] and list(cache.iterdir()) == []


def test_a_file_that_is_no_checkpoint_is_refused_and_deleted(server, tmp_path: Path) -> None:
    base, served, _ = server
    (served / "page.safetensors").write_text("<html>not found</html>")  # what a wrong link often serves
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match=f"{base}/page.safetensors is not an FE-CLIP checkpoint .*the download was deleted"):
        fetch_checkpoint(f"{base}/page.safetensors", cache_dir=cache, progress=False)
    assert _files(cache) == []
    with pytest.raises(DownloadError, match="404"):
        fetch_checkpoint(f"{base}/missing.safetensors", cache_dir=cache, progress=False)
    assert _files(cache) == []


def test_local_checkpoints_are_verified_in_place(tiny_clip, tmp_path: Path) -> None:
    _, digest = _published(tiny_clip, tmp_path / "run", name="last.safetensors")
    weights = tmp_path / "run" / "last.safetensors"
    assert fetch_checkpoint(tmp_path / "run", digest) == weights  # a run folder: its last.safetensors
    assert fetch_checkpoint(str(tmp_path / "run" / "last"), digest.upper()) == weights
    with pytest.raises(ChecksumMismatchError, match=f"{weights} has SHA-256 {digest}, expected {'a' * 64}"):
        fetch_checkpoint(weights, "a" * 64)
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        fetch_checkpoint(tmp_path / "nowhere.safetensors")


def test_the_cache_is_feclips_or_torchs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "feclip-cache"))
    assert checkpoint_cache_dir() == tmp_path / "feclip-cache" / "checkpoints"
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    assert checkpoint_cache_dir() == tmp_path / "torch-home" / "hub" / "feclip" / "checkpoints"
    assert checkpoint_cache_dir(tmp_path / "mine") == tmp_path / "mine"
    assert is_url("https://x.org/a.safetensors") and not is_url("runs/a") and not is_url(Path("http:/x"))


def test_from_pretrained_over_http_gives_the_published_model(tiny_clip, server, tmp_path: Path) -> None:
    base, served, _ = server
    published, digest = _published(tiny_clip, served)
    images = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(3))
    loaded = FEClip.from_pretrained(f"{base}/feclip-visa.safetensors", sha256=digest, cache_dir=tmp_path / "c",
                                    progress=False)
    assert loaded.config == published.config and not loaded.training
    with torch.no_grad():
        expected, got = published.eval()(images), loaded(images)
    assert torch.equal(got.pred_score, expected.pred_score) and torch.equal(got.anomaly_map, expected.anomaly_map)
