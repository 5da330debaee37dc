"""What a reproduction runs, where it writes, and what produced it.

The paper's protocol (Gong et al., ICCV 2025, Sec. 4.2): FE-CLIP is trained on MVTec AD's test split and
evaluated on every other data set, and trained on VisA's test split for MVTec AD. A reproduction is
therefore at most two *directions* (``visa`` -> ``mvtec``; ``mvtec`` -> everything else downloaded),
each trained once per seed and evaluated on each of its targets at each map sigma.

Everything lives in one output folder (``results/<date>/`` by default)::

    reproduction.json                              the plan, what produced it, finished or not
    runs/train-<aux>/seed-<k>/                     one training run (recipes.load_or_train's run folder)
    evaluations/<aux>-to-<target>/seed-<k>/sigma-<s>.{json,csv}   one evaluation table
    per_seed.{csv,md}, summary.{csv,md}            the tables

A plan is identified by :func:`plan_key`; a folder holding another plan is never written into.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import feclip
from feclip.checkpoint import atomic_write
from feclip.data.sources import SOURCES, check_layout, get_source
from feclip.config import FEClipConfig
from feclip.profiles import Profile
from feclip.reproduce.defaults import DEFAULT_MAP_SIGMAS, DEFAULT_SEEDS

__all__ = [
    "DEFAULT_MAP_SIGMAS",
    "DEFAULT_SEEDS",
    "MANIFEST",
    "SMOKE_LABEL",
    "Plan",
    "Run",
    "auxiliary_of",
    "choose_output_folder",
    "find_targets",
    "git_commit",
    "plan_key",
    "provenance",
    "read_manifest",
    "with_plan_settings",
    "write_manifest",
]

MANIFEST = "reproduction.json"
SMOKE_LABEL = ("SMOKE RUN: synthetic stand-in data sets and feclip's toy CLIP (a tiny backbone pretrained on the "
               "synthetic world, not OpenAI's CLIP) on the CPU. "
               "These numbers show that the pipeline runs; they are not comparable with the paper's.")


def auxiliary_of(target: str) -> str:
    """The data set whose test split trains the model evaluated on ``target``: VisA for MVTec AD, else MVTec AD."""
    return "visa" if target == "mvtec" else "mvtec"


@dataclass(frozen=True)
class Run:
    """One training run (a direction and a seed) and the targets it is evaluated on."""

    auxiliary: str
    seed: int
    targets: tuple[str, ...]

    def run_dir(self, out: Path) -> Path:
        """Run folder of :func:`feclip.recipes.load_or_train`."""
        return out / "runs" / f"train-{self.auxiliary}" / f"seed-{self.seed}"

    def evaluation_file(self, out: Path, target: str, sigma: float) -> Path:
        """The JSON file of one evaluation table (a ``.csv`` twin sits beside it)."""
        return out / "evaluations" / f"{self.auxiliary}-to-{target}" / f"seed-{self.seed}" / f"sigma-{sigma:g}.json"


@dataclass(frozen=True)
class Plan:
    """A whole reproduction: the profile (seed, epochs and caps applied), its data, and the runs.

    Attributes:
        profile: The run profile; ``data_root`` holds the data sets, ``epochs`` and
            ``max_images_per_category`` are the ones used.
        seeds: Training seeds, one run per direction and seed.
        targets: Data sets evaluated, in the registry's order.
        map_sigmas: Map smoothing of every evaluation (each target is scored at each).
        smoke_sizes: The synthetic stand-ins' sizes (smoke profile only).
    """

    profile: Profile
    seeds: tuple[int, ...]
    targets: tuple[str, ...]
    map_sigmas: tuple[float, ...] = DEFAULT_MAP_SIGMAS
    smoke_sizes: dict[str, Any] | None = None

    @property
    def runs(self) -> list[Run]:
        """Every (direction, seed): VisA -> MVTec AD first, then MVTec AD -> the others."""
        runs = []
        for auxiliary in ("visa", "mvtec"):
            targets = tuple(t for t in self.targets if auxiliary_of(t) == auxiliary)
            runs += [Run(auxiliary, seed, targets) for seed in self.seeds] if targets else []
        return runs


def _present(root: Path, name: str) -> bool:
    folder = root / name
    if not folder.exists():
        return False
    check_layout(folder, get_source(name).reader)  # a folder with the wrong layout is an error, named
    return True


def _missing(root: Path, name: str, why: str) -> FileNotFoundError:
    return FileNotFoundError(f"{get_source(name).title} is not at {root / name} ({why}); "
                             f"run `feclip download {name} --root {root}` or pass another data root")


def find_targets(root: Path, datasets: Sequence[str] | None = None) -> tuple[str, ...]:
    """The data sets to evaluate: ``datasets`` checked, or every downloaded one (MVTec AD and VisA required).

    Args:
        root: Data root holding one folder per data set (``<root>/mvtec``, ``<root>/visa``, ...).
        datasets: Names of :data:`feclip.data.sources.SOURCES`; ``None``: every one present under ``root``.

    Returns:
        The targets, in the registry's order.

    Raises:
        ValueError: An unknown name.
        FileNotFoundError: A named set, or the training set it needs, is missing (the message says how
            to download it); by default, MVTec AD or VisA is missing.
        feclip.data.sources.LayoutError: A data set's folder has the wrong layout.
    """
    if datasets is None:
        for name in ("mvtec", "visa"):
            if not _present(root, name):
                raise _missing(root, name, "the paper's protocol trains and evaluates on both")
        return tuple(name for name in SOURCES if _present(root, name))
    wanted = list(dict.fromkeys(get_source(name).name for name in datasets))
    for name in wanted:
        if not _present(root, name):
            raise _missing(root, name, "named in datasets")
        if not _present(root, auxiliary_of(name)):
            raise _missing(root, auxiliary_of(name), f"its test split trains the model evaluated on {name}")
    return tuple(name for name in SOURCES if name in wanted)


def plan_key(plan: Plan) -> dict[str, Any]:
    """Everything that makes two reproductions different ones (JSON values)."""
    profile = plan.profile
    return {
        "profile": profile.name, "backbone": profile.backbone, "pretrained": profile.pretrained,
        "data_root": str(Path(profile.data_root).expanduser().resolve()), "targets": list(plan.targets),
        "seeds": list(plan.seeds), "epochs": profile.epochs, "batch_size": profile.batch_size,
        "adapter_lr": profile.adapter_lr, "fc_patch_lr": profile.fc_patch_lr,
        "images_per_category": profile.max_images_per_category, "map_sigmas": [float(s) for s in plan.map_sigmas],
        "smoke_sizes": plan.smoke_sizes, "feclip_version": feclip.__version__,
    }


def git_commit() -> str | None:
    """The commit of the feclip source tree (``-dirty`` when its files differ from it), or ``None``.

    ``None`` when feclip is not in a git checkout (an installed wheel), or git is missing.
    """
    package = Path(feclip.__file__).parent

    def git(*arguments: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *arguments], cwd=package, capture_output=True, text=True, timeout=10,
                              check=False)

    try:
        if git("ls-files", "--error-unmatch", "__init__.py").returncode != 0:  # not feclip's own repository
            return None
        head = git("rev-parse", "HEAD")
        if head.returncode != 0 or not head.stdout.strip():
            return None
        dirty = git("diff", "--quiet", "HEAD", "--", ".").returncode != 0
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("-dirty" if dirty else "")


def provenance(profile: Profile) -> dict[str, Any]:
    """What produces a result now: profile, backbone, model defaults, versions, commit and date."""
    model = FEClipConfig()
    return {
        "profile": profile.name, "smoke": profile.is_smoke, "label": SMOKE_LABEL if profile.is_smoke else "",
        "backbone": profile.backbone, "pretrained": profile.pretrained, "device": profile.device,
        "epochs": profile.epochs, "batch_size": profile.batch_size, "resize_mode": model.resize_mode,
        "map_score": model.map_score, "feclip_version": feclip.__version__, "git_commit": git_commit(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def read_manifest(folder: Path) -> dict[str, Any] | None:
    """The manifest of an output folder, or ``None`` if it has none.

    Raises:
        ValueError: The manifest exists but is not valid JSON (its path is named).
    """
    path = folder / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not a valid reproduction manifest: {error}") from error


def write_manifest(out: Path, plan: Plan, *, finished: bool) -> None:
    """Write ``<out>/reproduction.json`` atomically (the plan, what produced it, finished or not)."""
    previous = read_manifest(out) or {}
    manifest = {"plan": plan_key(plan), "provenance": provenance(plan.profile), "finished": finished,
                "started": previous.get("started") or datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
    text = json.dumps(manifest, indent=2) + "\n"
    atomic_write(out / MANIFEST, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _differences(key: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    return {name: other.get(name) for name in key if other.get(name) != key[name]}


def choose_output_folder(plan: Plan, results_root: Path, out: Path | None = None,
                         today: datetime.date | None = None) -> Path:
    """Where the reproduction writes: ``out``, an unfinished folder of the same plan, or ``<results_root>/<date>``.

    A killed reproduction restarts where it stopped: without ``out``, the newest folder under
    ``results_root`` whose manifest holds the same plan and is not finished is reused. Otherwise
    ``<results_root>/<today>`` (``<today>-2``, ``-3``... when that holds another plan).

    Raises:
        ValueError: ``out`` holds another plan (the differing settings are named).
    """
    key = plan_key(plan)
    if out is not None:
        manifest = read_manifest(out)
        if manifest is not None and manifest.get("plan") != key:
            raise ValueError(f"{out} holds a reproduction with other settings "
                             f"({_differences(key, manifest.get('plan', {}))}); choose another output folder")
        return out
    if results_root.is_dir():
        for folder in sorted((p for p in results_root.iterdir() if p.is_dir()), reverse=True):
            manifest = read_manifest(folder)
            if manifest is not None and manifest.get("plan") == key and not manifest.get("finished"):
                return folder
    date = (today or datetime.date.today()).isoformat()
    for suffix in ("", *(f"-{n}" for n in range(2, 1000))):
        folder = results_root / f"{date}{suffix}"
        manifest = read_manifest(folder) if folder.is_dir() else None
        if not folder.exists() or (manifest is not None and manifest.get("plan") == key):
            return folder
    raise RuntimeError(f"no free output folder for {date} under {results_root}")


def with_plan_settings(profile: Profile, *, data_root: Path, epochs: int | None,
                       images_per_category: int | None) -> Profile:
    """``profile`` with the reproduction's data root and, where given, epochs and evaluation cap."""
    changes: dict[str, Any] = {"data_root": data_root}
    if epochs is not None:
        changes["epochs"] = epochs
    if images_per_category is not None:
        changes["max_images_per_category"] = images_per_category
    return dataclasses.replace(profile, **changes)
