"""The per-epoch training log, kept in memory and written beside the checkpoints."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from feclip.checkpoint import atomic_write

__all__ = ["History"]


class History:
    """Per-epoch training log: ``epoch, step, loss, bce, focal, dice, images_per_s, lr, fc_patch_lr, time_s``
    and, with a validation set, ``val_<metric>`` macro metrics (``val_image_auroc``, ``val_pixel_auroc``...).
    """

    def __init__(self, rows: list[dict[str, Any]] | None = None) -> None:
        self.rows: list[dict[str, Any]] = [dict(row) for row in rows or []]

    def append(self, row: dict[str, Any]) -> None:
        self.rows.append(dict(row))

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.rows[index]

    def __repr__(self) -> str:
        return f"History({len(self)} epochs, last={self.rows[-1] if self.rows else None})"

    def column(self, name: str) -> list[Any]:
        """One value per epoch (``None`` where an epoch lacks it)."""
        return [row.get(name) for row in self.rows]

    def to_frame(self) -> pd.DataFrame:
        """The history as a DataFrame indexed by epoch."""
        return pd.DataFrame(self.rows).set_index("epoch") if self.rows else pd.DataFrame()

    def save(self, out_dir: str | Path) -> None:
        """Write ``history.csv`` and ``history.json`` (NaN as ``null``) atomically."""
        out_dir = Path(out_dir)
        clean = [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()} for row in self.rows]
        text = json.dumps(clean, indent=2) + "\n"
        atomic_write(out_dir / "history.json", lambda tmp: tmp.write_text(text, encoding="utf-8"))
        atomic_write(out_dir / "history.csv", lambda tmp: pd.DataFrame(self.rows).to_csv(tmp, index=False))

    @classmethod
    def load(cls, out_dir: str | Path) -> History:
        """Read ``history.json`` from a run folder."""
        path = Path(out_dir) / "history.json"
        if not path.is_file():
            raise FileNotFoundError(f"no training history: {path}")
        return cls(json.loads(path.read_text(encoding="utf-8")))
