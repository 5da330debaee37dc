"""What ``feclip predict`` writes for each file (a helper of :mod:`feclip.cli.predict`, not a subcommand)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

__all__ = ["output_names", "write_predictions"]


def output_names(files: list[Path], source: Path) -> dict[Path, Path]:
    """Each file's output stem: its place under ``source`` (``a/b.png`` -> ``a/b``), ``a/b_jpg`` when stems clash."""
    stems: dict[Path, list[Path]] = {}
    for path in files:
        relative = path.relative_to(source) if source.is_dir() else Path(path.name)
        stems.setdefault(relative.parent / relative.stem, []).append(relative)
    names = {}
    for path in files:
        relative = path.relative_to(source) if source.is_dir() else Path(path.name)
        stem = relative.parent / relative.stem
        clash = len(stems[stem]) > 1
        names[path] = stem.parent / f"{relative.stem}_{relative.suffix.lstrip('.')}" if clash else stem
    return names


def _label(path: Path, source: Path) -> int:
    """0 under a top-level ``good/`` or ``normal/``, 1 under ``abnormal/`` (the folder layout), else -1 (unknown)."""
    parts = path.relative_to(source).parts if source.is_dir() else ()
    top = parts[0] if len(parts) > 1 else None
    return {"good": 0, "normal": 0, "abnormal": 1}.get(top, -1)


class _Images:
    """The files as a map-style data set: the image (EXIF orientation applied) and its tensor, or the error."""

    def __init__(self, paths: list[Path], transform: Any) -> None:
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        from PIL import ImageOps

        from feclip.data import load_rgb

        path = self.paths[index]
        try:
            image = ImageOps.exif_transpose(load_rgb(path))
        except (OSError, ValueError) as err:  # feclip.data.ImageReadError names the file and says why
            return {"index": index, "error": " ".join(str(err).split())}
        return {"index": index, "image": image, "tensor": self.transform.image(image)}


def _keep_list(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return items


def _write_one(args: argparse.Namespace, loaded: Any, image: Any, score: float, anomaly_map: Any, stem: Path,
               staging: Path, thresholds: dict[str, Any]) -> dict[str, Any]:
    """One image's files (overlay, raw map, mask) and its row of scores.csv."""
    import numpy as np
    from PIL import Image

    from feclip.heatmaps import overlay, resize_map, save_map, with_colour_bar

    (staging / stem).parent.mkdir(parents=True, exist_ok=True)
    picture = overlay(image, anomaly_map, args.alpha, loaded.value_range)
    if args.colour_bar:
        picture = with_colour_bar(picture, loaded.value_range)
    heatmap = stem.parent / f"{stem.name}_heatmap.png"
    picture.save(staging / heatmap)
    raw = save_map(staging / stem.parent / f"{stem.name}_map", anomaly_map, args.maps, loaded.value_range)
    row: dict[str, Any] = {"image_score": score, "max_pixel_score": float(anomaly_map.max()), "heatmap": str(heatmap),
                           "map": None if raw is None else str(raw.relative_to(staging))}
    if thresholds.get("image_threshold") is not None:
        row["decision"] = "anomalous" if score >= thresholds["image_threshold"] else "normal"
    if thresholds.get("pixel_threshold") is not None:
        flagged = resize_map(anomaly_map, (image.height, image.width)) >= thresholds["pixel_threshold"]
        mask = stem.parent / f"{stem.name}_mask.png"
        Image.fromarray(flagged.astype(np.uint8) * 255).save(staging / mask)
        row.update(mask=str(mask), anomalous_pixels=float(flagged.mean()))
    return row


def write_predictions(args: argparse.Namespace, loaded: Any, files: list[Path], thresholds: dict[str, Any],
                      staging: Path) -> Any:
    """Score every file and write its outputs, ``scores.csv``, ``thresholds.json`` and ``predict.json`` to ``staging``.

    Returns:
        The table written to ``scores.csv`` (one row per file, in the files' order).

    Raises:
        feclip.data.ImageReadError: A file is not a readable image and ``args.strict`` is set.
    """
    import pandas as pd
    import torch
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from feclip import __version__
    from feclip.data import ImageReadError
    from feclip.postprocess import smooth_anomaly_maps

    names = output_names(files, args.input)
    settings = {**loaded.settings, "map_sigma": args.map_sigma}
    loader = DataLoader(_Images(files, loaded.transform), batch_size=args.batch_size,
                        num_workers=args.num_workers or 0, collate_fn=_keep_list)
    rows: dict[int, dict[str, Any]] = {}
    with torch.inference_mode(), tqdm(total=len(files), desc="predict", unit="file", disable=args.quiet) as bar:
        for items in loader:
            for item in items:
                if "error" in item:
                    if args.strict:
                        raise ImageReadError(f"{item['error']} (--strict: stopped; nothing was written)")
                    rows[item["index"]] = {"error": item["error"]}
            good = [item for item in items if "error" not in item]
            if good:
                prediction = loaded.detector(torch.stack([item["tensor"] for item in good]).to(loaded.device))
                maps = smooth_anomaly_maps(prediction.anomaly_map.float(), args.map_sigma).cpu().numpy()
                for item, score, anomaly_map in zip(good, prediction.pred_score.float().cpu().tolist(), maps):
                    rows[item["index"]] = _write_one(args, loaded, item["image"], score, anomaly_map,
                                                     names[files[item["index"]]], staging, thresholds)
            bar.update(len(items))
    table = pd.DataFrame([{"path": str(path), "label": _label(path, args.input), "error": None, **rows[index]}
                          for index, path in enumerate(files)])
    for key, value in settings.items():
        table[key] = value
    table.to_csv(staging / "scores.csv", index=False)
    if thresholds:
        (staging / "thresholds.json").write_text(json.dumps(thresholds, indent=2) + "\n", encoding="utf-8")
    record = {"generator": "feclip predict", "feclip_version": __version__, "input": str(args.input.resolve()),
              "settings": settings, "thresholds": thresholds or None, "maps": args.maps,
              "scored": int(table["error"].isna().sum()), "skipped": int(table["error"].notna().sum())}
    (staging / "predict.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return table
