"""FE-CLIP's model configuration: everything that defines a model besides the backbone's weights.

:class:`FEClipConfig` is what :class:`feclip.model.FEClip` is built from, what a checkpoint stores
in its header (:mod:`feclip.checkpoint`) and what the command line's model flags set.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from feclip.adapters import LfsStatistic
from feclip.dct import canonical_basis
from feclip.prompts import PAPER_PROMPTS

__all__ = ["FC_PATCH_INITS", "MAP_SCORES", "FEClipConfig"]

FcPatchInit = Literal["random", "clip"]
MapScore = Literal["probability", "logit_margin"]
ResizeMode = Literal["squash", "crop"]
FC_PATCH_INITS: tuple[str, ...] = ("random", "clip")
MAP_SCORES: tuple[str, ...] = ("probability", "logit_margin")


@dataclass
class FEClipConfig:
    """Everything that defines an FE-CLIP model besides the backbone's weights.

    Attributes:
        backbone: open_clip model name the adapters were built for (``None``: unknown, and the model
            cannot be saved). :class:`~feclip.model.FEClip` records the injected backbone's own name when it was made
            by :func:`feclip.backbones.create_clip` and the caller does not name it.
        pretrained: Pretrained tag or path of the backbone (``None``: random weights).
        backbone_seed: Seed of a random backbone (``pretrained=None``), so a checkpoint can rebuild it.
        quick_gelu: Whether the backbone uses QuickGELU (OpenAI's CLIPs do); :class:`~feclip.model.FEClip` reads it
            from the backbone's modules. ``None`` only in checkpoints written before it was recorded.
        tap_indices: Tapped blocks (0-based); ``None`` picks :func:`feclip.taps.default_tap_indices`.
        ffe_window: FFE window side ``P``.
        lfs_window: LFS window side ``Q``.
        lfs_statistic: ``"mean"``, ``"abs"`` or ``"power"``.
        lambda_fuse: Fusion weight ``lambda`` of the adapter branch.
        basis: ``"dct"`` (FE-CLIP) or ``"hartley"`` (ablation: the real Hartley form of the DFT); the old
            name ``"dft"`` is read as ``"hartley"``.
        use_ffe: Whether the FFE branch is used.
        use_lfs: Whether the LFS branch is used.
        temperature: Softmax temperature ``tau``.
        use_clip_logit_scale: Use CLIP's own learned temperature instead of ``temperature``.
        normal_prompts: Prompt ensemble of the normal state.
        anomalous_prompts: Prompt ensemble of the anomalous state.
        fc_patch_init: ``"random"`` (PyTorch's default ``nn.Linear`` initialisation, drawn from the global
            RNG; the reference implementation's default) or ``"clip"`` (CLIP's own projection ``visual.proj``).
        map_score: Reported anomaly map: ``"probability"`` (the tap mean of the softmax probabilities, in
            ``[0, 1]``) or ``"logit_margin"`` (the tap mean of ``(cos_anomalous - cos_normal) / tau``).
        resize_mode: How images are fitted to the backbone's input for this model (the transform it was
            trained with): ``"squash"`` or ``"crop"``, see :func:`feclip.data.transforms_for_clip`.
    """

    backbone: str | None = "ViT-L-14-336"
    pretrained: str | None = "openai"
    backbone_seed: int = 0
    quick_gelu: bool | None = None
    tap_indices: list[int] | None = None
    ffe_window: int = 3
    lfs_window: int = 3
    lfs_statistic: LfsStatistic = "mean"
    lambda_fuse: float = 0.1
    basis: str = "dct"
    use_ffe: bool = True
    use_lfs: bool = True
    temperature: float = 0.07
    use_clip_logit_scale: bool = False
    normal_prompts: list[str] = field(default_factory=lambda: [PAPER_PROMPTS[0]])
    anomalous_prompts: list[str] = field(default_factory=lambda: [PAPER_PROMPTS[1]])
    fc_patch_init: FcPatchInit = "random"
    map_score: MapScore = "probability"
    resize_mode: ResizeMode = "squash"

    def __post_init__(self) -> None:
        self.basis = canonical_basis(self.basis)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> FEClipConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error that names them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown FE-CLIP config keys: {unknown}")
        return cls(**values)
