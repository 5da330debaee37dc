"""The zero-shot protocol checks, on small stand-in data sets."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from feclip.protocol import ProtocolError, check_evaluation, check_training_data, data_record


@dataclass
class _Sample:
    image_path: Path


class _Data:
    def __init__(self, root: str, categories: list[str], per_category: int = 2) -> None:
        self.categories = categories
        self.samples = [_Sample(Path(root) / c / f"{i}.png") for c in categories for i in range(per_category)]


VISA, MVTEC = _Data("visa", ["pcb1", "candle"]), _Data("mvtec", ["bottle", "carpet"])


def test_a_clean_set_up_passes_and_is_recorded() -> None:
    check_training_data(VISA, _Data("btad", ["01"]), MVTEC)
    check_training_data(VISA)
    assert data_record("visa:data/visa", VISA) == {"spec": "visa:data/visa", "categories": ["candle", "pcb1"], "images": 4}
    assert data_record(None, None) is None
    assert data_record(None, VISA, holdout_fraction=0.1)["holdout_fraction"] == 0.1


def test_training_set_ups_that_leak_are_refused() -> None:
    with pytest.raises(ProtocolError, match="shares 4 images with the training set"):
        check_training_data(VISA, _Data("visa", ["pcb1", "candle"]))
    with pytest.raises(ProtocolError, match=r"the validation set shares categories \['bottle'\] with the target"):
        check_training_data(VISA, _Data("mvtec", ["bottle"]), MVTEC)
    with pytest.raises(ProtocolError, match=r"the training set shares categories \['candle'\] with the target"):
        check_training_data(VISA, None, _Data("visa2", ["candle", "cashew"]))


def test_evaluation_of_a_checkpoint_chosen_on_the_evaluation_data_is_refused() -> None:
    run = {"train": data_record("visa:x", VISA), "val": data_record(None, VISA, holdout_fraction=0.1)}
    assert check_evaluation({"run": run, "chosen_by": "val_image_auroc"}, MVTEC) == []  # zero-shot: fine
    with pytest.raises(ProtocolError, match=r"chosen by val_image_auroc .* shares categories \['pcb1'\]"):
        check_evaluation({"run": run, "chosen_by": "val_image_auroc"}, _Data("visa", ["pcb1"]))
    # last.safetensors was chosen on nothing: in-domain evaluation only warns.
    assert check_evaluation({"run": run}, _Data("visa", ["pcb1"])) == [
        "the model was trained on categories ['pcb1'] of this data set: the result is not zero-shot"]
    assert check_evaluation({}, MVTEC) == []  # a checkpoint without a recorded run (older, or from the library)
