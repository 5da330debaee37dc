"""``feclip predict``: anomaly heatmaps, raw maps, scores and decisions for a user's own images.

Every file under the input is tried, whatever the folder names (the ground-truth mask folders of a
labelled layout excepted, and said so); a file that is not a readable image is reported and skipped
(``--strict``: the command stops). Everything is written to a staging folder beside ``--out`` and
renamed into place at the end, so ``--out`` holds one whole prediction or none: an interrupted run
leaves the previous one as it was. ``--out`` that holds files is refused unless ``--overwrite``
names a folder this command wrote (``predict.json`` marks it).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

from feclip.cli.choices import MAP_FORMATS
from feclip.cli.common import (
    add_checkpoint_input,
    add_runtime,
    check_detector_flags,
    check_output_folder,
    require_non_negative,
    require_positive,
    say,
)

NAME = "predict"
SUMMARY = "anomaly heatmaps, maps, scores and decisions for your own images"
MARKER = "predict.json"
EPILOG = """writes to --out, beside a path mirroring each image's place under the input:
  <name>_heatmap.png   the image with the map over it (jet: blue the lowest possible map value,
                       red the highest, 0 and 1 for probabilities) and a colour bar
  <name>_map.npy       the raw map at the model's input size (--maps png16: a 16-bit PNG spanning
                       the map's value range; --maps none: no raw maps)
  <name>_mask.png      with a pixel threshold: the binary mask (255: anomalous) at the image's size
  scores.csv           one row per file: image score, maximum pixel score, decision, the files
                       written, the settings, and the error of a file that was skipped
  thresholds.json      the thresholds used and where they came from
  predict.json         what was run (it also marks the folder as this command's, for --overwrite)
The maps are the model's own unless --map-sigma smooths them (4 matches the evaluation tables).

thresholds: --image-threshold T calls an image anomalous when its score is >= T; --pixel-threshold
T marks pixels >= T. --calibrate SPEC chooses both by the best F1 on labelled data (e.g.
folder:PATH with good/, abnormal/ and masks/), --thresholds FILE reuses a thresholds.json.

examples:
  feclip predict --ckpt runs/visa2mvtec/last.safetensors photo.png --out heatmaps/
  feclip predict --ckpt runs/visa2mvtec my_images/ --out heatmaps/ --alpha 0.4 --format json
  feclip predict --ckpt runs/visa2mvtec my_images/ --out heatmaps/ --calibrate folder:labelled/
  feclip predict --onnx model.onnx my_images/ --out heatmaps/
  feclip predict --method winclip --class-name bottle my_images/ --out heatmaps/
  feclip predict --method winclip+ --reference good_parts/ my_images/ --out heatmaps/"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = "Score images and write heatmap overlays, raw maps and, given thresholds, decisions."
    parser.epilog = EPILOG
    add_checkpoint_input(parser, map_sigma=0.0, methods=True, onnx=True)
    parser.add_argument("input", type=Path, metavar="IMAGE_OR_DIR", help="an image file or a folder (searched recursively)")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="folder for the outputs (see below)")
    parser.add_argument("--overwrite", action="store_true", help="replace the outputs of an earlier feclip predict in --out")
    parser.add_argument("--strict", action="store_true", help="stop at the first file that is not a readable image "
                                                              "(default: report it and go on)")
    parser.add_argument("--reference", type=Path, metavar="DIR", help="(winclip+) a folder of normal reference images")
    parser.add_argument("--alpha", type=float, default=0.5, metavar="X", help="heatmap opacity in the overlay (default: 0.5)")
    parser.add_argument("--colour-bar", action=argparse.BooleanOptionalAction, default=True,
                        help="a colour bar beside each overlay (default: on)")
    parser.add_argument("--maps", choices=MAP_FORMATS, default="npy", help="raw map files (default: npy)")
    parser.add_argument("--image-threshold", type=float, metavar="T", help="image score from which an image is anomalous")
    parser.add_argument("--pixel-threshold", type=float, metavar="T", help="map value from which a pixel is anomalous")
    parser.add_argument("--calibrate", metavar="SPEC", help="choose the thresholds by F1 on this labelled data KIND:PATH")
    parser.add_argument("--thresholds", type=Path, metavar="FILE", help="the thresholds of an earlier thresholds.json")
    parser.add_argument("--format", choices=("table", "json"), default="table",
                        help="what is printed: a table, or one JSON document (default: table)")
    add_runtime(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


# --------------------------------------------------------------------------- the output folder


def _check_out(out: Path, overwrite: bool) -> None:
    """Refuse an --out that is a file, or that holds files this command may not replace; before any work."""
    check_output_folder(out)
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not overwrite:
        raise FileExistsError(f"--out {out} already holds files; pass --overwrite to replace an earlier prediction "
                              "there, or choose another folder")
    if not (out / MARKER).is_file():
        raise FileExistsError(f"--out {out} holds files that feclip predict did not write (no {MARKER}); "
                              "choose another folder")


def _staging(out: Path) -> Path:
    """A new staging folder beside ``out``; staging folders of dead predict processes are removed first."""
    import os
    import secrets
    import socket

    from feclip.run_folder import pid_alive

    out.parent.mkdir(parents=True, exist_ok=True)
    for old in out.parent.glob(f".{out.name}.staging-*"):
        owner = old / ".owner"
        try:
            holder = json.loads(owner.read_text())
        except (OSError, ValueError):
            holder = {}
        if holder.get("host") == socket.gethostname() and not pid_alive(int(holder.get("pid", -1))):
            shutil.rmtree(old, ignore_errors=True)
    staging = out.parent / f".{out.name}.staging-{secrets.token_hex(4)}"
    staging.mkdir()
    (staging / ".owner").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    return staging


def _publish(staging: Path, out: Path) -> None:
    """Rename the finished staging folder to ``out``, replacing the earlier prediction there (checked before)."""
    (staging / ".owner").unlink()
    if out.exists():
        retired = out.parent / f".{out.name}.replaced-{staging.name.rsplit('-', 1)[-1]}"
        out.rename(retired)
        staging.rename(out)
        shutil.rmtree(retired)
    else:
        staging.rename(out)


# --------------------------------------------------------------------------- the inputs


def _ground_truth_folders(root: Path) -> list[Path]:
    """Mask folders of the labelled layouts feclip reads: ``masks/`` beside ``abnormal/``, MVTec's ``ground_truth/``."""
    found = []
    for folder in [root, *(p for p in root.rglob("*") if p.is_dir())]:
        if (folder / "masks").is_dir() and (folder / "abnormal").is_dir():
            found.append(folder / "masks")
        if (folder / "ground_truth").is_dir() and (folder / "test").is_dir():
            found.append(folder / "ground_truth")
    return found


def _inputs(source: Path, skip: list[Path]) -> tuple[list[Path], list[Path]]:
    """Every file to score (recursively; hidden files and ``skip`` left out) and the mask folders left out."""
    if source.is_file():
        return [source], []
    masks = _ground_truth_folders(source)
    excluded = [p.resolve() for p in (*skip, *masks)]
    files = []
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            continue
        resolved = path.resolve()
        if any(resolved == folder or folder in resolved.parents for folder in excluded):
            continue
        files.append(path)
    return files, masks


def _references(folder: Path, transform: Any) -> Any:
    """``--reference``: the normal images of WinCLIP+, ``(K, 3, H, W)``."""
    import torch
    from PIL import ImageOps

    from feclip.data import IMAGE_EXTENSIONS, load_rgb

    if not folder.is_dir():
        raise FileNotFoundError(f"--reference folder not found: {folder}")
    paths = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not paths:
        raise FileNotFoundError(f"no images in --reference folder {folder}")
    return torch.stack([transform.image(ImageOps.exif_transpose(load_rgb(p))) for p in paths])


# --------------------------------------------------------------------------- thresholds


def _thresholds(args: argparse.Namespace, loaded: Any) -> dict[str, Any]:
    """The image and pixel thresholds of this run and where they come from (``{}``: none)."""
    given = {"image_threshold": args.image_threshold, "pixel_threshold": args.pixel_threshold}
    if args.thresholds is not None:
        try:
            saved = json.loads(args.thresholds.read_text(encoding="utf-8"))
            saved = {key: saved[key] for key in ("image_threshold", "pixel_threshold") if saved.get(key) is not None}
        except FileNotFoundError:
            raise FileNotFoundError(f"--thresholds file not found: {args.thresholds}") from None
        except (ValueError, TypeError, AttributeError) as err:
            raise ValueError(f"--thresholds {args.thresholds} is not a thresholds.json ({err})") from err
        return {**saved, **{k: v for k, v in given.items() if v is not None}, "source": str(args.thresholds.resolve())}
    if args.calibrate is not None:
        return {**_calibrate(args, loaded), **{k: v for k, v in given.items() if v is not None}}
    if any(value is not None for value in given.values()):
        return {**{k: v for k, v in given.items() if v is not None}, "source": "given"}
    return {}


def _calibrate(args: argparse.Namespace, loaded: Any) -> dict[str, Any]:
    """``--calibrate SPEC``: the image and pixel thresholds with the best F1 on labelled data."""
    import numpy as np
    import torch
    from torch.utils.data import DataLoader

    from feclip.data import build_dataset
    from feclip.postprocess import smooth_anomaly_maps
    from feclip.thresholds import f1_threshold

    dataset = build_dataset(args.calibrate, split="test", transform=loaded.transform)
    scores, labels, pixels, truth = [], [], [], []
    with torch.inference_mode():
        for batch in DataLoader(dataset, batch_size=args.batch_size, num_workers=args.num_workers or 0):
            prediction = loaded.detector(batch["image"].to(loaded.device))
            maps = smooth_anomaly_maps(prediction.anomaly_map.float(), args.map_sigma).cpu()
            scores.append(prediction.pred_score.float().cpu().numpy())
            labels.append(batch["label"].numpy())
            known = batch["has_mask"].bool()
            pixels.append(maps[known].numpy().ravel())
            truth.append(batch["mask"][known].numpy().ravel() > 0.5)
    labels_all = np.concatenate(labels)
    if labels_all.min() < 0:
        raise ValueError(f"--calibrate {args.calibrate} has unlabelled images; give labelled data (e.g. folder:PATH "
                         "with good/ and abnormal/)")
    chosen: dict[str, Any] = {"source": f"best F1 on {args.calibrate}"}
    image = f1_threshold(np.concatenate(scores), labels_all)
    chosen.update(image_threshold=image.value, image_f1=image.f1)
    truth_all = np.concatenate(truth)
    if truth_all.any():
        pixel = f1_threshold(np.concatenate(pixels), truth_all)
        chosen.update(pixel_threshold=pixel.value, pixel_f1=pixel.f1)
    elif args.pixel_threshold is None:
        say(f"warning: --calibrate {args.calibrate} has no masks with anomalous pixels: no pixel threshold")
    return chosen


# --------------------------------------------------------------------------- the command


def _check_flags(args: argparse.Namespace) -> None:
    if not 0 <= args.alpha <= 1:
        raise ValueError(f"--alpha must be in [0, 1], got {args.alpha}")
    require_positive(args, "batch_size")
    require_non_negative(args, "num_workers")
    check_detector_flags(args)
    if args.method != "winclip+" and args.reference is not None:
        raise ValueError("--reference is for --method winclip+")
    if args.method == "winclip+" and args.reference is None:
        raise ValueError("--method winclip+ needs --reference DIR, a folder of normal images of the product")
    if args.calibrate is not None and args.thresholds is not None:
        raise ValueError("give --calibrate or --thresholds, not both")
    if not args.input.exists():
        raise FileNotFoundError(f"input not found: {args.input}")
    _check_out(args.out, args.overwrite)


def run(args: argparse.Namespace) -> int:
    import torch

    from feclip.cli.common import load_detector, winclip_plus
    from feclip.cli.predict_outputs import write_predictions
    from feclip.postprocess import smooth_anomaly_maps

    args.out, args.input = args.out.expanduser(), args.input.expanduser()
    _check_flags(args)
    smooth_anomaly_maps(torch.zeros(1, 1, 1), args.map_sigma)  # a bad --map-sigma fails before any work
    loaded = load_detector(args)
    if args.method == "winclip+":
        loaded = winclip_plus(loaded, _references(args.reference, loaded.transform))
    thresholds = _thresholds(args, loaded)
    files, masks = _inputs(args.input, skip=[args.out])
    for folder in masks:
        say(f"not scored: {folder} (the ground-truth masks of a labelled folder layout)")
    if not files:
        raise FileNotFoundError(f"no files to score under {args.input}")
    staging = _staging(args.out)
    try:
        table = write_predictions(args, loaded, files, thresholds, staging)
        _publish(staging, args.out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _report(args, table, thresholds, loaded.settings)
    return 0


def _report(args: argparse.Namespace, table: Any, thresholds: dict[str, Any], settings: dict[str, Any]) -> None:
    """Print the results (a table and the skipped files, or one JSON document) and where they are."""
    scored, skipped = table[table["error"].isna()], table[table["error"].notna()]
    if args.format == "json":
        rows = table.astype(object).where(table.notna(), None).to_dict(orient="records")
        print(json.dumps({"out": str(args.out), "settings": settings, "thresholds": thresholds or None,
                          "images": rows, "scored": len(scored), "skipped": len(skipped)}, indent=2))
        return
    columns = [c for c in ("path", "image_score", "max_pixel_score", "decision") if c in table]
    if len(scored):
        print(scored[columns].to_string(index=False, float_format="%.4f"))
    if len(skipped):
        print(f"skipped {len(skipped)} file(s) that are not readable images:")
        for path, error in skipped[["path", "error"]].itertuples(index=False):
            print(f"  {path}: {error}")
    print(f"{len(scored)} images scored, {len(skipped)} skipped; heatmaps, maps and scores.csv written to {args.out} "
          f"(map: {settings['map_score']}, smoothed with sigma {args.map_sigma:g})")
