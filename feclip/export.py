"""ONNX export of the whole FE-CLIP detector, and a detector that runs the exported graph with onnxruntime.

:func:`export_onnx` writes one ONNX graph from normalised images to the two outputs every feclip
detector gives: the tapped ViT, the frequency adapters, both heads, the average over taps and the
upsampling of the map, with the text embeddings and the temperature baked in as constants:

* input ``images``, float32 ``(B, 3, H, W)`` at the backbone's input size, normalised with its mean and std;
* outputs ``pred_score (B,)`` and ``anomaly_map (B, H, W)``, as :meth:`feclip.model.FEClip.forward` gives them.

The batch axis is dynamic unless a ``batch_size`` is fixed. The graph's ``metadata_props`` hold what a
predictor needs without any torch model code: the model's config, backbone and feclip version, and the
preprocessing (input size, mean, std, interpolation, resize mode). :class:`OnnxDetector` reads them back
and runs the graph with onnxruntime alone; it returns :class:`feclip.predictor.AnomalyPrediction`, so
:func:`feclip.evaluate.evaluate` takes it like any detector.

The graph is traced by torch's ``torch.export``-based exporter (``torch.onnx.export(dynamo=True)``),
which keeps the token-grid shapes that the adapters compute in Python as the fixed numbers they are
and only the batch symbolic. The older TorchScript exporter cannot: it turns shapes into tensors, on
which the window arithmetic of :func:`feclip.adapters.window_merge` fails.

onnx, onnxscript (the exporter's) and onnxruntime are the optional extra ``pip install feclip[export]``.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from feclip.data.transforms import AnomalyTransform, transforms_for_clip
from feclip.predictor import AnomalyPrediction

if TYPE_CHECKING:
    from feclip.model import FEClip

__all__ = [
    "INPUT_NAME",
    "OUTPUT_NAMES",
    "MIN_TORCH_VERSION",
    "onnx_metadata",
    "export_onnx",
    "OnnxDetector",
]

INPUT_NAME = "images"
OUTPUT_NAMES: tuple[str, str] = ("pred_score", "anomaly_map")
MIN_TORCH_VERSION = "2.6"
_INSTALL_HINT = "pip install feclip[export]"
# Metadata keys that export_onnx always writes and OnnxDetector needs; all values are JSON text.
_REQUIRED_METADATA = ("feclip_version", "feclip_config", "image_size", "mean", "std", "interpolation", "resize_mode")


def _require(module: str, purpose: str) -> ModuleType:
    """Import an optional dependency, or raise one error that says how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(f"{purpose} needs the {module} package: {_INSTALL_HINT}") from error


class _DetectorGraph(nn.Module):
    """The detector as the exported graph sees it: images in, the two outputs of an AnomalyPrediction out."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Args: images ``(B, 3, H, W)``. Returns: ``pred_score (B,)`` and ``anomaly_map (B, H, W)``."""
        prediction = self.model(images)
        return prediction.pred_score, prediction.anomaly_map


def onnx_metadata(model: FEClip) -> dict[str, str]:
    """The ``metadata_props`` :func:`export_onnx` stores: model, provenance and preprocessing, as JSON text.

    Args:
        model: The FE-CLIP model being exported.

    Returns:
        Key -> JSON string: ``feclip_version``, ``feclip_config`` (:meth:`FEClipConfig.to_dict`),
        ``backbone``, ``pretrained``, ``image_size`` (``[H, W]``), ``mean``, ``std``, ``interpolation``,
        ``resize_mode`` (the :class:`~feclip.data.transforms.AnomalyTransform` the model expects),
        ``map_score`` and ``anomaly_map_range`` (the interval every map value lies in).
    """
    import feclip

    transform = transforms_for_clip(model.clip, resize_mode=model.config.resize_mode)
    values: dict[str, Any] = {
        "feclip_version": feclip.__version__,
        "feclip_config": model.config.to_dict(),
        "backbone": model.config.backbone,
        "pretrained": model.config.pretrained,
        "image_size": list(transform.size_hw),
        "mean": list(transform.mean),
        "std": list(transform.std),
        "interpolation": transform.interpolation,
        "resize_mode": transform.resize_mode,
        "map_score": model.config.map_score,
        "anomaly_map_range": list(model.anomaly_map_range),
    }
    return {key: json.dumps(value) for key, value in values.items()}


def export_onnx(model: FEClip, path: str | Path, *, batch_size: int | None = None, opset: int | None = None) -> Path:
    """Write the whole FE-CLIP detector as one ONNX graph, atomically.

    The model is traced in eval mode on its own device and left in the mode it was in. Its current
    text embeddings (after any :meth:`~feclip.model.FEClip.set_prompts`) become constants of the graph.

    Args:
        model: The FE-CLIP model to export (frozen CLIP, adapters and ``fc_patch`` as they are now).
        path: The ``.onnx`` file to write; its folder is created. An existing file is replaced only
            once the new one is complete.
        batch_size: ``None`` (default): a dynamic batch axis named ``batch``. An int fixes the batch.
        opset: ONNX opset version; ``None`` takes the exporter's default.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ImportError: onnx or onnxscript is not installed (``pip install feclip[export]``).
        RuntimeError: torch is older than :data:`MIN_TORCH_VERSION`.
        TypeError: ``model`` is not an :class:`~feclip.model.FEClip`.
        ValueError: ``batch_size`` is not positive.
    """
    from feclip.checkpoint import atomic_write
    from feclip.model import FEClip

    if not isinstance(model, FEClip):
        raise TypeError(f"export_onnx exports FEClip models, got {type(model).__name__}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be a positive int or None (dynamic), got {batch_size}")
    if torch.__version__ < MIN_TORCH_VERSION:
        raise RuntimeError(f"ONNX export needs torch >= {MIN_TORCH_VERSION} (its torch.export-based exporter), "
                           f"found {torch.__version__}")
    for module in ("onnx", "onnxscript"):
        _require(module, "ONNX export")
    metadata = onnx_metadata(model)
    height, width = json.loads(metadata["image_size"])
    device = model.text_features.device
    # torch.export specialises a dimension whose example size is 1, so a dynamic batch is traced at 2.
    example = torch.zeros(batch_size or 2, 3, height, width, device=device)
    dynamic_shapes = None if batch_size else {INPUT_NAME: {0: torch.export.Dim("batch")}}
    was_training = model.training
    try:
        program = torch.onnx.export(
            _DetectorGraph(model).eval(),
            (example,),
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            opset_version=opset,
            dynamic_shapes=dynamic_shapes,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    finally:
        model.train(was_training)
    program.model.metadata_props.update(metadata)
    return atomic_write(path, lambda temporary: program.save(temporary, external_data=False))


class OnnxDetector:
    """An FE-CLIP detector exported by :func:`export_onnx`, run by onnxruntime without torch model code.

    Callable like every feclip detector: ``detector(images) -> AnomalyPrediction``, so
    :func:`feclip.evaluate.evaluate` and the command line take it as they take :class:`~feclip.model.FEClip`.

    Args:
        path: The ``.onnx`` file.
        providers: onnxruntime execution providers, in order of preference; ``None``: the CPU.
        threads: onnxruntime's intra-op threads; ``None``: onnxruntime's default (all cores).

    Raises:
        ImportError: onnxruntime is not installed (``pip install feclip[export]``).
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` is not an ONNX model, or not one written by :func:`export_onnx`.

    Example:
        >>> detector = OnnxDetector("model.onnx")
        >>> images = torch.stack([detector.transform.image(image) for image in pil_images])
        >>> prediction = detector(images)  # pred_score (B,), anomaly_map (B, H, W)
    """

    def __init__(self, path: str | Path, providers: list[str] | None = None, *, threads: int | None = None) -> None:
        onnxruntime = _require("onnxruntime", "OnnxDetector")
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {self.path}")
        options = onnxruntime.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        try:
            self.session = onnxruntime.InferenceSession(
                str(self.path), options, providers=providers or ["CPUExecutionProvider"]
            )
        except Exception as error:  # onnxruntime raises its own exception types for unreadable files
            raise ValueError(f"{self.path} is not a readable ONNX model: {error}") from error
        self.metadata: dict[str, str] = dict(self.session.get_modelmeta().custom_metadata_map)
        missing = [key for key in _REQUIRED_METADATA if key not in self.metadata]
        names = ([i.name for i in self.session.get_inputs()], [o.name for o in self.session.get_outputs()])
        if missing or names != ([INPUT_NAME], list(OUTPUT_NAMES)):
            raise ValueError(
                f"{self.path} was not written by feclip.export.export_onnx: it lacks the metadata {missing} "
                f"or has inputs/outputs {names} instead of {([INPUT_NAME], list(OUTPUT_NAMES))}"
            )
        batch = self.session.get_inputs()[0].shape[0]
        self.batch_size: int | None = batch if isinstance(batch, int) else None

    def _value(self, key: str) -> Any:
        return json.loads(self.metadata[key])

    @property
    def config(self) -> dict[str, Any]:
        """The exported model's :class:`~feclip.model.FEClipConfig` as a dict."""
        return self._value("feclip_config")

    @property
    def feclip_version(self) -> str:
        """The feclip version that wrote the file."""
        return self._value("feclip_version")

    @property
    def image_size(self) -> tuple[int, int]:
        """The input ``(H, W)`` the graph takes."""
        height, width = self._value("image_size")
        return int(height), int(width)

    @property
    def anomaly_map_range(self) -> tuple[float, float]:
        """The interval every value of ``anomaly_map`` lies in (see :attr:`feclip.model.FEClip.anomaly_map_range`)."""
        low, high = self._value("anomaly_map_range")
        return float(low), float(high)

    @property
    def transform(self) -> AnomalyTransform:
        """The preprocessing the exported model expects, from the file's metadata."""
        return AnomalyTransform(
            image_size=self.image_size,
            mean=tuple(self._value("mean")),
            std=tuple(self._value("std")),
            interpolation=self._value("interpolation"),
            resize_mode=self._value("resize_mode"),
        )

    def __call__(self, images: Tensor | np.ndarray) -> AnomalyPrediction:
        """Image scores and pixel maps.

        Args:
            images: Normalised images ``(B, 3, H, W)`` at :attr:`image_size` (see :attr:`transform`).

        Returns:
            :class:`~feclip.predictor.AnomalyPrediction` with ``pred_score (B,)`` and ``anomaly_map (B, H, W)``,
            float32 torch tensors on the device ``images`` came on (the CPU for a numpy array).
        """
        device = images.device if isinstance(images, Tensor) else torch.device("cpu")
        array = images.detach().cpu().numpy() if isinstance(images, Tensor) else np.asarray(images)
        expected = (3, *self.image_size)
        if array.ndim != 4 or tuple(array.shape[1:]) != expected or (
            self.batch_size is not None and array.shape[0] != self.batch_size
        ):
            batch = "B" if self.batch_size is None else str(self.batch_size)
            raise ValueError(f"{self.path} takes images of shape ({batch}, {', '.join(map(str, expected))}), "
                             f"got {tuple(array.shape)}")
        pred_score, anomaly_map = self.session.run(
            list(OUTPUT_NAMES), {INPUT_NAME: np.ascontiguousarray(array, dtype=np.float32)}
        )
        return AnomalyPrediction(
            pred_score=torch.from_numpy(pred_score).to(device), anomaly_map=torch.from_numpy(anomaly_map).to(device)
        )

    def __repr__(self) -> str:
        config = self.config
        return (f"OnnxDetector({str(self.path)!r}, backbone={config.get('backbone')!r}, "
                f"taps={config.get('tap_indices')}, image_size={self.image_size}, "
                f"providers={self.session.get_providers()})")
