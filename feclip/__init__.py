"""feclip: zero-shot industrial anomaly detection with CLIP, WinCLIP and FE-CLIP."""

from feclip import backbones  # noqa: F401  (registers the feclip-tiny open_clip config)

__version__ = "0.1.0"
