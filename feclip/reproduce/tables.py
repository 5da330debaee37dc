"""A reproduction's tables: per-seed rows, and a summary with the published numbers beside ours.

* ``per_seed.csv`` / ``per_seed.md``: one row per (direction, seed, target, map sigma): the macro row of
  its evaluation table (fractions in the CSV) and what produced it.
* ``summary.csv`` / ``summary.md``: per target, our mean and standard deviation over seeds at each map
  sigma (percent), then the paper's and the reference implementation's reported numbers
  (:mod:`feclip.reproduce.reported`), each row labelled with its source and cited. Ours use the sample
  standard deviation (n - 1); the reference implementation's notes print the population one (n); the
  paper prints means only.

Metrics: image AUROC, AP, F1-max; pixel AUROC, AUPRO (:data:`SUMMARY_METRICS`). Every file is
written atomically.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from feclip.checkpoint import atomic_write
from feclip.data.sources import get_source
from feclip.metrics import METRIC_COLUMNS
from feclip.reproduce.reported import ReportedResult, reported_results

__all__ = ["SUMMARY_METRICS", "build_tables", "per_seed_rows", "summarize", "write_tables"]

SUMMARY_METRICS = ("image_auroc", "image_ap", "image_f1max", "pixel_auroc", "pixel_aupro")
METRIC_TITLES = {"image_auroc": "image AUROC", "image_ap": "image AP", "image_f1max": "image F1-max",
                 "pixel_auroc": "pixel AUROC", "pixel_aupro": "pixel AUPRO"}
_RECORDED = ("epochs_trained", "profile", "smoke", "backbone", "pretrained", "resize_mode", "map_score",
             "images_per_category", "feclip_version", "git_commit", "date")
_STD_KIND = {"feclip": "sample (n - 1)", "paper": "", "reference implementation": "population (n)"}


def per_seed_rows(evaluations: Sequence[tuple[dict[str, Any], pd.DataFrame]]) -> pd.DataFrame:
    """One row per evaluation: its macro metrics (fractions) and its record.

    Args:
        evaluations: ``(record, table)`` pairs as :func:`feclip.reproduce.runner.read_evaluation` gives.
    """
    rows = []
    for record, table in evaluations:
        macro = table.loc["macro"]
        rows.append({"auxiliary": record["auxiliary"], "target": record["target"], "seed": int(record["seed"]),
                     "map_sigma": float(record["map_sigma"]), **{m: float(macro[m]) for m in METRIC_COLUMNS},
                     "n_categories": len(table.index.difference(["macro", "micro"])),
                     "n_images": int(macro["n_images"]), **{k: record.get(k) for k in _RECORDED}})
    return pd.DataFrame(rows)


def _weights(pretrained: Any) -> str:
    return f"pretrained `{pretrained}`" if isinstance(pretrained, str) and pretrained else "random weights"


def _ours(per_seed: pd.DataFrame) -> list[dict[str, Any]]:
    rows = []
    for (target, auxiliary, sigma), group in per_seed.groupby(["target", "auxiliary", "map_sigma"], sort=False):
        first = group.iloc[0]
        setting = (f"{first['backbone']} ({_weights(first['pretrained'])}), epochs {first['epochs_trained']}, "
                   f"{first['resize_mode']} resize, {first['map_score']} map")
        row = {"dataset": target, "trained_on": auxiliary, "source": "feclip", "smoke": bool(first["smoke"]),
               "setting": setting + (", synthetic stand-in data" if first["smoke"] else ""),
               "map_sigma": sigma, "n_seeds": len(group)}
        for metric in SUMMARY_METRICS:
            values = group[metric].astype(float) * 100
            row[metric] = values.mean()
            row[f"{metric}_std"] = values.std(ddof=1) if len(values) > 1 else math.nan
        rows.append(row | {"std_kind": _STD_KIND["feclip"], "citation": "this reproduction", "location": "per_seed.csv",
                           "derived": ""})
    return rows


def _reported(results: list[ReportedResult]) -> list[dict[str, Any]]:
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for result in results:
        row = rows.setdefault((result.source, result.dataset), {
            "dataset": result.dataset, "trained_on": result.trained_on, "source": result.source, "smoke": False,
            "setting": result.setting, "map_sigma": math.nan if result.map_sigma is None else result.map_sigma,
            "n_seeds": result.n_seeds, **{m: math.nan for m in SUMMARY_METRICS},
            **{f"{m}_std": math.nan for m in SUMMARY_METRICS}, "std_kind": _STD_KIND[result.source],
            "citation": result.citation, "location": [], "derived": []})
        row[result.metric] = result.value
        row[f"{result.metric}_std"] = math.nan if result.std is None else result.std
        row["location"].append(f"{METRIC_TITLES[result.metric]}: {result.location}")
        if result.derived:
            row["derived"].append(f"{METRIC_TITLES[result.metric]}: {result.derived}")
    return [row | {"location": "; ".join(row["location"]), "derived": "; ".join(row["derived"])}
            for row in rows.values()]


def summarize(per_seed: pd.DataFrame, targets: Sequence[str]) -> pd.DataFrame:
    """Per target: ours (mean, std over seeds, per sigma), then the paper's and the reference's numbers, in percent.

    Args:
        per_seed: :func:`per_seed_rows`.
        targets: Data sets in the order to show them.
    """
    ours = _ours(per_seed)
    reported = _reported(reported_results(list(targets)))
    rows = [row for target in targets for row in ours + reported if row["dataset"] == target]
    return pd.DataFrame(rows)


def build_tables(evaluations: Sequence[tuple[dict[str, Any], pd.DataFrame]],
                 targets: Sequence[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(per_seed, summary)`` of a reproduction's evaluations."""
    per_seed = per_seed_rows(evaluations)
    return per_seed, summarize(per_seed, targets)


# --------------------------------------------------------------------------- Markdown


def _markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _cell(mean: float, std: float, derived: bool) -> str:
    if math.isnan(mean):
        return "–"
    text = f"{mean:.1f}" if math.isnan(std) else f"{mean:.1f} ± {std:.1f}"
    return text + (" †" if derived else "")


def _dataset_title(name: str, smoke: bool) -> str:
    from feclip.reproduce.smoke import SMOKE_FAMILIES

    title = get_source(name).title
    return f"{title} stand-in (synthetic {SMOKE_FAMILIES.get(name, '?')})" if smoke else title


def _summary_markdown(summary: pd.DataFrame, produced_by: dict[str, Any]) -> str:
    smoke = bool(produced_by.get("smoke"))
    notes: dict[tuple[str, str], int] = {}
    rows = []
    for _, row in summary.iterrows():
        ours = row["source"] == "feclip"
        if not ours:
            notes.setdefault((row["source"], row["dataset"]), len(notes) + 1)
        label = ("feclip (smoke)" if smoke else "feclip") if ours else f"{row['source']} [{notes[(row['source'], row['dataset'])]}]"
        sigma = "not stated" if math.isnan(row["map_sigma"]) else f"{row['map_sigma']:g}"
        rows.append([_dataset_title(row["dataset"], smoke and ours), _dataset_title(row["trained_on"], smoke and ours),
                     label, sigma,
                     str(row["n_seeds"]), *(_cell(row[m], row[f"{m}_std"], METRIC_TITLES[m] + ":" in row["derived"])
                                            for m in SUMMARY_METRICS)])
    headers = ["data set", "trained on", "source", "σ", "seeds", *(METRIC_TITLES[m] for m in SUMMARY_METRICS)]
    seeds = " ".join(str(seed) for seed in produced_by.get("seeds", []))
    lines = ["# FE-CLIP zero-shot reproduction", ""]
    if smoke:
        lines += [f"> **{produced_by.get('label', 'SMOKE RUN')}**", ""]
    commit = produced_by.get("git_commit") or "unknown"
    commit = commit[:12] + ("-dirty" if commit.endswith("-dirty") else "")
    lines += [
        f"Produced by feclip {produced_by.get('feclip_version')} (commit {commit}) "
        f"with the `{produced_by.get('profile')}` profile: backbone `{produced_by.get('backbone')}` "
        f"({_weights(produced_by.get('pretrained'))}) on {produced_by.get('device')}, "
        f"epochs {produced_by.get('epochs')}, batch {produced_by.get('batch_size')}, seeds {seeds}, "
        f"`{produced_by.get('resize_mode')}` resize, `{produced_by.get('map_score')}` map, evaluation capped at "
        f"{produced_by.get('images_per_category') or 'no'} images per category; started "
        f"{produced_by.get('started')}, tables written {produced_by.get('date')}.",
        "",
        "Macro averages over each data set's categories, in percent. feclip: mean ± standard deviation over "
        "seeds (sample, n − 1), each seed a separate training run on the auxiliary data set's test split. "
        "σ: Gaussian smoothing of the maps in pixels before the pixel metrics. – : not reported, or undefined "
        "(pixel metrics without masks, image metrics when every image is anomalous). "
        "† derived from the source's per-seed values, not printed there.",
        "",
        _markdown_table(headers, rows),
        "",
    ]
    if smoke:
        lines += ["The paper's and the reference implementation's rows are for the real data sets; the smoke "
                  "rows are for synthetic stand-ins and cannot be compared with them.", ""]
    lines += ["Sources (the reference implementation's ± is the population standard deviation over its five "
              "seeds, n; the paper prints means of five runs without a deviation):", ""]
    for (source, dataset), number in notes.items():
        row = summary[(summary["source"] == source) & (summary["dataset"] == dataset)].iloc[0]
        derived = f" Derived: {row['derived']}." if row["derived"] else ""
        lines.append(f"{number}. {source}, {get_source(dataset).title}: {row['citation']}; {row['location']}. "
                     f"Setting: {row['setting']}.{derived}")
    return "\n".join(lines) + "\n"


def _per_seed_markdown(per_seed: pd.DataFrame) -> str:
    rows = [[get_source(r["auxiliary"]).title, get_source(r["target"]).title, str(r["seed"]), f"{r['map_sigma']:g}",
             *(_cell(r[m] * 100, math.nan, False) for m in SUMMARY_METRICS), str(r["epochs_trained"])]
            for _, r in per_seed.iterrows()]
    headers = ["trained on", "evaluated on", "seed", "σ", *(METRIC_TITLES[m] for m in SUMMARY_METRICS), "epochs"]
    return "# Per-seed results (macro, percent)\n\n" + _markdown_table(headers, rows) + "\n"


def write_tables(out: Path, per_seed: pd.DataFrame, summary: pd.DataFrame,
                 produced_by: dict[str, Any]) -> dict[str, Path]:
    """Write ``per_seed.{csv,md}`` and ``summary.{csv,md}`` in ``out``, each atomically.

    Args:
        out: The reproduction's output folder.
        per_seed: :func:`per_seed_rows`.
        summary: :func:`summarize`.
        produced_by: What produced them (the manifest's provenance, seeds, ...), printed above the summary.

    Returns:
        ``{"per_seed_csv", "per_seed_md", "summary_csv", "summary_md"}`` -> path.
    """
    texts = {"per_seed_md": _per_seed_markdown(per_seed), "summary_md": _summary_markdown(summary, produced_by)}
    paths = {"per_seed_csv": out / "per_seed.csv", "per_seed_md": out / "per_seed.md",
             "summary_csv": out / "summary.csv", "summary_md": out / "summary.md"}
    atomic_write(paths["per_seed_csv"], lambda tmp: per_seed.to_csv(tmp, index=False))
    atomic_write(paths["summary_csv"], lambda tmp: summary.to_csv(tmp, index=False))
    for name in ("per_seed_md", "summary_md"):
        atomic_write(paths[name], lambda tmp, text=texts[name]: tmp.write_text(text, encoding="utf-8"))
    return paths
