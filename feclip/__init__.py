"""feclip: zero-shot industrial anomaly detection with CLIP, WinCLIP and FE-CLIP.

Importing the package imports nothing heavy (the command line's ``--help`` must answer at once);
:mod:`feclip.backbones` registers the ``feclip-tiny`` open_clip config when it is first imported,
which every module that builds a backbone does.
"""

__version__ = "0.1.0"
