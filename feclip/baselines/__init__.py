"""The detectors FE-CLIP is compared against: plain CLIP, WinCLIP, and few-shot memory banks.

Every class here is a :class:`~feclip.predictor.Detector` (``embed``, ``predict``, ``set_prompts``,
``temperature``) and so an :class:`~feclip.predictor.AnomalyPredictor`: called on normalised
images ``(B, 3, H, W)`` it returns an :class:`~feclip.predictor.AnomalyPrediction`.
"""

from feclip.baselines.clip_zero_shot import (
    ClipZeroShot,
    ClipZeroShotConfig,
    ClipZeroShotFeatures,
    ClipZeroShotOutput,
    prompt_pair,
)
from feclip.baselines.few_shot import (
    FEClipFewShot,
    FewShotOutput,
    PatchMemoryBank,
    WinClipFewShot,
    visual_association_score,
)
from feclip.vit import VitTokens, encode_vit, encode_windows
from feclip.baselines.winclip import (
    WinClip,
    WinClipConfig,
    WinClipFeatures,
    WinClipOutput,
    harmonic_aggregation,
    harmonic_mean,
    make_window_masks,
    window_indices,
)

__all__ = [
    "ClipZeroShot",
    "ClipZeroShotConfig",
    "ClipZeroShotFeatures",
    "ClipZeroShotOutput",
    "prompt_pair",
    "WinClip",
    "WinClipConfig",
    "WinClipFeatures",
    "WinClipOutput",
    "make_window_masks",
    "window_indices",
    "harmonic_aggregation",
    "harmonic_mean",
    "PatchMemoryBank",
    "visual_association_score",
    "FewShotOutput",
    "WinClipFewShot",
    "FEClipFewShot",
    "VitTokens",
    "encode_vit",
    "encode_windows",
]
