"""``feclip train``: train FE-CLIP's adapters, set up by the same recipe functions as the notebooks.

The model, the data sets and the training config come from :func:`feclip.recipes.build_model`,
:func:`feclip.recipes.training_data` and :func:`feclip.recipes.train_config`, on the run's profile:
the full profile's recipe with ``--train``, the smoke profile's without (its synthetic benchmark).
The flags override single settings; ``run.json`` records them so that ``--resume`` rebuilds the run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Any

from feclip.cli.choices import (
    AMP_MODES,
    BASES,
    BASIS_ALIASES,
    DEFAULT_BACKBONE,
    DEFAULT_PRETRAINED,
    FC_PATCH_INITS,
    LFS_STATISTICS,
    MAP_SCORES,
    RESIZE_MODES,
    TINY_MODEL,
)
from feclip.cli.common import (
    add_quick_gelu,
    add_runtime,
    check_output_folder,
    is_main_process,
    parse_pretrained,
    pretrained_file_errors,
    require_non_negative,
    require_positive,
    say,
)

NAME = "train"
SUMMARY = "train FE-CLIP's adapters (checkpoints every epoch, resumable)"
# Share of the training set the smoke run holds out for validation (stratified per category and label).
SMOKE_VAL_FRACTION = 0.25
_MODEL_FLAGS = {  # command-line flag -> FEClipConfig field
    "taps": "tap_indices", "lambda_fuse": "lambda_fuse", "ffe_window": "ffe_window",
    "lfs_window": "lfs_window", "lfs_statistic": "lfs_statistic", "basis": "basis",
    "fc_patch_init": "fc_patch_init", "map_score": "map_score", "resize_mode": "resize_mode",
}
_TRAIN_FLAGS = ("epochs", "batch_size", "lr", "fc_patch_lr", "seed", "num_workers", "device", "amp", "cache_prefix")
# Fields of a recorded model config that say where the backbone came from: the backbone is rebuilt from them.
_ORIGIN_FIELDS = ("backbone", "pretrained", "backbone_seed", "quick_gelu")

EPILOG = """zero-shot protocol: train on an auxiliary data set's TEST split (the only one with anomalies
and masks), evaluate on a target never seen in training: VisA for MVTec AD, MVTec AD for VisA,
synthetic objects for synthetic textures.

validation (it picks best.safetensors, so it is part of training) comes from the auxiliary
side only: --val-fraction F holds out F of the training set (stratified per category and
label, seeded by --seed), or --val SPEC names another auxiliary data set. Refused: a --val
that shares images with --train, and, when --target names the data set the run will be
evaluated on, a --train or --val sharing categories with it. feclip eval refuses to score a
best.safetensors on data sharing categories with its validation set.

Without --train this is a smoke run: the synthetic benchmark (generated under the smoke
profile's data root if absent) trains on objects, validates on a held-out quarter of them
and names textures as the target, with the smoke profile's recipe: the smoke profile's sizes
(SMOKE_SIZES) and learning rates unless --epochs / --batch-size / --lr say
otherwise; when no --backbone is given and the ViT-L-14-336 OpenAI weights cannot be
reached, feclip's toy CLIP (feclip-tiny pretrained on the synthetic world, shipped with
feclip) is used and a line on stderr says so.
With --train the run follows the paper's recipe (the full profile's).

Every epoch writes RUN_DIR/last.safetensors (+ .json), RUN_DIR/last.state.pt and
RUN_DIR/history.{csv,json}; with validation also best.safetensors. RUN_DIR/run.json records
the run: its data (absolute paths and a fingerprint of every data set), model and training
settings. A run folder belongs to one run: after an interruption the same command resumes it
(and says so); another command is refused unless it passes --resume (continue the recorded
run; its data must be unchanged unless --allow-data-change) or --overwrite (replace it).
RUN_DIR/run.lock keeps a second process from training into the same folder at once.

examples:
  feclip train --out runs/demo
  feclip train --train visa:data/visa --val-fraction 0.1 --target mvtec:data/mvtec --out runs/visa2mvtec
  feclip train --train mvtec:data/mvtec --out runs/mvtec2visa --taps spread_5 --epochs 5
  feclip train --train visa:data/visa --pretrained ViT-B-16.bin --backbone ViT-B-16 --no-quick-gelu --out runs/b16
  feclip train --train visa:data/visa --out runs/cached --cache-prefix
  feclip train --out runs/visa2mvtec --resume
  torchrun --nproc_per_node=4 -m feclip train --train visa:data/visa --out runs/ddp"""


def configure(parser: argparse.ArgumentParser) -> None:
    from feclip import profiles
    from feclip.taps import TAP_SETS

    smoke = profiles.SMOKE
    parser.description = "Train FE-CLIP's frequency adapters on an auxiliary data set."
    parser.epilog = EPILOG.replace("SMOKE_SIZES", f"{smoke.epochs} epochs, batch {smoke.batch_size}")
    parser.add_argument("--out", required=True, type=Path, metavar="RUN_DIR", help="run folder for checkpoints and history")
    parser.add_argument("--train", metavar="SPEC", help="training data KIND:PATH (its test split); default: synthetic objects")
    validation = parser.add_mutually_exclusive_group()
    validation.add_argument("--val-fraction", type=float, metavar="F",
                            help="hold out this fraction of the training set for validation (stratified, seeded by --seed)")
    validation.add_argument("--val", metavar="SPEC", help="another AUXILIARY data set KIND:PATH to validate on (never the target)")
    parser.add_argument("--target", metavar="SPEC", help="the data set this run will be evaluated on: checked to share no "
                                                         "category with --train or --val, and recorded")
    parser.add_argument("--backbone", metavar="NAME", help=f"open_clip model name (default: {DEFAULT_BACKBONE})")
    parser.add_argument("--pretrained", metavar="TAG_OR_FILE",
                        help=f"pretrained tag or weights file, 'none' for random weights (default: {DEFAULT_PRETRAINED}; "
                             f"'toy' for {TINY_MODEL}'s toy CLIP)")
    add_quick_gelu(parser)
    parser.add_argument("--taps", metavar="LIST", help="tapped blocks, e.g. 15,18,21,23, or a tap set: "
                                                       f"{', '.join(sorted(TAP_SETS))} (default: spread_3)")
    parser.add_argument("--lambda", dest="lambda_fuse", type=float, metavar="X", help="fusion weight of the adapters (default: 0.1)")
    parser.add_argument("--ffe-window", type=int, metavar="P", help="FFE window P (default: 3)")
    parser.add_argument("--lfs-window", type=int, metavar="Q", help="LFS window Q (default: 3)")
    parser.add_argument("--lfs-statistic", choices=LFS_STATISTICS, help="LFS statistic (default: mean)")
    parser.add_argument("--basis", choices=(*BASES, *BASIS_ALIASES),
                        help="frequency basis: dct, or hartley (the real form of the DFT; 'dft' is its old name) (default: dct)")
    parser.add_argument("--fc-patch-init", choices=FC_PATCH_INITS,
                        help="start of fc_patch: random (the reference's default) or CLIP's projection (default: random)")
    parser.add_argument("--map-score", choices=MAP_SCORES, help="reported map (default: probability)")
    parser.add_argument("--resize-mode", choices=RESIZE_MODES,
                        help="fit images to the input: squash (both sides) or crop (shorter side, centre crop) (default: squash)")
    parser.add_argument("--epochs", type=int, metavar="N", help=f"epochs (default: 9; smoke run: {smoke.epochs})")
    parser.add_argument("--lr", type=float, metavar="X", help=f"adapter learning rate (default: 5e-4; smoke run: {smoke.adapter_lr:g})")
    parser.add_argument("--fc-patch-lr", type=float, metavar="X",
                        help=f"fc_patch learning rate (default: 5e-6; smoke run: {smoke.fc_patch_lr:g})")
    parser.add_argument("--seed", type=int, metavar="N", help="seed of the adapters' initialisation, the data order and "
                                                              "a random backbone (default: 0)")
    parser.add_argument("--amp", choices=AMP_MODES, help="mixed precision on a GPU: auto (bf16 where the GPU has it natively, else fp16 with a "
                        "gradient scaler), bf16, fp16, off (default: auto; the CPU trains in float32)")
    parser.add_argument("--cache-prefix", action=argparse.BooleanOptionalAction, default=None,
                        help="keep the frozen blocks' output before the first tap from epoch 1 and start later epochs "
                             "there: same result, less work (default: off)")
    add_runtime(parser, batch_size=None)
    folder = parser.add_mutually_exclusive_group()
    folder.add_argument("--resume", nargs="?", const="auto", metavar="PATH",
                        help="continue an interrupted run: RUN_DIR's state, or the given run folder / state file "
                             "(the data and settings are read from its run.json)")
    folder.add_argument("--overwrite", action="store_true",
                        help="replace the run RUN_DIR holds (its checkpoints, state, history and run.json)")
    parser.add_argument("--allow-data-change", action="store_true",
                        help="resume although the data differ from the recorded fingerprint (recorded in run.json)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def parse_taps(value: str) -> list[int] | str:
    """``--taps``: a tap-set name (resolved for the backbone's depth by the recipe) or comma-separated blocks."""
    from feclip.taps import TAP_SETS

    if value in TAP_SETS:
        return value
    try:
        return [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--taps must be comma-separated block indices (e.g. 15,18,21,23) or one of {sorted(TAP_SETS)}, "
                         f"got {value!r}") from None


def _demo_data(root: Path, progress: bool) -> Path:
    """The synthetic benchmark under ``root``: the families missing there are generated, with a progress bar."""
    from tqdm.auto import tqdm

    from feclip import data

    missing = [family for family in data.FAMILIES if not (root / family).is_dir() or not any((root / family).iterdir())]
    if {"objects", "textures"} & set(missing):
        if is_main_process():
            say(f"generating the synthetic benchmark under {root}")
        for family in tqdm(missing, desc="synthetic benchmark", unit="family", disable=not (progress and is_main_process())):
            if is_main_process():
                data.generate_benchmark(root, families=(family,))
    return root


def _profile(args: argparse.Namespace, record: dict[str, Any], demo: bool) -> Any:
    """The run's profile: the smoke one for the synthetic demo, else the full one, with this run's backbone."""
    from feclip import profiles
    from feclip.backbones import pretrained_available

    saved = record.get("model", {})
    backbone = args.backbone or saved.get("backbone") or DEFAULT_BACKBONE
    if args.pretrained is not None:
        pretrained = parse_pretrained(args.pretrained)
    elif record:
        pretrained = saved.get("pretrained")
    else:
        pretrained = None if backbone == TINY_MODEL else DEFAULT_PRETRAINED
    if demo and args.backbone is None and args.pretrained is None and not record and not pretrained_available(backbone, pretrained):
        if is_main_process():
            say(f"no {backbone} / {pretrained} weights reachable: smoke run with feclip's toy CLIP ({TINY_MODEL} "
                f"pretrained on the synthetic world; not the paper's numbers; pass --backbone/--pretrained for real weights)")
        backbone, pretrained = TINY_MODEL, profiles.SMOKE.pretrained
    return dataclasses.replace(profiles.SMOKE if demo else profiles.FULL, backbone=backbone, pretrained=pretrained)


def _train_config(args: argparse.Namespace, record: dict[str, Any], profile: Any) -> Any:
    """The recorded config on resume, else the profile's recipe; then the flags given."""
    from feclip.recipes import train_config
    from feclip.train import TrainConfig

    if "train_config" in record:
        config = TrainConfig.from_dict(record["train_config"])
    else:
        config = train_config(profile, device="auto")
    return dataclasses.replace(config, **{k: getattr(args, k) for k in _TRAIN_FLAGS if getattr(args, k) is not None})


def _model_overrides(args: argparse.Namespace, record: dict[str, Any]) -> dict[str, Any]:
    """The model settings of this run: the recorded ones on resume (read as what they trained), then the flags."""
    from feclip.checkpoint import upgrade_config

    saved = upgrade_config(record["model"]) if "model" in record else {}  # an older run.json: what it trained
    overrides = {key: value for key, value in saved.items() if key not in _ORIGIN_FIELDS}
    for flag, field in _MODEL_FLAGS.items():
        if getattr(args, flag) is not None:
            overrides[field] = parse_taps(args.taps) if flag == "taps" else getattr(args, flag)
    return overrides


def _check_flags(args: argparse.Namespace) -> None:
    """Refuse non-positive sizes and an --out that is a file, before any work."""
    require_positive(args, "epochs", "batch_size", "ffe_window", "lfs_window")
    require_non_negative(args, "num_workers")
    check_output_folder(args.out, "--out")


def _record_for_resume(args: argparse.Namespace, out: Path) -> tuple[Path | None, dict[str, Any] | None]:
    """``--resume``: the state to resume from and the record of its run (``None`` when there is none)."""
    from feclip.run_folder import run_files_in
    from feclip.train import resolve_resume
    from feclip.train.run_record import RECORD_FILE, read_run_record

    state = resolve_resume(args.resume, out)
    source = state.parent if state is not None else out
    if state is not None and source.resolve() != out.resolve() and run_files_in(out):
        raise ValueError(f"--out {out} holds a run of its own; resume {source} into its own folder or an empty one")
    path = source / RECORD_FILE
    if path.is_file():
        return state, read_run_record(path)
    if state is None and not run_files_in(out):
        return None, None  # nothing to resume: a new run
    if not args.allow_data_change:
        raise ValueError(f"cannot resume {source}: it has no {RECORD_FILE}, the record of the run's data and settings; "
                         "pass its data flags (--train ...) and --allow-data-change to resume anyway")
    return state, None


def run(args: argparse.Namespace) -> int:
    from feclip.run_folder import RunLock

    args.out = args.out.expanduser()
    _check_flags(args)
    lock = RunLock(args.out) if is_main_process() else None
    if lock is not None:
        lock.acquire()
        for holder in lock.stale:
            say(f"took over the stale lock of PID {holder.get('pid')} on {holder.get('host')} (no such process)")
    try:
        return _train_locked(args)
    finally:
        if lock is not None:
            lock.release()
            if lock.created and args.out.is_dir() and not any(args.out.iterdir()):
                args.out.rmdir()  # refused before anything was written: leave no empty folder behind


def _listed(differences: list[str], most: int = 4) -> str:
    more = f"; {len(differences) - most} more" if len(differences) > most else ""
    return "; ".join(differences[:most]) + more


def _data_changes(args: argparse.Namespace, record: dict[str, Any], current: dict[str, Any], source: Path
                  ) -> list[dict[str, Any]]:
    """``--resume``: refuse other data than recorded unless --allow-data-change; the changes to record."""
    import time

    from feclip.train.run_record import data_differences

    changes = list(record.get("data_changes", []))
    differences = data_differences(record, current) if record else ["no run record to compare with"]
    if differences and not args.allow_data_change:
        raise ValueError(f"cannot resume {source}: its data changed ({_listed(differences)}); pass "
                         "--allow-data-change to resume anyway (it is recorded)")
    if differences:
        changes.append({"when": time.strftime("%Y-%m-%d %H:%M:%S"), "differences": differences})
        if is_main_process():
            say(f"warning: resuming with other data (--allow-data-change, recorded in run.json): {_listed(differences)}")
    return changes


def _same_run_state(out: Path, on_disk: dict[str, Any], current: dict[str, Any], epochs: int) -> Path | None:
    """A folder holding a run: this command must be that run; its state to resume from (and say so)."""
    from feclip.train import STATE
    from feclip.train.run_record import run_differences
    from feclip.train.run_state import read_state

    differences = run_differences(on_disk, current)
    if differences:
        raise ValueError(f"{out} holds a run ({_listed(differences)}); pass --resume to continue it or --overwrite "
                         "to replace it")
    state = out / STATE if (out / STATE).is_file() else None
    if is_main_process():
        done = read_state(state, mmap=True)["epoch"] if state else 0
        if state is None:
            say(f"restarting the run in {out}: no epoch of it had finished")
        elif done >= epochs:
            say(f"the run in {out} is complete ({done} of {epochs} epochs): nothing to train")
        else:
            say(f"resuming the run in {out} ({done} of {epochs} epochs done): the same settings and data as recorded")
    return state


def _train_locked(args: argparse.Namespace) -> int:
    """``feclip train`` with the run folder's lock held: what the folder holds decides what the command may do."""
    from feclip.checkpoint import CheckpointMismatch, atomic_write, config_differences, read_metadata, remove_stale_temporaries
    from feclip.recipes import build_model, training_data
    from feclip.run_folder import remove_run_files, run_files_in
    from feclip.train import DistributedContext, resolve_device, train
    from feclip.train.run_record import RECORD_FILE, absolute_spec, read_run_record, run_identity
    from feclip.train.run_state import read_state

    out = args.out
    if is_main_process() and remove_stale_temporaries(out):
        say(f"removed the temporary files an interrupted save left in {out}")
    existing = run_files_in(out)
    state, record, on_disk = None, {}, None
    resuming = args.resume is not None
    if resuming:
        state, resumed = _record_for_resume(args, out)
        record = resumed or {}
        if state is not None:
            read_state(state, mmap=True)  # a truncated or corrupt state fails here, before any work
        elif not existing:
            resuming = False
            if is_main_process():
                say(f"nothing to resume in {out}: starting a new run")
    elif existing and not args.overwrite:  # a run is there: this command may only be the same run
        on_disk = read_run_record(out / RECORD_FILE) if (out / RECORD_FILE).is_file() else None
        if on_disk is None:
            raise ValueError(f"{out} holds a run ({', '.join(existing)}, but no {RECORD_FILE} to tell which); "
                             "pass --resume to continue it or --overwrite to replace it")
    train_spec, val_spec = args.train or record.get("train"), args.val or record.get("val")
    val_fraction = args.val_fraction if args.val_fraction is not None else record.get("val_fraction")
    target_spec = args.target or record.get("target")
    demo = train_spec is None
    profile = _profile(args, record, demo)
    config = _train_config(args, record, profile)
    overrides = _model_overrides(args, record)  # a bad --taps fails before any work
    distributed = DistributedContext.setup(config.device)
    try:
        if demo:
            _demo_data(profile.data_root, progress=not args.quiet)
            distributed.barrier()
            train_spec = profile.spec(profile.train_dataset)
            target_spec = target_spec or profile.spec(profile.eval_dataset)
            if val_spec is None and val_fraction is None:
                val_fraction = SMOKE_VAL_FRACTION
        device = resolve_device(config.device, distributed.local_rank)
        profile = dataclasses.replace(profile, device=str(device), seed=config.seed)
        quick_gelu = args.quick_gelu if args.quick_gelu is not None else record.get("model", {}).get("quick_gelu")
        with pretrained_file_errors(args.pretrained, profile.backbone):
            try:
                model = build_model(profile, quick_gelu=quick_gelu,
                                    backbone_seed=record.get("model", {}).get("backbone_seed"), **overrides)
            except TypeError as err:  # a backbone FE-CLIP cannot tap (no ViT image tower)
                raise ValueError(f"--backbone {profile.backbone}: {err}") from err
        data = training_data(model, train_spec, val_spec=val_spec, val_fraction=val_fraction, target_spec=target_spec,
                             seed=config.seed)
        specs = {"train": absolute_spec(train_spec), "val": absolute_spec(val_spec), "val_fraction": val_fraction,
                 "target": absolute_spec(target_spec)}
        current = run_identity(model.config.to_dict(), config.to_dict(), specs, data.train.samples,
                               data.val.samples if data.val is not None else None,
                               data.target.samples if data.target is not None else None)
        changes = list((on_disk or {}).get("data_changes", []))
        if resuming:
            changes = _data_changes(args, record, current, state.parent if state else out)
        elif on_disk is not None:
            state = _same_run_state(out, on_disk, current, config.epochs)
        if state is not None and (state.parent / "last.safetensors").is_file():
            problems = config_differences(read_metadata(state.parent / "last.safetensors")["config"], model.config)
            if problems:  # before run.json is rewritten
                raise CheckpointMismatch(f"cannot resume from {state}: " + "; ".join(problems))
        if distributed.is_main:
            if args.overwrite and existing:
                remove_run_files(out)
                say(f"replacing the run in {out} (--overwrite)")
            run_record = {**current, **({"data_changes": changes} if changes else {})}
            atomic_write(out / RECORD_FILE,
                         lambda tmp: tmp.write_text(json.dumps(run_record, indent=2) + "\n", encoding="utf-8"))
            validation = (f", validating on {len(data.val)} held-out images" if val_fraction else
                          f", validating on {val_spec}" if val_spec else "")
            print(f"training {model.config.backbone} ({model.config.pretrained or 'random init'}) taps "
                  f"{model.tap_indices} on {train_spec} ({len(data.train)} images{validation}) for "
                  f"{config.epochs} epoch(s) -> {out}")
        try:
            history = train(model, data.train, config, out_dir=out, val_dataset=data.val, resume=state,
                            progress=not args.quiet, run_info=data.run_info)
        except BaseException:
            unfinished = not [name for name in run_files_in(out) if name != RECORD_FILE]
            if distributed.is_main and (args.overwrite or not existing) and unfinished:
                (out / RECORD_FILE).unlink(missing_ok=True)  # a new run that never finished an epoch leaves nothing
            raise
    finally:
        distributed.close()
    if distributed.is_main and len(history):
        print(f"done: {out / 'last.safetensors'} (final loss {history[-1]['loss']:.4f})")
    return 0
