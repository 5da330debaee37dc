"""History: the per-epoch log and its two files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from feclip.train import History


def test_history_round_trips_through_its_files(tmp_path: Path) -> None:
    history = History([{"epoch": 1, "loss": 0.5, "val_image_auroc": math.nan}])
    history.append({"epoch": 2, "loss": 0.25, "val_image_auroc": 0.75})
    history.save(tmp_path)
    assert json.loads((tmp_path / "history.json").read_text())[0]["val_image_auroc"] is None  # strict JSON
    loaded = History.load(tmp_path)
    assert loaded.column("loss") == [0.5, 0.25] and loaded.column("missing") == [None, None]
    assert len(loaded) == 2 and loaded[1]["val_image_auroc"] == 0.75
    assert pd.read_csv(tmp_path / "history.csv")["loss"].tolist() == [0.5, 0.25]
    assert history.to_frame().loc[2, "loss"] == 0.25
    with pytest.raises(FileNotFoundError, match="no training history"):
        History.load(tmp_path / "elsewhere")
