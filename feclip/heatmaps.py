"""Pictures and files of anomaly maps: overlays with a colour bar, raw maps as ``.npy`` or 16-bit PNG, masks.

The colours are ``jet`` over a fixed value range (a probability map's ``[0, 1]``), so overlays of
different images are comparable; the colour bar beside an overlay says which colour is which value.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["MAP_FORMATS", "colour_bar", "decode_map_png16", "encode_map_png16", "overlay", "resize_map",
           "save_map", "with_colour_bar"]

MAP_FORMATS = ("npy", "png16", "none")
COLORMAP = "jet"
_PNG16_MAX = 65535


def _colours(values: np.ndarray) -> np.ndarray:
    """``jet`` colours of values in ``[0, 1]``, ``(..., 3)`` floats in ``[0, 1]``."""
    from matplotlib import colormaps

    return colormaps[COLORMAP](np.clip(values, 0.0, 1.0))[..., :3]


def _scaled(anomaly_map: np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
    low, high = value_range
    return (np.asarray(anomaly_map, dtype=np.float64) - low) / (high - low)


def resize_map(anomaly_map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A ``(h, w)`` map resized bilinearly (half-pixel centres) to ``size`` ``(H, W)``, float32."""
    import torch

    tensor = torch.from_numpy(np.ascontiguousarray(anomaly_map, dtype=np.float32))[None, None]
    return torch.nn.functional.interpolate(tensor, size=size, mode="bilinear", align_corners=False)[0, 0].numpy()


def overlay(image: Image.Image, anomaly_map: np.ndarray, alpha: float,
            value_range: tuple[float, float] = (0.0, 1.0)) -> Image.Image:
    """Blend a ``(h, w)`` map, resized to the image and coloured with ``jet`` over ``value_range``, onto an RGB image."""
    resized = resize_map(anomaly_map, (image.height, image.width))
    heat = _colours(_scaled(resized, value_range))
    blended = (1 - alpha) * np.asarray(image, dtype=np.float64) / 255 + alpha * heat
    return Image.fromarray(np.clip(np.rint(blended * 255), 0, 255).astype(np.uint8))


def colour_bar(height: int, width: int) -> Image.Image:
    """A vertical ``jet`` gradient, ``(height, width)``: the top row is the range's high end, the bottom row its low end."""
    fractions = np.linspace(1.0, 0.0, height) if height > 1 else np.ones(1)
    colours = _colours(fractions)[:, None, :].repeat(width, axis=1)
    return Image.fromarray(np.rint(colours * 255).astype(np.uint8))


def _label(value: float) -> str:
    return f"{value:.3g}"


def with_colour_bar(picture: Image.Image, value_range: tuple[float, float]) -> Image.Image:
    """``picture`` with a colour bar to its right, labelled with the range's ends; the picture's pixels are kept.

    Returns:
        An RGB image as tall as ``picture``, wider by the bar and its labels; ``picture`` is its left part.
    """
    font = ImageFont.load_default()
    low, high = value_range
    labels = (_label(high), _label(low))
    text_width = max(int(np.ceil(font.getlength(text))) for text in labels)
    bar_width, gap = max(8, picture.width // 25), max(4, picture.width // 50)
    canvas = Image.new("RGB", (picture.width + 2 * gap + bar_width + gap + text_width + gap, picture.height), "white")
    canvas.paste(picture.convert("RGB"), (0, 0))
    canvas.paste(colour_bar(picture.height, bar_width), (picture.width + 2 * gap, 0))
    draw = ImageDraw.Draw(canvas)
    text_left = picture.width + 3 * gap + bar_width
    draw.text((text_left, 0), labels[0], fill="black", font=font)
    bottom = draw.textbbox((0, 0), labels[1], font=font)[3]
    draw.text((text_left, max(0, picture.height - bottom)), labels[1], fill="black", font=font)
    return canvas


def encode_map_png16(anomaly_map: np.ndarray, value_range: tuple[float, float]) -> Image.Image:
    """A map as a 16-bit greyscale PNG image: ``value_range`` spread over ``0..65535`` (values outside are clipped)."""
    levels = np.rint(np.clip(_scaled(anomaly_map, value_range), 0.0, 1.0) * _PNG16_MAX).astype(np.uint16)
    return Image.fromarray(levels)


def decode_map_png16(image: Image.Image, value_range: tuple[float, float]) -> np.ndarray:
    """Inverse of :func:`encode_map_png16` (to within ``(high - low) / 65535 / 2``), float32."""
    low, high = value_range
    return (np.asarray(image, dtype=np.float64) / _PNG16_MAX * (high - low) + low).astype(np.float32)


def save_map(path: Path, anomaly_map: np.ndarray, map_format: str, value_range: tuple[float, float]) -> Path | None:
    """Write a raw ``(h, w)`` map: ``npy`` (float32, exact) or ``png16`` (:func:`encode_map_png16`); ``none``: nothing.

    Returns:
        The file written (``path`` with the format's suffix), or ``None``.
    """
    if map_format not in MAP_FORMATS:
        raise ValueError(f"map format must be one of {MAP_FORMATS}, got {map_format!r}")
    if map_format == "none":
        return None
    if map_format == "npy":
        target = path.with_suffix(".npy")
        np.save(target, np.asarray(anomaly_map, dtype=np.float32))
        return target
    target = path.with_suffix(".png")
    encode_map_png16(anomaly_map, value_range).save(target)
    return target
