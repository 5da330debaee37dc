"""Run profiles: every size the notebooks and smoke runs use, in one place.

* ``full``: the paper's setting. ViT-L-14-336 with OpenAI weights on a GPU, MVTec AD and
  VisA under ``$FECLIP_DATA`` (``$FECLIP_DATA/mvtec`` and ``$FECLIP_DATA/visa``, each as
  released), 9 epochs at batch 16.
* ``smoke``: feclip's toy CLIP (``feclip-tiny`` pretrained on the captioned synthetic world,
  :mod:`feclip.toy_clip`; not OpenAI's CLIP) on the synthetic defect benchmark, on a CPU,
  seconds per notebook cell. Its numbers show that the code runs and what the method does in
  the toy world; they are not the paper's numbers.
* ``auto`` (default): ``full`` when a GPU, the weights and both data sets are all
  available, otherwise ``smoke``.

The profile is chosen with the environment variable ``FECLIP_PROFILE``. This module imports
torch only inside the functions that need it, so the command line's ``--help`` can read the
profiles' sizes quickly.
"""

from __future__ import annotations

import dataclasses
import html
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DATA_ROLES",
    "Profile",
    "dataset_folder",
    "default_num_workers",
    "MAX_DEFAULT_WORKERS",
    "FULL",
    "SMOKE",
    "PROFILES",
    "resolve_profile",
    "full_profile_available",
    "ensure_data",
    "use_profile",
    "announce",
]


@dataclass(frozen=True)
class Profile:
    """Sizes and sources of one run profile.

    Attributes:
        name: ``"full"`` or ``"smoke"``.
        backbone: open_clip model name.
        pretrained: Pretrained tag, or ``None`` for random weights.
        device: ``"cuda"`` or ``"cpu"``.
        data_root: Root holding the data sets (``mvtec``/``visa``, or the synthetic ``textures``/``objects``).
        train_dataset: Data set trained on (the auxiliary data set of the zero-shot protocol), named
            ``KIND`` or ``KIND-FOLDER`` (:func:`dataset_folder`).
        eval_dataset: Data set evaluated on (never seen in training), named the same way.
        epochs: Training epochs.
        batch_size: Training batch size.
        max_images_per_category: Cap on evaluation images per category (``None``: all).
        num_workers: DataLoader workers (the full profile: :func:`default_num_workers`).
        winclip_backbone: Backbone of the WinCLIP baseline.
        winclip_pretrained: Pretrained tag of the WinCLIP backbone.
        winclip_images_per_category: Cap on evaluated images per category for WinCLIP, which re-encodes
            every window (``None``: all).
        adapter_lr: Learning rate of the adapters.
        fc_patch_lr: Learning rate of ``fc_patch``.
        ablation_epochs: Training epochs of each ablation run.
        ablation_images_per_category: Cap on evaluated images per category in ablations (``None``: all).
        num_threads: Torch CPU threads (``None``: torch's default). One thread is fastest for the tiny backbone.
        seed: Random seed.
        fallback_reason: Why ``auto`` chose this profile instead of ``full`` (``None`` when it was asked for).
    """

    name: str
    backbone: str
    pretrained: str | None
    device: str
    data_root: Path
    train_dataset: str
    eval_dataset: str
    epochs: int
    batch_size: int
    max_images_per_category: int | None
    num_workers: int
    winclip_backbone: str
    winclip_pretrained: str | None
    winclip_images_per_category: int | None
    adapter_lr: float
    fc_patch_lr: float
    ablation_epochs: int
    ablation_images_per_category: int | None
    num_threads: int | None
    seed: int = 0
    fallback_reason: str | None = None

    @property
    def is_smoke(self) -> bool:
        """Whether this is the CPU smoke profile."""
        return self.name == "smoke"

    def spec(self, name: str) -> str:
        """Dataset spec for :func:`feclip.data.build_dataset`: ``"visa"`` -> ``"visa:<data_root>/visa"``,
        ``"synth-objects"`` -> ``"synth:<data_root>/objects"``."""
        kind, folder = dataset_folder(name)
        return f"{kind}:{self.data_root / folder}"


def dataset_folder(name: str) -> tuple[str, str]:
    """A profile's data set name as ``(kind, folder under the data root)``; the one reader of these names.

    ``KIND`` names a data set in the folder of that name (``"mvtec"`` -> ``("mvtec", "mvtec")``);
    ``KIND-FOLDER`` one in another folder (``"synth-objects"`` -> ``("synth", "objects")``).
    """
    kind, _, folder = name.partition("-")
    return kind, folder or kind


# H4 measured ~36 images/s per loader worker (benchmarks/RESULTS.md, "loader"): 8 workers feed an H100's
# 237 images/s; more only cost host memory.
MAX_DEFAULT_WORKERS = 8


def default_num_workers() -> int:
    """DataLoader workers by default: one per CPU core this process may use, at most :data:`MAX_DEFAULT_WORKERS`.

    ``os.sched_getaffinity`` counts the cores a container or ``taskset`` grants (a Colab runtime: 2),
    where it exists; ``os.cpu_count`` elsewhere. Never more workers than cores, so DataLoader never warns.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cores, MAX_DEFAULT_WORKERS))


def _data_root() -> Path:
    return Path(os.environ.get("FECLIP_DATA", "data")).expanduser()


def _smoke_data_root() -> Path:
    default = Path.home() / ".cache" / "feclip" / "synthetic"
    return Path(os.environ.get("FECLIP_SMOKE_DATA", default)).expanduser()


FULL = Profile(
    name="full",
    backbone="ViT-L-14-336",
    pretrained="openai",
    device="cuda",
    data_root=_data_root(),
    train_dataset="visa",
    eval_dataset="mvtec",
    epochs=9,
    batch_size=16,
    max_images_per_category=None,
    num_workers=default_num_workers(),  # a 2-vCPU Colab runtime gets 2, a GPU node up to 8
    winclip_backbone="ViT-B-16-plus-240",
    winclip_pretrained="laion400m_e32",
    winclip_images_per_category=None,
    adapter_lr=5e-4,
    fc_patch_lr=5e-6,
    ablation_epochs=9,
    ablation_images_per_category=None,
    num_threads=None,
)

SMOKE = Profile(
    name="smoke",
    backbone="feclip-tiny",
    pretrained="toy",
    device="cpu",
    data_root=Path.home() / ".cache" / "feclip" / "synthetic",
    train_dataset="synth-objects",
    eval_dataset="synth-textures",
    epochs=6,
    batch_size=8,
    max_images_per_category=None,
    num_workers=0,
    winclip_backbone="feclip-tiny",
    winclip_pretrained="toy",
    winclip_images_per_category=8,
    # Six CPU epochs on 210 images: the full recipe's rates (5e-4, and 5e-6 for fc_patch, the
    # reference implementation's 1/100) barely move a randomly initialised fc_patch in so few
    # steps. Ten times the adapters' rate, and the same rate for fc_patch, let the toy run learn
    # a map (benchmarks/RESULTS.md, "Toy world": textures pixel AUROC 0.57 -> 0.66, seed 0).
    adapter_lr=5e-3,
    fc_patch_lr=5e-3,
    ablation_epochs=2,
    ablation_images_per_category=6,
    num_threads=1,
)

PROFILES = {"full": FULL, "smoke": SMOKE}


DATA_ROLES = ("train", "eval")  # the auxiliary data set trained on, the target evaluated on


def _role_datasets(profile: Profile, data: Sequence[str]) -> list[str]:
    """The profile's data set names for the roles a chapter uses (``"train"``, ``"eval"``)."""
    unknown = sorted(set(data) - set(DATA_ROLES))
    if unknown or not data:
        raise ValueError(f"data must name roles of {DATA_ROLES}, got {list(data)}")
    return [profile.train_dataset if role == "train" else profile.eval_dataset for role in DATA_ROLES if role in data]


def full_profile_available(data: Sequence[str] = DATA_ROLES) -> tuple[bool, str]:
    """Whether the full profile can run here, and if not, why.

    Args:
        data: The roles whose data sets must be present: ``"train"`` (VisA, the auxiliary data set)
            and/or ``"eval"`` (MVTec AD, the target). A chapter that only evaluates needs only ``"eval"``.

    Returns:
        ``(available, reason)``: the reason names what is missing (no GPU, which folder, which weights).
    """
    import torch

    from feclip.backbones import pretrained_available

    if not torch.cuda.is_available():
        return False, "no CUDA GPU"
    root = _data_root()
    missing = [folder for folder in (dataset_folder(name)[1] for name in _role_datasets(FULL, data))
               if not (root / folder).is_dir()]
    if missing:
        return False, f"no {', '.join(str(root / folder) for folder in missing)} (FECLIP_DATA={root}; see feclip download)"
    if not pretrained_available(FULL.backbone, FULL.pretrained):
        return False, f"{FULL.backbone} / {FULL.pretrained} weights not reachable"
    return True, "GPU, weights and data found"


def resolve_profile(name: str | None = None, *, data: Sequence[str] = DATA_ROLES) -> Profile:
    """The profile to run: ``name``, else ``$FECLIP_PROFILE``, else ``"auto"``.

    Args:
        name: ``"full"``, ``"smoke"`` or ``"auto"``.
        data: The data roles the caller uses (see :func:`full_profile_available`); ``auto`` needs only those.

    Returns:
        The resolved :class:`Profile` (``auto`` becomes ``full`` or ``smoke``; a smoke profile chosen by
        ``auto`` says why in ``fallback_reason``).
    """
    name = (name or os.environ.get("FECLIP_PROFILE") or "auto").lower()
    if name == "auto":
        available, reason = full_profile_available(data)
        if available:
            return resolve_profile("full")
        return dataclasses.replace(resolve_profile("smoke"), fallback_reason=reason)
    if name == "full":
        return dataclasses.replace(FULL, data_root=_data_root())
    if name == "smoke":
        return dataclasses.replace(SMOKE, data_root=_smoke_data_root())
    raise ValueError(f"FECLIP_PROFILE must be 'full', 'smoke' or 'auto', got {name!r}")


def ensure_data(profile: Profile, data: Sequence[str] = DATA_ROLES) -> Path:
    """The profile's data root, generating the synthetic benchmark there first if the smoke profile needs it.

    Generation writes to a temporary sibling folder and renames it into place, so notebooks
    that call this at the same time never see a half-written benchmark.

    Args:
        profile: The run profile.
        data: The data roles the caller uses (``"train"``, ``"eval"``); only their folders must exist.

    Returns:
        The data root.

    Raises:
        FileNotFoundError: The full profile's data sets are not under ``profile.data_root``.
    """
    root = profile.data_root
    needed = [root / dataset_folder(name)[1] for name in _role_datasets(profile, data)]
    if all(path.is_dir() for path in needed):
        return root
    if not profile.is_smoke:
        missing = ", ".join(str(p) for p in needed if not p.is_dir())
        raise FileNotFoundError(f"data set folders not found: {missing} (set FECLIP_DATA)")
    from feclip.data.synthetic import generate_benchmark

    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    try:
        generate_benchmark(staging, seed=profile.seed)
        try:
            staging.rename(root)
        except OSError:  # another process finished first: its copy is identical (same seed)
            pass
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root


def use_profile(name: str | None = None, *, data: Sequence[str] = DATA_ROLES) -> Profile:
    """Resolve the profile, apply its runtime settings (CPU threads, seed) and announce it.

    This is what every notebook's parameters cell calls.

    Args:
        name: ``"full"``, ``"smoke"`` or ``"auto"``; ``None`` reads ``$FECLIP_PROFILE``.
        data: The data roles the chapter uses: ``("eval",)`` for a chapter that only evaluates on the
            target (MVTec AD), so that ``auto`` does not ask for VisA too.

    Returns:
        The resolved :class:`Profile`.
    """
    import torch

    profile = resolve_profile(name, data=data)
    if profile.num_threads is not None:
        torch.set_num_threads(profile.num_threads)
    torch.manual_seed(profile.seed)
    announce(profile)
    return profile


def announce(profile: Profile) -> None:
    """Show which profile ran, as one admonition in a notebook (plain text elsewhere)."""
    if profile.is_smoke:
        title = "Profile: smoke"
        body = (
            f"Ran on the CPU with feclip's toy CLIP ({profile.backbone} pretrained on the synthetic world, not "
            "OpenAI's CLIP) on the synthetic defect benchmark. These numbers show that the code runs and what "
            "the method does in the toy world; they are not the paper's numbers. "
            "Set FECLIP_PROFILE=full on a GPU with the OpenAI weights and MVTec AD / VisA to reproduce the paper."
        )
        if profile.fallback_reason:
            body = f"FECLIP_PROFILE=auto fell back to smoke: {profile.fallback_reason}. " + body
    else:
        title = "Profile: full"
        body = f"{profile.backbone} ({profile.pretrained}) on {profile.device}, data under {profile.data_root}."
    try:
        from IPython import get_ipython
        from IPython.display import HTML, display

        if get_ipython() is not None:
            display(
                HTML(
                    f'<div class="admonition {"warning" if profile.is_smoke else "note"}">'
                    f'<p class="admonition-title">{html.escape(title)}</p><p>{html.escape(body)}</p></div>'
                )
            )
            return
    except ImportError:
        pass
    print(f"{title}: {body}")
