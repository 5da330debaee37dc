"""A run's record (``run.json``): what defines the run, so that the folder is never mixed with another run.

The command line writes it before the first epoch and reads it back to decide what a command may
do with the folder. It holds the run's identity:

* the data specs, with absolute paths (a resume from another working directory finds the data),
  and a fingerprint of every data set: per category the image count, the bytes and a digest of the
  item list (relative paths, sizes, labels, masks), cheap to compute from file sizes alone;
* the model config and the training config (the seed among them).

:func:`run_differences` names what differs between two records (the recorded run and the one a
command would start); :func:`data_differences` only the data. The settings a resumed run may
change (:data:`feclip.train.run_state.FREE_TO_CHANGE`: epochs, workers, device...) are not part
of the identity. ``data_changes`` lists the resumes that were allowed to change the data.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "RECORD_FILE",
    "RECORD_KEYS",
    "absolute_spec",
    "data_differences",
    "data_fingerprint",
    "read_run_record",
    "run_differences",
    "run_identity",
]

RECORD_FILE = "run.json"
RECORD_FORMAT = 2
# Every key a run.json may hold; anything else is refused (a typo, or a file from a newer feclip).
RECORD_KEYS = ("format", "feclip_version", "train", "val", "val_fraction", "target", "model", "train_config",
               "data", "data_changes")
_SPEC_KEYS = ("train", "val", "val_fraction", "target")


def absolute_spec(spec: str | None) -> str | None:
    """``KIND:PATH`` with PATH made absolute (``~`` expanded); ``None`` stays ``None``."""
    if spec is None:
        return None
    from feclip.data import parse_spec

    kind, path = parse_spec(spec)
    return f"{kind}:{path.resolve()}"


def _relative(path: Path | None, root: Path) -> str | None:
    if path is None:
        return None
    path = Path(path).resolve()
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def _size(path: Path | None) -> int | None:
    return None if path is None else Path(path).stat().st_size


def data_fingerprint(samples: Sequence[Any] | None, root: str | Path) -> dict[str, Any] | None:
    """A cheap fingerprint of a data set: per category, its images, their bytes and a digest of its items.

    Args:
        samples: The data set's items (records with ``image_path``, ``category``, ``label``, ``defect_type``
            and ``mask_path``, as :attr:`feclip.data.AnomalyDataset.samples`); ``None`` gives ``None``.
        root: The data set's folder: item paths are digested relative to it, so the fingerprint does not
            change when the whole folder moves.

    Returns:
        ``{"images": N, "bytes": B, "categories": {name: {"images", "bytes", "digest"}}}``, or ``None``.
    """
    if samples is None:
        return None
    root = Path(root).expanduser().resolve()
    digests: dict[str, Any] = defaultdict(hashlib.sha256)
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for sample in sorted(samples, key=lambda s: (str(s.category), str(s.image_path))):
        size, mask_size = _size(sample.image_path), _size(sample.mask_path)
        line = (f"{_relative(sample.image_path, root)}\t{size}\t{sample.label}\t{sample.defect_type}\t"
                f"{_relative(sample.mask_path, root)}\t{mask_size}\n")
        digests[str(sample.category)].update(line.encode("utf-8"))
        counts[str(sample.category)][0] += 1
        counts[str(sample.category)][1] += size + (mask_size or 0)
    categories = {name: {"images": counts[name][0], "bytes": counts[name][1], "digest": digests[name].hexdigest()[:16]}
                  for name in sorted(counts)}
    return {"images": sum(c["images"] for c in categories.values()),
            "bytes": sum(c["bytes"] for c in categories.values()), "categories": categories}


def run_identity(model_config: dict[str, Any], train_config: dict[str, Any], specs: dict[str, Any],
                 train: Sequence[Any], val: Sequence[Any] | None, target: Sequence[Any] | None) -> dict[str, Any]:
    """The record of a run: its data specs (absolute paths) and fingerprints, its model and training configs.

    Args:
        model_config: The model's config as a dict.
        train_config: The training config as a dict.
        specs: ``train``, ``val``, ``target`` (``KIND:PATH`` or ``None``) and ``val_fraction``.
        train: The training items (without a held-out part).
        val: The validation items: held out of the training data set (``val_fraction``), or another data set.
        target: The named target's items.
    """
    from feclip import __version__

    roots = {name: specs[name].partition(":")[2] for name in ("train", "val", "target") if specs.get(name)}
    held_out = list(val or []) if specs.get("val_fraction") else []  # the whole training data set: the split is seeded
    data = {"train": data_fingerprint([*train, *held_out], roots["train"]),
            "val": data_fingerprint(val, roots["val"]) if "val" in roots else None,
            "target": data_fingerprint(target, roots["target"]) if "target" in roots else None}
    return {"format": RECORD_FORMAT, "feclip_version": __version__, **specs, "model": model_config,
            "train_config": train_config, "data": data}


def _fingerprint_differences(name: str, recorded: dict[str, Any] | None, current: dict[str, Any] | None) -> list[str]:
    if recorded == current:
        return []
    if recorded is None or current is None:
        return [f"{name} data: {'none' if recorded is None else 'a data set'} recorded, "
                f"{'none' if current is None else 'a data set'} now"]
    was, now = recorded.get("categories", {}), current.get("categories", {})
    problems = []
    for category in sorted(set(was) | set(now)):
        before, after = was.get(category), now.get(category)
        if before is None or after is None:
            problems.append(f"{name} data: category {category} {'added' if before is None else 'missing'}")
        elif before["images"] != after["images"]:
            problems.append(f"{name} data: category {category} has {after['images']} images (recorded {before['images']})")
        elif before != after:
            problems.append(f"{name} data: category {category} has other files or file sizes than recorded")
    if len(problems) > 3:
        problems = [*problems[:3], f"{name} data: {len(problems) - 3} more categories differ"]
    return problems or [f"{name} data differs from the recorded fingerprint"]


def data_differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """What differs between the data of two records, one phrase each (empty: the same data).

    A record without fingerprints (written by an older feclip) differs by "no data fingerprint".
    """
    if "data" not in recorded:
        return ["the record has no data fingerprint (written by an older feclip), so the data cannot be checked"]
    problems = []
    for name in ("train", "val", "target"):
        problems += _fingerprint_differences(name, recorded["data"].get(name), current["data"].get(name))
    for key in ("val_fraction",):
        if recorded.get(key) != current.get(key):
            problems.append(f"{key} {recorded.get(key)!r} (recorded) vs {current.get(key)!r}")
    return problems


def _dict_differences(name: str, recorded: dict[str, Any], current: dict[str, Any], ignore: tuple[str, ...]) -> list[str]:
    return [f"{name} {key} {recorded.get(key)!r} (recorded) vs {current.get(key)!r}"
            for key in sorted(set(recorded) | set(current)) if key not in ignore and recorded.get(key) != current.get(key)]


def run_differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """What makes ``current`` another run than ``recorded``: data specs and data, model config, training config."""
    from feclip.checkpoint import upgrade_config
    from feclip.train.run_state import FREE_TO_CHANGE

    problems = [f"{key} {recorded.get(key)!r} (recorded) vs {current.get(key)!r}"
                for key in ("train", "val", "target") if recorded.get(key) != current.get(key)]
    problems += data_differences(recorded, current)
    problems += _dict_differences("model", upgrade_config(recorded.get("model", {})), current["model"], ())
    problems += _dict_differences("training", recorded.get("train_config", {}), current["train_config"],
                                  FREE_TO_CHANGE)
    return problems


def read_run_record(path: Path) -> dict[str, Any]:
    """A ``run.json``, checked: valid JSON, an object, known keys, a model config and a training config feclip reads.

    Raises:
        ValueError: Naming the file and what is wrong with it.
    """
    from feclip.checkpoint import upgrade_config
    from feclip.config import FEClipConfig
    from feclip.train.config import TrainConfig

    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ValueError(f"run record {path} is not text: {err}") from err
    except json.JSONDecodeError as err:
        raise ValueError(f"run record {path} is not valid JSON ({err}); fix it, or delete the folder's run files "
                         "and start again") from err
    if not isinstance(record, dict):
        raise ValueError(f"run record {path} must hold a JSON object, found {type(record).__name__}")
    unknown = sorted(set(record) - set(RECORD_KEYS))
    if unknown:
        raise ValueError(f"run record {path} has unknown keys {unknown} (known: {list(RECORD_KEYS)})")
    if record.get("format", 1) > RECORD_FORMAT:
        raise ValueError(f"run record {path} has format {record['format']}; this feclip reads format {RECORD_FORMAT} "
                         "or older: upgrade feclip")
    try:
        if "model" in record:
            FEClipConfig.from_dict(upgrade_config(record["model"]))
        if "train_config" in record:
            TrainConfig.from_dict(record["train_config"])
    except (TypeError, ValueError, AttributeError) as err:
        raise ValueError(f"run record {path}: {err}") from err
    return record
