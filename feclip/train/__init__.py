"""Training FE-CLIP's adapters: resumable, reproducible, single- or multi-GPU.

Zero-shot protocol: the adapters are trained on an *auxiliary* data set and evaluated on a
*target* data set they never saw (VisA for an MVTec AD evaluation, MVTec AD for VisA; the
synthetic ``objects`` family for ``textures`` offline). Training uses the auxiliary data
set's **test** split, the only one with anomalies and masks (:mod:`feclip.protocol`).

Only the adapters and ``fc_patch`` learn (Adam, two parameter groups with their own learning
rates); the CLIP backbone stays frozen and in eval mode. The loss is
``w_cls * BCE + w_mask * (focal + Dice)``, per tap and averaged over taps
(:class:`feclip.losses.FEClipLoss`, built once from the config by :func:`build_loss`).

Validation data, if any, must come from the auxiliary side too (for example a held-out part of
the training set): choosing ``best.safetensors`` on the target's test set would leak the target
into a zero-shot result.

Every epoch writes to ``out_dir`` (atomically, so a Colab disconnect mid-save loses nothing):

* ``last.safetensors`` + ``last.json``: the trained weights and config (:mod:`feclip.checkpoint`);
* ``best.safetensors`` + ``best.json``: the epoch with the best validation metric (with a validation set);
* ``last.state.pt``: everything needed to resume bit-exactly: weights, Adam state, epoch,
  step, RNG states (torch, numpy, random) and the DataLoader generator;
* ``history.csv`` / ``history.json``: one row per epoch.

``train(..., resume=out_dir)`` (or ``resume="auto"``) continues from ``last.state.pt``; on the
CPU, 1 epoch + resume + 1 epoch gives exactly the weights of 2 epochs in one go.

Under ``torchrun --nproc_per_node=N`` the model runs as ``DistributedDataParallel`` with a
``DistributedSampler``; ``batch_size`` is per process, and only rank 0 writes files.

The package, one responsibility per module:

* :mod:`~feclip.train.config`: :class:`TrainConfig`;
* :mod:`~feclip.train.history`: :class:`History`, the per-epoch log;
* :mod:`~feclip.train.run_state`: the run folder's files, resuming, RNG states;
* :mod:`~feclip.train.distributed`: devices and the torchrun process group;
* :mod:`~feclip.train.precision`: mixed precision;
* :mod:`~feclip.train.loader`: the training DataLoader;
* :mod:`~feclip.train.prefix_cache`: the frozen-prefix cache (``TrainConfig.cache_prefix``);
* :mod:`~feclip.train.validation`: validation metrics;
* :mod:`~feclip.train.loop`: :func:`train`, the epoch loop, the loss and the optimiser.
"""

from feclip.train.config import TrainConfig
from feclip.train.distributed import DistributedContext, resolve_device
from feclip.train.history import History
from feclip.train.loop import NonFiniteLossError, build_loss, build_optimizer, train
from feclip.train.run_state import BEST, LAST, STATE, resolve_resume, seed_everything

__all__ = [
    "TrainConfig",
    "History",
    "NonFiniteLossError",
    "DistributedContext",
    "build_loss",
    "build_optimizer",
    "resolve_device",
    "resolve_resume",
    "seed_everything",
    "train",
    "LAST",
    "BEST",
    "STATE",
]
