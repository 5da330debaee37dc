"""``feclip predict``: anomaly heatmaps and scores for a user's own images."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from feclip.cli.common import add_checkpoint_input, add_runtime, load_checkpoint_model

NAME = "predict"
SUMMARY = "anomaly heatmaps and scores for your own images"
EPILOG = """writes one heatmap overlay PNG per image (blue: the lowest possible map value, red: the highest;
0 and 1 for probabilities) and scores.csv (image score, maximum pixel score, and the settings
used) to --out. The maps are the model's own unless --map-sigma smooths them (4 matches the
evaluation tables).

examples:
  feclip predict --ckpt runs/visa2mvtec/last.safetensors photo.png --out heatmaps/
  feclip predict --ckpt runs/visa2mvtec my_images/ --out heatmaps/ --alpha 0.4"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = "Score images and write heatmap overlays."
    parser.epilog = EPILOG
    add_checkpoint_input(parser, map_sigma=0.0)
    parser.add_argument("input", type=Path, metavar="IMAGE_OR_DIR", help="an image file or a folder of images")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="folder for the overlays and scores.csv")
    parser.add_argument("--alpha", type=float, default=0.5, metavar="X", help="heatmap opacity in the overlay (default: 0.5)")
    add_runtime(parser)


def overlay(image: Any, anomaly_map: Any, alpha: float, value_range: tuple[float, float] = (0.0, 1.0)) -> Any:
    """Blend a ``(h, w)`` map, coloured with ``jet`` over ``value_range``, onto an RGB PIL image."""
    import numpy as np
    import torch
    from matplotlib import colormaps
    from PIL import Image

    resized = torch.nn.functional.interpolate(torch.from_numpy(anomaly_map)[None, None].float(),
                                              size=(image.height, image.width), mode="bilinear", align_corners=False)
    low, high = value_range
    heat = colormaps["jet"](((resized[0, 0] - low) / (high - low)).clamp(0, 1).numpy())[..., :3]
    blended = (1 - alpha) * np.asarray(image, dtype=np.float64) / 255 + alpha * heat
    return Image.fromarray(np.clip(np.rint(blended * 255), 0, 255).astype(np.uint8))


def _load_detector(args: argparse.Namespace) -> tuple[Any, Any, Any, tuple[float, float], dict[str, Any]]:
    """The detector to run and what comes with it: ``(detector, device, transform, map value range, settings)``.

    This is where another kind of detector plugs in (``--onnx``: :class:`feclip.export.OnnxDetector`,
    whose metadata holds the transform and the map range), with the rest of the command unchanged.
    """
    from feclip.data import transforms_for_clip

    model, device = load_checkpoint_model(args)
    transform = transforms_for_clip(model.clip, resize_mode=model.config.resize_mode)
    settings = {"map_score": model.config.map_score, "map_sigma": args.map_sigma, "resize_mode": model.config.resize_mode}
    return model, device, transform, model.anomaly_map_range, settings


def run(args: argparse.Namespace) -> int:
    import pandas as pd
    import torch
    from torch.utils.data import DataLoader

    from feclip.data import AnomalyDataset, Sample, build_dataset, load_rgb
    from feclip.postprocess import smooth_anomaly_maps

    if not 0 <= args.alpha <= 1:
        raise ValueError(f"--alpha must be in [0, 1], got {args.alpha}")
    if not args.input.exists():
        raise FileNotFoundError(f"input not found: {args.input}")
    detector, device, transform, value_range, settings = _load_detector(args)
    smooth_anomaly_maps(torch.zeros(1, 1, 1), args.map_sigma)  # a bad --map-sigma fails before any work
    if args.input.is_dir():
        dataset = build_dataset(f"folder:{args.input}", transform=transform)
    else:
        dataset = AnomalyDataset([Sample(args.input, -1, "custom", "unknown", None, has_mask=False)], transform)
    args.out.mkdir(parents=True, exist_ok=True)
    rows, used = [], set()
    loader = DataLoader(dataset, batch_size=args.batch_size, num_workers=args.num_workers or 0)
    with torch.inference_mode():
        for batch in loader:
            prediction = detector(batch["image"].to(device))
            maps = smooth_anomaly_maps(prediction.anomaly_map.float(), args.map_sigma)
            for index, path in enumerate(batch["path"]):
                name = f"{Path(path).stem}_heatmap.png"
                if name in used:
                    name = f"{Path(path).stem}_{Path(path).suffix.lstrip('.')}_heatmap.png"
                used.add(name)
                anomaly_map = maps[index].cpu().numpy()
                overlay(load_rgb(path), anomaly_map, args.alpha, value_range).save(args.out / name)
                rows.append({"path": path, "image_score": float(prediction.pred_score[index]),
                             "max_pixel_score": float(anomaly_map.max()), "label": int(batch["label"][index]),
                             "heatmap": name, **settings})
    table = pd.DataFrame(rows)
    table.to_csv(args.out / "scores.csv", index=False)
    print(table[["path", "image_score", "max_pixel_score"]].to_string(index=False, float_format="%.4f"))
    print(f"{len(rows)} heatmaps and scores.csv written to {args.out} "
          f"(map: {settings['map_score']}, smoothed with sigma {args.map_sigma:g})")
    return 0
