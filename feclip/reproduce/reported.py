"""The published numbers a reproduction is compared with, each with where it was read.

Two sources, never mixed in one row:

* **paper**: Gong et al., "FE-CLIP: Frequency Enhanced CLIP Model for Zero-Shot Anomaly Detection
  and Segmentation", ICCV 2025 (the Open Access PDF, proceedings pp. 21220-21229). Table 1 reports
  image-level AUROC / AP (ZSAD), Table 2 pixel-level AUROC / PRO (ZSAS), both on p. 21225, FE-CLIP's
  row. Section 4.2: trained on MVTec AD's test split and evaluated on every other set, trained on
  VisA's for MVTec AD; "All experiment results are averaged under five runs"; "dataset-level results,
  which are averaged across their respective sub-datasets" (macro). The paper gives no standard
  deviation, no image F1-max, no pixel AP, and does not say whether its maps were smoothed.
* **reference implementation**: the anomalib fork by the design note's author (github.com/taewanHwang/
  anomalib, commit :data:`REFERENCE_COMMIT`), its result notes
  ``examples/notebooks/11_fe_clip_variant/001_result.md``, section "4. Spread3 전체 벤치마크"
  (taps [15, 18, 21, 23], the ones feclip uses by default). The runs are
  ``001_feclip_original/exp_spread3_benchmark.py``: seeds 42, 123, 456, 789, 1024; image AUROC and
  AP and pixel AUROC, macro over categories; images resized to 336 on the short side and centre
  cropped; the probability map, not smoothed (``map_sigma`` 0); no AUPRO, F1-max or pixel AP in
  this benchmark. Its "± std" is the population standard deviation over the five seeds (n, not
  n - 1): the note's per-seed BTAD pixel AUROC values give 1.38 (n) and 1.54 (n - 1), and it
  reports 1.4. Image AP appears only in the per-seed rows; its mean here is derived from them and
  marked as such.

Values are percentages as printed. ``location`` says where each was read, so every number can be
checked against its source.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

__all__ = [
    "PAPER",
    "PAPER_CITATION",
    "REFERENCE",
    "REFERENCE_CITATION",
    "REFERENCE_COMMIT",
    "REFERENCE_PER_SEED",
    "REFERENCE_SEEDS",
    "ReportedResult",
    "SeedResult",
    "reported_results",
]

PAPER_CITATION = "Gong et al., FE-CLIP, ICCV 2025"
REFERENCE_COMMIT = "264cb5bbb692484396b5b8e41d68307fb239f884"
REFERENCE_NOTES = "examples/notebooks/11_fe_clip_variant/001_result.md"
REFERENCE_CITATION = f"taewanHwang/anomalib@{REFERENCE_COMMIT[:7]}, {REFERENCE_NOTES}"
REFERENCE_SEEDS = (42, 123, 456, 789, 1024)


@dataclass(frozen=True)
class ReportedResult:
    """One published number.

    Attributes:
        source: ``"paper"`` or ``"reference implementation"``.
        setting: What produced it, in a few words.
        dataset: Data set name of :data:`feclip.data.sources.SOURCES` (``"mvtec"``, ``"visa"``, ...).
        trained_on: The data set whose test split trained the model (``"visa"`` for MVTec AD, else ``"mvtec"``).
        metric: Column of :data:`feclip.metrics.METRIC_COLUMNS` (``"image_auroc"``, ``"pixel_aupro"``...).
        value: Mean, in percent.
        std: Standard deviation over seeds in percent, ``None`` where none was reported.
        n_seeds: Runs averaged.
        map_sigma: Gaussian smoothing of the maps in pixels, ``None`` where the source does not say.
        citation: The source.
        location: Where in the source (table, row and column; or file and line).
        derived: How the value was computed from the source when the source does not print it; empty otherwise.
    """

    source: str
    setting: str
    dataset: str
    trained_on: str
    metric: str
    value: float
    std: float | None
    n_seeds: int
    map_sigma: float | None
    citation: str
    location: str
    derived: str = ""


@dataclass(frozen=True)
class SeedResult:
    """One seed's row of the reference implementation's notes (percent)."""

    dataset: str
    seed: int
    image_auroc: float
    image_ap: float
    pixel_auroc: float
    line: int


# our name -> (the paper's column, the two numbers), in the order of the paper's tables.
_TABLE_1 = {  # AUROC / AP, FE-CLIP row
    "mvtec": ("MVTec AD", 91.9, 96.5), "visa": ("VisA", 84.6, 86.6), "mpdd": ("MPDD", 78.0, 82.6),
    "btad": ("BTAD", 90.3, 90.0), "dagm": ("DAGM", 97.5, 92.3), "dtd": ("DTD-Synthetic", 98.3, 99.4),
    "brainmri": ("BrainMRI", 94.8, 93.8), "br35h": ("Br35H", 96.8, 93.8),
}
_TABLE_2 = {  # AUROC / PRO, FE-CLIP row
    "mvtec": ("MVTec AD", 92.6, 88.3), "visa": ("VisA", 95.9, 92.8), "mpdd": ("MPDD", 97.0, 90.5),
    "btad": ("BTAD", 95.6, 80.4), "dagm": ("DAGM", 98.5, 96.6), "dtd": ("DTD-Synthetic", 99.0, 97.4),
    "clinicdb": ("CVC-ClinicDB", 84.5, 69.2), "kvasir": ("Kvasir", 79.8, 60.6),
}
_PAPER_SETTING = "FE-CLIP as published, ViT-L/14@336px, mean of five runs"


def _trained_on(dataset: str) -> str:
    return "visa" if dataset == "mvtec" else "mvtec"


def _paper() -> tuple[ReportedResult, ...]:
    rows = []
    for table, values, metrics in ((1, _TABLE_1, ("image_auroc", "image_ap")),
                                   (2, _TABLE_2, ("pixel_auroc", "pixel_aupro"))):
        for dataset, (column, *numbers) in values.items():
            for position, (metric, number) in enumerate(zip(metrics, numbers)):
                what = ("AUROC", "AP" if table == 1 else "PRO")[position]
                rows.append(ReportedResult(
                    "paper", _PAPER_SETTING, dataset, _trained_on(dataset), metric, number, None, 5, None,
                    PAPER_CITATION, f"Table {table} (p. 21225), row FE-CLIP, column {column}, {what}"))
    return tuple(rows)


PAPER: tuple[ReportedResult, ...] = _paper()

REFERENCE_PER_SEED: tuple[SeedResult, ...] = tuple(
    SeedResult(dataset, seed, auroc, ap, pixel, first_line + offset)
    for dataset, first_line, rows in (
        ("mvtec", 122, ((90.7, 95.6, 91.1), (90.7, 95.6, 91.1), (91.0, 95.5, 91.0), (91.0, 95.8, 90.9),
                        (90.2, 95.3, 91.2))),
        ("visa", 131, ((87.5, 89.6, 93.8), (88.6, 90.6, 93.7), (88.3, 90.5, 93.9), (88.2, 90.4, 93.5),
                       (88.3, 90.2, 93.6))),
        ("btad", 140, ((89.3, 93.1, 87.7), (89.7, 93.5, 89.4), (90.4, 93.4, 85.5), (89.3, 92.6, 86.4),
                       (90.1, 93.4, 88.3))),
    )
    for offset, (seed, (auroc, ap, pixel)) in enumerate(zip(REFERENCE_SEEDS, rows))
)

# The summary table of the same section: (image AUROC, std, pixel AUROC, std) at lines 113-115.
_REFERENCE_SUMMARY = {
    "mvtec": (113, 90.7, 0.3, 91.1, 0.1),
    "visa": (114, 88.2, 0.4, 93.7, 0.1),
    "btad": (115, 89.8, 0.4, 87.5, 1.4),
}
_REFERENCE_SETTING = ("spread_3 taps [15, 18, 21, 23], ViT-L-14-336 openai, 9 epochs, seeds 42 123 456 789 1024, "
                      "336 px short side + centre crop, probability map")


def _reference() -> tuple[ReportedResult, ...]:
    rows = []
    for dataset, (line, auroc, auroc_std, pixel, pixel_std) in _REFERENCE_SUMMARY.items():
        common = dict(source="reference implementation", setting=_REFERENCE_SETTING, dataset=dataset,
                      trained_on=_trained_on(dataset), n_seeds=len(REFERENCE_SEEDS), map_sigma=0.0,
                      citation=REFERENCE_CITATION)
        rows.append(ReportedResult(metric="image_auroc", value=auroc, std=auroc_std,
                                   location=f"line {line}, 'Ours AUROC'", **common))
        rows.append(ReportedResult(metric="pixel_auroc", value=pixel, std=pixel_std,
                                   location=f"line {line}, 'Ours pAUROC'", **common))
        seeds = [row for row in REFERENCE_PER_SEED if row.dataset == dataset]
        aps = [row.image_ap for row in seeds]
        rows.append(ReportedResult(
            metric="image_ap", value=round(statistics.fmean(aps), 1), std=round(statistics.pstdev(aps), 1),
            location=f"lines {seeds[0].line}-{seeds[-1].line}, column AP",
            derived="mean and population std of the five per-seed values (computed by feclip; not printed)",
            **common))
    return tuple(rows)


REFERENCE: tuple[ReportedResult, ...] = _reference()


def reported_results(datasets: list[str] | tuple[str, ...] | None = None) -> list[ReportedResult]:
    """The published numbers of ``datasets`` (all when ``None``): the paper's first, then the reference's."""
    return [row for row in PAPER + REFERENCE if datasets is None or row.dataset in datasets]
