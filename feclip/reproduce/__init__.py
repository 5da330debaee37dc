"""``feclip reproduce``: the paper's zero-shot protocol in both directions, over several seeds, resumably.

Train on VisA's test split and evaluate on MVTec AD; train on MVTec AD's test split and evaluate on
VisA and every other downloaded data set; five seeds by default; every evaluation scored with the
maps unsmoothed and smoothed (``map_sigma`` 0 and 4). Results go to ``results/<date>/``: per-seed
rows and a summary with the paper's and the reference implementation's reported numbers beside ours,
as Markdown and CSV.

* :mod:`~feclip.reproduce.plan`: the runs, the output folder, what produced a result;
* :mod:`~feclip.reproduce.runner`: :func:`reproduce`, resumable per (direction, seed) and per evaluation;
* :mod:`~feclip.reproduce.tables`: per-seed rows, the summary, Markdown and CSV;
* :mod:`~feclip.reproduce.reported`: the published numbers, each with its source;
* :mod:`~feclip.reproduce.smoke`: the smoke profile's synthetic stand-ins in the real layouts;
* :mod:`~feclip.reproduce.command`: the command line (``add_reproduce_arguments``, ``run_reproduce``).
"""

from feclip._lazy import lazy_exports

# Imported on first use (PEP 562): `feclip reproduce --help` reads only the light command module.
_LAZY = {
    "feclip.reproduce.command": ("add_reproduce_arguments", "run_reproduce"),
    "feclip.reproduce.plan": ("DEFAULT_MAP_SIGMAS", "DEFAULT_SEEDS", "SMOKE_LABEL", "Plan", "Run"),
    "feclip.reproduce.reported": ("PAPER", "REFERENCE", "ReportedResult", "reported_results"),
    "feclip.reproduce.runner": ("Reproduction", "evaluate_at_sigmas", "read_evaluation", "reproduce"),
    "feclip.reproduce.smoke": ("SmokeSizes", "write_smoke_data"),
}
__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())


__all__ = [
    "DEFAULT_MAP_SIGMAS", "DEFAULT_SEEDS", "PAPER", "REFERENCE", "SMOKE_LABEL", "Plan", "ReportedResult", "Reproduction",
    "Run", "SmokeSizes", "add_reproduce_arguments", "evaluate_at_sigmas", "read_evaluation", "reported_results",
    "reproduce", "run_reproduce", "write_smoke_data",
]
