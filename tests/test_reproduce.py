"""feclip.reproduce: the paper's protocol in both directions over seeds, offline on the smoke profile.

The smoke stand-ins (synthetic families in MVTec, VisA and BTAD layouts) are read by the same readers
as the real sets; the reproduction runs every step (train, evaluate at two sigmas, tables) and a
killed one resumes without training or evaluating again what it finished.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import feclip.recipes as recipes
from feclip.data import build_dataset, transforms_for_clip
from feclip.data.download import dataset_spec
from feclip.data.sources import LayoutError
from feclip.evaluate import evaluate
from feclip.profiles import SMOKE
from feclip.recipes import build_model
from feclip.reproduce import (
    PAPER,
    REFERENCE,
    SMOKE_LABEL,
    Plan,
    SmokeSizes,
    add_reproduce_arguments,
    evaluate_at_sigmas,
    read_evaluation,
    reported_results,
    reproduce,
    run_reproduce,
    write_smoke_data,
)
from feclip.reproduce import runner
from feclip.reproduce.plan import choose_output_folder, find_targets, git_commit, read_manifest, write_manifest
from feclip.reproduce.reported import REFERENCE_PER_SEED

SIZES = SmokeSizes(categories_per_family=1)  # one category per family: seconds per run on a CPU
SEEDS = [0, 1]


@pytest.fixture(scope="module")
def smoke_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_smoke_data(tmp_path_factory.mktemp("smoke-data"), SIZES)


@pytest.fixture(scope="module")
def smoke_run(smoke_data: Path, tmp_path_factory: pytest.TempPathFactory):
    """One smoke reproduction: two seeds, one epoch, both directions, sigma 0 and 4."""
    results = tmp_path_factory.mktemp("results")
    result = reproduce("smoke", SEEDS, results_root=results, data_root=smoke_data.parent, epochs=1,
                       sizes=SIZES, progress=False)
    return result, results


# --------------------------------------------------------------------------- reported numbers


def test_reported_numbers_are_the_published_ones() -> None:
    paper = {(r.dataset, r.metric): r.value for r in PAPER}
    # Gong et al., ICCV 2025, Table 1 (AUROC / AP) and Table 2 (AUROC / PRO), row FE-CLIP
    assert [paper[("mvtec", m)] for m in ("image_auroc", "image_ap", "pixel_auroc", "pixel_aupro")] == [91.9, 96.5, 92.6, 88.3]
    assert [paper[("visa", m)] for m in ("image_auroc", "image_ap", "pixel_auroc", "pixel_aupro")] == [84.6, 86.6, 95.9, 92.8]
    assert [paper[("btad", m)] for m in ("image_auroc", "image_ap", "pixel_auroc", "pixel_aupro")] == [90.3, 90.0, 95.6, 80.4]
    assert ("brainmri", "pixel_auroc") not in paper and ("kvasir", "image_auroc") not in paper  # image-only / pixel-only
    reference = {(r.dataset, r.metric): (r.value, r.std) for r in REFERENCE}
    assert reference[("mvtec", "image_auroc")] == (90.7, 0.3) and reference[("mvtec", "pixel_auroc")] == (91.1, 0.1)
    assert reference[("visa", "image_auroc")] == (88.2, 0.4) and reference[("visa", "pixel_auroc")] == (93.7, 0.1)
    # neither source reports image F1-max or pixel AP; the reference's spread_3 benchmark has no AUPRO
    assert not {r.metric for r in PAPER + REFERENCE} & {"image_f1max", "pixel_ap"}
    assert "pixel_aupro" not in {r.metric for r in REFERENCE}


def test_every_reported_number_says_where_it_was_read() -> None:
    for result in PAPER + REFERENCE:
        assert result.citation and result.location and result.source in ("paper", "reference implementation")
        assert result.trained_on == ("visa" if result.dataset == "mvtec" else "mvtec")
    assert all(r.std is None and r.map_sigma is None and r.location.startswith("Table ") for r in PAPER)
    assert all(r.map_sigma == 0.0 and "001_result.md" in r.citation for r in REFERENCE)
    assert {r.metric for r in REFERENCE if r.derived} == {"image_ap"}
    assert reported_results(["btad"]) == [r for r in PAPER + REFERENCE if r.dataset == "btad"]


def test_reference_summary_matches_its_per_seed_rows() -> None:
    """The transcribed per-seed rows give the printed means and (population) deviations."""
    for result in REFERENCE:
        seeds = [row for row in REFERENCE_PER_SEED if row.dataset == result.dataset]
        values = [getattr(row, result.metric) for row in seeds]
        assert [row.seed for row in seeds] == [42, 123, 456, 789, 1024]
        assert statistics.fmean(values) == pytest.approx(result.value, abs=0.05 + 1e-9), result
        assert statistics.pstdev(values) == pytest.approx(result.std, abs=0.05 + 1e-9), result
    # the notes' "±" is the population deviation: BTAD pixel AUROC 1.38 (n) is printed 1.4, not 1.54 (n - 1)
    btad = [row.pixel_auroc for row in REFERENCE_PER_SEED if row.dataset == "btad"]
    assert round(statistics.pstdev(btad), 1) == 1.4 and round(statistics.stdev(btad), 1) == 1.5


# --------------------------------------------------------------------------- plan


def test_targets_are_the_downloaded_sets_and_named_ones_are_checked(smoke_data: Path, tmp_path: Path) -> None:
    assert find_targets(smoke_data) == ("mvtec", "visa", "btad")
    assert find_targets(smoke_data, ["BTAD", "btad"]) == ("btad",)
    with pytest.raises(FileNotFoundError, match="feclip download mpdd"):
        find_targets(smoke_data, ["mpdd"])
    with pytest.raises(ValueError, match="unknown data set 'nope'"):
        find_targets(smoke_data, ["nope"])
    only_mvtec = tmp_path / "data"
    only_mvtec.mkdir()
    (only_mvtec / "mvtec").symlink_to(smoke_data / "mvtec")
    with pytest.raises(FileNotFoundError, match="VisA is not at .*feclip download visa"):
        find_targets(only_mvtec)
    with pytest.raises(FileNotFoundError, match="its test split trains the model evaluated on mvtec"):
        find_targets(only_mvtec, ["mvtec"])
    (only_mvtec / "dagm").mkdir()  # a folder without the layout is an error, not skipped
    with pytest.raises(LayoutError, match="dagm"):
        find_targets(only_mvtec, ["dagm"])


def test_runs_cover_both_directions_and_every_seed(smoke_data: Path) -> None:
    plan = Plan(replace(SMOKE, data_root=smoke_data), (0, 1), ("mvtec", "visa", "btad"))
    assert [(r.auxiliary, r.seed, r.targets) for r in plan.runs] == [
        ("visa", 0, ("mvtec",)), ("visa", 1, ("mvtec",)), ("mvtec", 0, ("visa", "btad")), ("mvtec", 1, ("visa", "btad"))]
    assert [r.auxiliary for r in Plan(plan.profile, (3,), ("btad",)).runs] == ["mvtec"]


def test_output_folder_resumes_an_unfinished_plan_and_never_mixes_plans(smoke_data: Path, tmp_path: Path) -> None:
    plan = Plan(replace(SMOKE, data_root=smoke_data), (0, 1), ("mvtec", "visa"))
    other = Plan(plan.profile, (0, 1, 2), ("mvtec", "visa"))
    day1, day2 = datetime.date(2026, 1, 1), datetime.date(2026, 1, 2)
    first = choose_output_folder(plan, tmp_path, today=day1)
    assert first == tmp_path / "2026-01-01"
    write_manifest(first, plan, finished=False)
    assert choose_output_folder(plan, tmp_path, today=day2) == first  # killed yesterday: resumed today
    assert choose_output_folder(other, tmp_path, today=day1) == tmp_path / "2026-01-01-2"
    with pytest.raises(ValueError, match="other settings.*seeds"):
        choose_output_folder(other, tmp_path, out=first)
    write_manifest(first, plan, finished=True)
    assert read_manifest(first)["finished"] is True
    assert choose_output_folder(plan, tmp_path, today=day2) == tmp_path / "2026-01-02"
    assert choose_output_folder(plan, tmp_path, today=day1) == first  # the same plan, finished today: reused


def test_git_commit_is_feclips_own_and_none_outside_a_checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    import feclip

    package = Path(feclip.__file__).parent
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=package, capture_output=True, text=True)
    commit = git_commit()
    if head.returncode == 0:
        assert commit.removesuffix("-dirty") == head.stdout.strip()
    (tmp_path / "feclip").mkdir()
    (tmp_path / "feclip" / "__init__.py").write_text("")
    (tmp_path / "README").write_text("another project")
    for command in (["init", "-q"], ["add", "README"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"]):
        subprocess.run(["git", *command], cwd=tmp_path, check=True)  # another project's repository, feclip untracked
    monkeypatch.setattr(feclip, "__file__", str(tmp_path / "feclip" / "__init__.py"))
    assert git_commit() is None


# --------------------------------------------------------------------------- one model pass, several sigmas


def test_evaluate_at_sigmas_equals_one_evaluation_per_sigma_with_one_model_pass(smoke_data: Path) -> None:
    model = build_model(SMOKE).eval()
    transform = transforms_for_clip(model.clip, resize_mode=model.config.resize_mode)
    dataset = build_dataset(dataset_spec("btad", smoke_data), split="test", transform=transform)
    calls = []
    hook = model.register_forward_hook(lambda module, inputs, output: calls.append(inputs[0].shape[0]))
    tables = evaluate_at_sigmas(model, dataset, [0.0, 4.0, 2.0], batch_size=4, progress=False)
    hook.remove()
    assert sum(calls) == len(dataset)  # every image through the model once, for three sigmas
    for sigma, table in tables.items():
        pd.testing.assert_frame_equal(table, evaluate(model, dataset, batch_size=4, progress=False, map_sigma=sigma))
    assert tables[0.0].loc["macro", "pixel_auroc"] != tables[4.0].loc["macro", "pixel_auroc"]


def test_a_replay_refuses_other_images(smoke_data: Path) -> None:
    model = build_model(SMOKE).eval()
    recorder = runner._Recorder(model)
    images = torch.randn(2, 3, 96, 96)
    with torch.inference_mode():
        recorder(images)
        replay = runner._Replay(recorder.batches)
        with pytest.raises(RuntimeError, match="differs from the recorded one"):
            replay(images + 1)
        with pytest.raises(RuntimeError, match="more batches than the 1 recorded"):
            replay(images)


# --------------------------------------------------------------------------- end to end


def test_smoke_reproduction_writes_every_table(smoke_run) -> None:
    result, _ = smoke_run
    out = result.out
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["evaluations", "per_seed.csv", "per_seed.md", "reproduction.json", "runs", "summary.csv", "summary.md"])
    manifest = read_manifest(out)
    assert manifest["finished"] is True and manifest["plan"]["seeds"] == SEEDS
    assert manifest["provenance"]["profile"] == "smoke" and manifest["provenance"]["label"] == SMOKE_LABEL
    per_seed = result.per_seed
    # (VisA -> MVTec AD) + (MVTec AD -> VisA, BTAD), two seeds, two sigmas
    assert len(per_seed) == 3 * 2 * 2
    assert set(zip(per_seed["auxiliary"], per_seed["target"])) == {("visa", "mvtec"), ("mvtec", "visa"), ("mvtec", "btad")}
    assert (per_seed["epochs_trained"] == 1).all() and (per_seed["backbone"] == "feclip-tiny").all()
    pd.testing.assert_frame_equal(pd.read_csv(result.files["per_seed_csv"])[["seed", "image_auroc"]],
                                  per_seed[["seed", "image_auroc"]])
    for (auxiliary, target), group in per_seed.groupby(["auxiliary", "target"]):
        at = {sigma: g.sort_values("seed") for sigma, g in group.groupby("map_sigma")}
        # smoothing reaches the pixel metrics only
        assert at[0.0]["image_auroc"].tolist() == at[4.0]["image_auroc"].tolist()
        assert at[0.0]["pixel_auroc"].tolist() != at[4.0]["pixel_auroc"].tolist()
    record, table = read_evaluation(out / "evaluations" / "mvtec-to-btad" / "seed-1" / "sigma-4.json")
    row = per_seed[(per_seed.target == "btad") & (per_seed.seed == 1) & (per_seed.map_sigma == 4.0)].iloc[0]
    assert row["pixel_aupro"] == table.loc["macro", "pixel_aupro"] and record["target_spec"].startswith("mvtec:")
    assert record["train_spec"] == f"mvtec:{Path(record['target_spec'][len('mvtec:'):]).parent / 'mvtec'}"
    assert {"profile", "backbone", "pretrained", "epochs", "resize_mode", "map_score", "feclip_version",
            "git_commit", "date"} <= set(record)


def test_summary_is_mean_and_sample_std_over_seeds_beside_the_published_numbers(smoke_run) -> None:
    result, _ = smoke_run
    summary, per_seed = result.summary, result.per_seed
    ours = summary[summary.source == "feclip"]
    assert len(ours) == 3 * 2
    for _, row in ours.iterrows():
        seeds = per_seed[(per_seed.target == row.dataset) & (per_seed.map_sigma == row.map_sigma)]
        for metric in ("image_auroc", "image_ap", "image_f1max", "pixel_auroc", "pixel_aupro"):
            values = [100 * v for v in seeds[metric]]
            assert row[metric] == pytest.approx(statistics.fmean(values), abs=1e-9)
            assert row[f"{metric}_std"] == pytest.approx(statistics.stdev(values), abs=1e-9)
    assert summary.dataset.tolist()[:4] == ["mvtec"] * 4  # ours at sigma 0 and 4, then the paper, the reference
    assert summary.source.tolist()[:4] == ["feclip", "feclip", "paper", "reference implementation"]
    paper = summary[(summary.source == "paper") & (summary.dataset == "visa")].iloc[0]
    assert (paper.image_auroc, paper.pixel_aupro) == (84.6, 92.8) and "Table 2" in paper.location
    assert pd.read_csv(result.files["summary_csv"]).source.tolist() == summary.source.tolist()
    markdown = result.files["summary_md"].read_text()
    assert SMOKE_LABEL in markdown and "feclip (smoke)" in markdown and "MVTec AD stand-in (synthetic textures)" in markdown
    assert "| MVTec AD | VisA | paper [1] | not stated | 5 | 91.9 | 96.5 | – | 92.6 | 88.3 |" in markdown
    assert "| MVTec AD | VisA | reference implementation [2] | 0 | 5 | 90.7 ± 0.3 | 95.6 ± 0.2 † | – | 91.1 ± 0.1 | – |" in markdown
    assert "Table 1 (p. 21225), row FE-CLIP, column MVTec AD" in markdown


def test_a_killed_reproduction_resumes_without_recomputing(smoke_data: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    trained: list[Path] = []
    loaded: list[Path] = []
    evaluated: list[float] = []
    kill_at = [3]  # the third evaluation: the first run is finished, the second has just trained
    real_train, real_evaluate, real_load_or_train = recipes.train, runner.evaluate, runner.load_or_train

    def counting_train(model, dataset, config=None, *, out_dir, **kwargs):
        trained.append(Path(out_dir))
        return real_train(model, dataset, config, out_dir=out_dir, **kwargs)

    def counting_evaluate(predictor, dataset, **kwargs):
        evaluated.append(kwargs["map_sigma"])
        if len(evaluated) == kill_at[0]:
            raise KeyboardInterrupt  # the process is killed here
        return real_evaluate(predictor, dataset, **kwargs)

    def counting_load_or_train(profile, run_dir, **kwargs):
        loaded.append(Path(run_dir))
        return real_load_or_train(profile, run_dir, **kwargs)

    monkeypatch.setattr(recipes, "train", counting_train)
    monkeypatch.setattr(runner, "evaluate", counting_evaluate)
    monkeypatch.setattr(runner, "load_or_train", counting_load_or_train)
    arguments = dict(results_root=tmp_path, data_root=smoke_data.parent, epochs=1, sizes=SIZES, progress=False)
    with pytest.raises(KeyboardInterrupt):
        reproduce("smoke", SEEDS, **arguments)
    (out,) = tmp_path.iterdir()
    assert read_manifest(out)["finished"] is False
    assert [p.relative_to(out).as_posix() for p in trained] == ["runs/train-visa/seed-0", "runs/train-visa/seed-1"]
    finished = sorted((out / "evaluations").rglob("*.json"))
    assert [p.relative_to(out).as_posix() for p in finished] == [
        "evaluations/visa-to-mvtec/seed-0/sigma-0.json", "evaluations/visa-to-mvtec/seed-0/sigma-4.json"]
    stamps = {path: path.stat().st_mtime_ns for path in finished}

    trained.clear(), evaluated.clear(), loaded.clear()
    kill_at[0] = 0
    result = reproduce("smoke", SEEDS, **arguments)
    assert result.out == out and read_manifest(out)["finished"] is True
    # VisA seed 1 had finished training: loaded, not trained again; MVTec AD's two runs are new
    assert [p.relative_to(out).as_posix() for p in trained] == ["runs/train-mvtec/seed-0", "runs/train-mvtec/seed-1"]
    assert [p.relative_to(out).as_posix() for p in loaded] == [  # VisA seed 0 is done: its model is not even loaded
        "runs/train-visa/seed-1", "runs/train-mvtec/seed-0", "runs/train-mvtec/seed-1"]
    assert len(evaluated) == 2 + 2 * 2 * 2  # VisA seed 1 on MVTec AD; MVTec AD's two seeds on VisA and BTAD
    assert {path: path.stat().st_mtime_ns for path in finished} == stamps
    assert len(result.per_seed) == 12

    trained.clear(), evaluated.clear(), loaded.clear()
    again = reproduce("smoke", SEEDS, **arguments)  # everything on disk: nothing runs
    assert trained == [] and evaluated == [] and loaded == []
    pd.testing.assert_frame_equal(again.summary, result.summary)


def test_the_command_line_runs_the_same_reproduction(smoke_run, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    result, results_root = smoke_run
    parser = argparse.ArgumentParser()
    add_reproduce_arguments(parser)
    smoke_base = Path(read_manifest(result.out)["plan"]["data_root"]).parent
    args = parser.parse_args(["--profile", "smoke", "--seeds", "0", "1", "--epochs", "1", "--smoke-categories", "1",
                              "--data-root", str(smoke_base), "--results-root", str(results_root), "--no-progress"])
    assert args.map_sigmas == [0.0, 4.0] and args.datasets is None
    calls = []
    monkeypatch.setattr(recipes, "train", lambda *a, **k: calls.append("train"))
    monkeypatch.setattr(runner, "evaluate", lambda *a, **k: calls.append("evaluate"))
    assert run_reproduce(args) == 0
    assert calls == []  # the fixture's finished reproduction: same plan, same folder, nothing recomputed
    printed = capsys.readouterr().out
    assert "| MVTec AD stand-in (synthetic textures) | VisA stand-in (synthetic objects) | feclip (smoke) | 0 | 2 |" in printed
    assert f"written: {result.out / 'summary.csv'}" in printed
    full = parser.parse_args(["--profile", "full", "--smoke-categories", "1"])
    with pytest.raises(ValueError, match="--smoke-categories applies to the smoke profile only"):
        run_reproduce(full)


def _noise_image(path: Path, rng: np.random.Generator) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(path)


def test_every_downloaded_target_is_evaluated_whatever_its_reader(smoke_data: Path, tmp_path: Path) -> None:
    """MVTec AD -> every other set under the data root: an image-level folder set and an all-anomalous polyp set."""
    root = tmp_path / "data"
    root.mkdir()
    for name in ("mvtec", "visa"):
        (root / name).symlink_to(smoke_data / name)
    rng = np.random.default_rng(0)
    for state in ("good", "abnormal"):  # BrainMRI as prepared: image labels only
        for index in range(3):
            _noise_image(root / "brainmri" / state / f"{index}.png", rng)
    for index in range(3):  # Kvasir as prepared: MVTec layout, every test image a polyp
        _noise_image(root / "kvasir" / "polyp" / "test" / "polyp" / f"{index}.png", rng)
        mask = np.zeros((40, 40), np.uint8)
        mask[5:15, 5 + index:20] = 255
        (root / "kvasir" / "polyp" / "ground_truth" / "polyp").mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask).save(root / "kvasir" / "polyp" / "ground_truth" / "polyp" / f"{index}_mask.png")
    tiny = replace(SMOKE, name="tiny-on-prepared-layouts")  # not the smoke profile: the data root is used as given
    result = reproduce(tiny, [0], results_root=tmp_path / "results", data_root=root, epochs=1, map_sigmas=[0],
                       progress=False)
    per_seed = result.per_seed.set_index("target")
    assert per_seed.index.tolist() == ["mvtec", "visa", "brainmri", "kvasir"]
    assert per_seed.auxiliary.tolist() == ["visa", "mvtec", "mvtec", "mvtec"]
    assert np.isfinite(per_seed.loc["brainmri", "image_auroc"]) and np.isnan(per_seed.loc["brainmri", "pixel_auroc"])
    assert np.isnan(per_seed.loc["kvasir", "image_auroc"]) and np.isfinite(per_seed.loc["kvasir", "pixel_auroc"])
    brainmri_paper = result.summary[(result.summary.dataset == "brainmri") & (result.summary.source == "paper")].iloc[0]
    assert brainmri_paper.image_auroc == 94.8 and np.isnan(brainmri_paper.pixel_auroc)  # Table 1 only
    assert "SMOKE" not in result.files["summary_md"].read_text()


def test_evaluation_files_are_checked_when_read(tmp_path: Path) -> None:
    broken = tmp_path / "sigma-0.json"
    broken.write_text(json.dumps({"record": {}}))
    with pytest.raises(ValueError, match="sigma-0.json is not a reproduction evaluation file"):
        read_evaluation(broken)
