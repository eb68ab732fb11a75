"""Slice-wise volume inference (the official ``test_single_volume``, batched) and NIfTI prediction.

:class:`Predictor` (a model, its input size, device, batch size and the checkpoint it came from)
is built once per command (:meth:`Predictor.from_checkpoint`) and shared by validation during
training, ``transunet evaluate``, ``transunet predict`` and ``transunet report``, so all of them
run exactly the same computation (:func:`predict_volume`): each slice is resized to
the network input with a cubic spline (``scipy.ndimage.zoom(order=3)``), the argmax of the
softmax is taken, and the label map is resized back with nearest-neighbour interpolation
(``order=0``), as the official implementation does.

:func:`predict_path` (``transunet predict``) runs a checkpoint on NIfTI files: it applies the
checkpoint's own intensity normalisation (:mod:`transunet.data.normalize`), slices along the third
NIfTI axis (the slice axis of :mod:`transunet.data.nifti`, as in training) and writes a label map
with the input's exact shape, affine and header.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.ndimage import zoom
from torch import nn
from tqdm.auto import tqdm

from transunet.errors import CheckpointError, DataError

log = logging.getLogger(__name__)


#: Flip dims of the test-time augmentation on ``(B, C, h, w)`` batches: horizontal, vertical.
FLIPS: tuple[tuple[int, ...], ...] = ((3,), (2,))
#: Flips each training augmentation (``data.augment``) shows the model: the official one applies a
#: flip along a random axis after a random rot90, so both.
AUGMENT_FLIPS: dict[str, tuple[tuple[int, ...], ...]] = {"official": FLIPS, "none": ()}


def _resize_slice(sl: np.ndarray, size: Sequence[int], order: int) -> np.ndarray:
    if sl.ndim == 3:  # (C, H, W): each channel alone
        return np.stack([_resize_slice(c, size, order) for c in sl])
    h, w = sl.shape
    if (h, w) == tuple(size):
        return sl
    return zoom(sl, (size[0] / h, size[1] / w), order=order)


@torch.no_grad()
def predict_volume(
    model: nn.Module,
    image: np.ndarray,
    img_size: Sequence[int],
    *,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
    tta: bool | Sequence[tuple[int, ...]] = False,
    return_probabilities: bool = False,
    amp_dtype: torch.dtype | None = None,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Predict a label volume slice by slice.

    Args:
        model: Segmentation model, ``(B, 1, h, w) -> (B, K, h, w)`` (a
            :class:`~transunet.models.base.SegmentationModel` brings one channel to its own).
        image: Normalised image ``(S, H, W)``, or ``(S, C, H, W)`` for multi-channel data (float).
        img_size: Network input ``(h, w)``.
        batch_size: Slices per forward pass.
        device: Device of the model.
        tta: Average softmax over the identity and flips: ``True`` for the horizontal and vertical
            flips (:data:`FLIPS`), or the flip dims to use (e.g. ``((3,),)``); ``False`` or ``()``: none.
        return_probabilities: Also return class probabilities resized back (linear) to ``(K, S, H, W)``.
        amp_dtype: Autocast dtype (e.g. ``torch.bfloat16``), ``None`` for fp32.

    Returns:
        ``label (S, H, W) uint8`` or ``(label, probabilities (K, S, H, W) float32)``.
    """
    if image.ndim not in (3, 4):
        raise ValueError(f"predict_volume expects an (S, H, W) or (S, C, H, W) volume, got shape {image.shape}.")
    device = torch.device(device)
    flips = tuple(FLIPS if tta is True else (tta or ()))
    S, H, W = image.shape[0], image.shape[-2], image.shape[-1]
    h, w = int(img_size[0]), int(img_size[1])
    label = np.zeros((S, H, W), dtype=np.uint8)
    probs_out: np.ndarray | None = None
    was_training = model.training
    model.eval()
    try:
        for start in range(0, S, batch_size):
            idx = range(start, min(S, start + batch_size))
            batch = np.stack([_resize_slice(image[i].astype(np.float32), (h, w), 3) for i in idx])
            x = torch.from_numpy(batch).float()
            x = (x.unsqueeze(1) if image.ndim == 3 else x).to(device)  # (B, C, h, w); the model adapts 1 -> 3
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                prob = torch.softmax(model(x).float(), dim=1)
                for dims in flips:
                    prob += torch.softmax(model(torch.flip(x, dims)).float(), dim=1).flip(dims)
                prob /= 1.0 + len(flips)
            pred = torch.argmax(prob, dim=1).cpu().numpy().astype(np.uint8)  # (B, h, w)
            for j, i in enumerate(idx):
                label[i] = _resize_slice(pred[j], (H, W), 0)
            if return_probabilities:
                p = prob.cpu().numpy()
                if probs_out is None:
                    probs_out = np.zeros((p.shape[1], S, H, W), dtype=np.float32)
                for j, i in enumerate(idx):
                    for k in range(p.shape[1]):
                        probs_out[k, i] = _resize_slice(p[j, k], (H, W), 1)
    finally:
        model.train(was_training)
    if return_probabilities:
        assert probs_out is not None
        return label, probs_out
    return label


# ----------------------------------------------------------------------------- Predictor

#: Inference precisions and their dtypes (``fp32``: none).
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def precision_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The dtype of an inference precision on ``device``.

    Raises:
        ConfigError: An unknown precision, or fp16 on a CPU (no fast fp16 kernels there).
    """
    from transunet.errors import ConfigError, check_choice

    check_choice("precision", precision, tuple(PRECISIONS))
    if precision == "fp16" and device.type == "cpu":
        raise ConfigError("precision 'fp16' has no fast CPU kernels; use 'bf16' on a CPU (or fp16 on a GPU).")
    return PRECISIONS[precision]


class Predictor:
    """A model ready to segment volumes: built once per command, used by every stage.

    Args:
        model: The model (put in eval mode on ``device``).
        img_size: Network input ``(h, w)``; default ``model.img_size``.
        device: Device of the model.
        batch_size: Slices per forward pass.
        amp_dtype: Compute dtype (``torch.bfloat16``, ``torch.float16``) or ``None`` (fp32). With
            ``fast`` the inference copy is converted to it (no per-call casts); without, autocast.
        checkpoint: The checkpoint dict the model came from (config, preprocessing), if any.
        path: Its file.
        fast: Predict with :meth:`~transunet.models.base.SegmentationModel.for_inference`'s copy
            (exact fast paths: frozen kernels, BatchNorm folding, oneDNN linear layers); rebuilt
            when the model's weights change (validation during training). ``False``: the model itself.
        compile: Also ``torch.compile`` that copy (pays for long evaluations; the first batch
            compiles for about a minute on a CPU).
        channels_last: Channels-last activations in that copy (``None``: the model's
            ``prefers_channels_last``: on for convolutional models).

    Attributes:
        model, img_size, device, batch_size, amp_dtype, checkpoint, path, fast, compile,
        channels_last: As given.
    """

    def __init__(self, model: nn.Module, img_size: Sequence[int] | None = None, *,
                 device: str | torch.device = "cpu", batch_size: int = 16,
                 amp_dtype: torch.dtype | None = None, checkpoint: dict[str, Any] | None = None,
                 path: str | Path | None = None, fast: bool = True, compile: bool = False,
                 channels_last: bool | None = None) -> None:
        from transunet.utils import as_pair

        self.model = model
        size = img_size if img_size is not None else getattr(model, "img_size", None)
        if size is None:
            raise ValueError("Predictor needs img_size for a model without an img_size attribute.")
        self.img_size = as_pair(size)
        self.device = torch.device(device)
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} is invalid: it must be >= 1.")
        self.batch_size = int(batch_size)
        self.amp_dtype = amp_dtype
        self.checkpoint = checkpoint or {}
        self.path = Path(path) if path is not None else None
        self.fast = bool(fast)
        self.compile = bool(compile)
        self.channels_last = channels_last
        self._runner: tuple[tuple[int, ...], nn.Module] | None = None

    def _weights_key(self) -> tuple[int, ...]:
        """Changes whenever a parameter or buffer of the model is updated in place (or replaced)."""
        tensors = [*self.model.parameters(), *self.model.buffers()]
        return (id(self.model), len(tensors), sum(t._version for t in tensors), sum(id(t) for t in tensors))

    @property
    def runner(self) -> nn.Module:
        """The module that predicts: the model's inference copy (``fast``/``compile``), else the model."""
        from transunet.models.base import SegmentationModel

        if not (self.fast or self.compile) or not isinstance(self.model, SegmentationModel):
            return self.model
        key = self._weights_key()
        if self._runner is None or self._runner[0] != key:
            runner = self.model.for_inference(dtype=self.amp_dtype, fast=self.fast, compile=self.compile,
                                              channels_last=self.channels_last)
            self._runner = (key, runner)
        return self._runner[1]

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "auto",
                        batch_size: int | None = None, *, precision: str | None = None,
                        fast: bool | None = None, compile: bool | None = None) -> Predictor:
        """Read a checkpoint once and rebuild its model in eval mode on ``device``.

        Args:
            path: Our checkpoint (``RUN/checkpoints/best.pt`` or a converted file), or a run folder
                (its ``best.pt``, else ``last.pt``; the file used is logged).
            device: ``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps`` or a ``torch.device``.
            batch_size: Slices per forward pass (default: the config's ``eval.batch_size`` or 16).
            precision: ``fp32``, ``bf16`` or ``fp16`` (default: the config's ``eval.precision`` or fp32).
            fast: Exact fast paths (default: the config's ``eval.fast`` or ``True``).
            compile: ``torch.compile`` the inference copy (default: the config's ``eval.compile`` or ``False``).
        """
        from transunet.checkpoint import checkpoint_img_size, model_from_checkpoint, resolve_checkpoint
        from transunet.utils import resolve_device

        path = resolve_checkpoint(path)[0]
        dev = device if isinstance(device, torch.device) else resolve_device(device)
        model, ckpt = model_from_checkpoint(path, device=dev)
        ev = ((ckpt.get("config") or {}).get("eval") or {}) if isinstance(ckpt.get("config"), dict) else {}
        if batch_size is None:
            batch_size = int(ev.get("batch_size", 16))
        precision = precision if precision is not None else str(ev.get("precision", "fp32"))
        return cls(model, checkpoint_img_size(ckpt, path), device=dev, batch_size=batch_size,
                   checkpoint=ckpt, path=path, amp_dtype=precision_dtype(precision, dev),
                   fast=bool(ev.get("fast", True)) if fast is None else fast,
                   compile=bool(ev.get("compile", False)) if compile is None else compile)

    @property
    def model_name(self) -> str:
        """Registered name of the model."""
        return str(getattr(self.model, "model_name", type(self.model).__name__))

    @property
    def preprocessing(self) -> dict[str, Any]:
        """The checkpoint's preprocessing record (normalisation, class names, modality)."""
        return dict(self.checkpoint.get("preprocessing") or {})

    @property
    def config(self) -> dict[str, Any] | None:
        """The checkpoint's experiment config as a dict, if it has one."""
        return self.checkpoint.get("config")

    @property
    def trained_flips(self) -> tuple[tuple[int, ...], ...] | None:
        """The flips the model saw in training (from the checkpoint's ``data.augment``); ``None``
        when the checkpoint does not record its training augmentation (converted weights)."""
        augment = ((self.config or {}).get("data") or {}).get("augment")
        return AUGMENT_FLIPS.get(str(augment)) if augment is not None else None

    def tta_flips(self, tta: bool, *, force: bool = False) -> tuple[tuple[int, ...], ...]:
        """The test-time flips to use: by default only those the model was trained with.

        A flip the model never saw in training averages in predictions of mirrored anatomy it
        cannot segment (the demo model, trained without flips, drops from 77% to 28% Dice), so
        asking for TTA on such a model raises unless ``force`` is given.

        Args:
            tta: Test-time augmentation requested.
            force: Use both flips even when the model was not trained with them (warns).

        Raises:
            CheckpointError: ``tta`` on a model trained without flips, without ``force``.
        """
        if not tta:
            return ()
        trained = self.trained_flips
        if trained is None:
            log.info("checkpoint %s does not record its training augmentation; TTA uses both flips",
                     self.path)
            return FLIPS
        missing = [d for d in FLIPS if d not in trained]
        if not missing:
            return FLIPS
        augment = ((self.config or {}).get("data") or {}).get("augment")
        if force:
            log.warning("checkpoint %s was trained without flips (data.augment: %s); TTA with flips "
                        "forced, expect lower accuracy", self.path, augment)
            return FLIPS
        raise CheckpointError(
            f"checkpoint {self.path} was trained without flips (data.augment: {augment}); flip test-time "
            "augmentation shows it mirrored anatomy it never saw and lowers its accuracy. Run without "
            "--tta, or pass --force-tta (force_tta=True) to use the flips anyway.")

    def predict_volume(self, image: np.ndarray, *, tta: bool | Sequence[tuple[int, ...]] = False,
                       return_probabilities: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Segment a normalised ``(S, H, W)`` or ``(S, C, H, W)`` volume slice by slice (see :func:`predict_volume`).

        Args:
            image: Normalised image ``(S, H, W)``, or ``(S, C, H, W)`` for a multi-channel model.
            tta: ``True`` for both flips, or the flip dims (e.g. from :meth:`tta_flips`).
            return_probabilities: Also return ``(K, S, H, W)`` class probabilities.
        """
        runner = self.runner
        return predict_volume(runner, image, self.img_size, batch_size=self.batch_size,
                              device=self.device, tta=tta, return_probabilities=return_probabilities,
                              amp_dtype=None if runner is not self.model else self.amp_dtype)


# ----------------------------------------------------------------------------- NIfTI prediction

#: Suffix of the probability maps written next to a label map (``--probabilities``).
PROBABILITY_SUFFIX = "_probabilities.nii.gz"


def _nifti_inputs(input: Path) -> list[Path]:
    from transunet.data.nifti import is_nifti

    if input.is_dir():
        files = sorted(p for p in input.iterdir() if p.is_file() and is_nifti(p.name))
        if not files:
            raise DataError(f"input folder {input} holds no .nii or .nii.gz files; pass a NIfTI file or a "
                            "folder of them.")
        return files
    if not input.exists():
        raise DataError(f"input {input} does not exist; pass a .nii/.nii.gz file or a folder of them.")
    if not is_nifti(input.name):
        raise DataError(f"input {input} is not a NIfTI file (.nii or .nii.gz); convert it first.")
    return [input]


def _is_within(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def plan_outputs(input: str | Path, output: str | Path, *, save_probabilities: bool = False, overwrite: bool = False,
                 channels: int = 1, expected: str = "") -> list[tuple[Path, Path, Path | None]]:
    """Pair every input file with its output files, refusing unsafe destinations up front.

    A single input file goes to ``output`` when that ends in ``.nii``/``.nii.gz``, otherwise to
    ``output/<input name>`` (as ``.nii.gz``); a folder of inputs goes to ``output/<input name>``
    each. Probabilities (if asked) go next to each label file with :data:`PROBABILITY_SUFFIX`.

    Args:
        input: A NIfTI file or a folder of them.
        output: Output file (single input) or folder.
        save_probabilities: Also plan the probability files.
        overwrite: Allow replacing existing outputs (the input itself is never replaced).
        channels: Input channels of the model: with several, nnU-Net files ``CASE_0000``, ``CASE_0001``...
            are grouped by case (the plan names the ``_0000`` file; every channel must exist) and other
            files are read as 4D images (channels on the last axis).
        expected: The expected channels in words (``"2 channels (T2, ADC)"``), for messages.

    Returns:
        ``[(input_file, label_output, probabilities_output or None), ...]``.
    """
    from transunet.data.nifti import case_inputs, case_stem, channel_of, is_nifti, strip_nifti_suffix

    input, output = Path(input), Path(output)
    files = _nifti_inputs(input)
    others = [f for f in files if (channel_of(f.name) or 0) > 0]
    if channels > 1:
        files = case_inputs(files, channels, expected)
    elif others and input.is_dir() and any(channel_of(f.name) == 0 for f in files):
        raise DataError(f"{others[0]}: a second input channel (nnU-Net _0001 naming); this model reads one "
                        "channel, so predict on the _0000 files only (move the other channels out of the folder).")
    if input.is_dir():
        if is_nifti(output.name) and not output.is_dir():
            raise DataError(f"output {output} names a file but the input {input} is a folder; pass an "
                            "output folder.")
        if _is_within(output, input):
            raise DataError(f"output folder {output} is inside the input folder {input}; choose a folder "
                            "outside it so predictions are never mixed with the scans.")
        # nnU-Net's naming: CASE_0000.nii.gz -> CASE.nii.gz (its evaluation matches on the case name)
        labels = [output / f"{case_stem(f.name)}.nii.gz" for f in files]
        seen: dict[Path, Path] = {}
        for f, lab in zip(files, labels):
            if lab in seen:
                raise DataError(f"{f} and {seen[lab]} would both be written to {lab}; rename one of them.")
            seen[lab] = f
    elif is_nifti(output.name) and not output.is_dir():
        labels = [output]
    else:
        labels = [output / f"{case_stem(files[0].name)}.nii.gz"]
    plan = []
    for src, dst in zip(files, labels):
        probs = (dst.with_name(strip_nifti_suffix(dst.name) + PROBABILITY_SUFFIX)
                 if save_probabilities else None)
        for target in (dst, probs):
            if target is None:
                continue
            if target.resolve() == src.resolve() or any(target.resolve() == f.resolve() for f in files):
                raise DataError(f"output {target} would overwrite the input {src}; choose another output path.")
            if target.exists() and not overwrite:
                raise FileExistsError(f"output {target} already exists; pass --overwrite to replace it or "
                                      "choose another output path.")
        plan.append((src, dst, probs))
    return plan


def _save_probabilities(probs: np.ndarray, reference: Any, path: Path) -> Path:
    """Write ``(K, S, H, W)`` probabilities as a 4D float32 NIfTI ``(X, Y, Z, K)`` on the input's grid."""
    import nibabel as nib

    from transunet.data.nifti import _save
    from transunet.utils import atomic_write

    data = np.ascontiguousarray(np.transpose(probs, (3, 2, 1, 0)), dtype=np.float32)  # (W, H, S, K)
    header = reference.header.copy()
    header.set_data_dtype(np.float32)
    img = nib.Nifti1Image(data, reference.affine, header)
    img.set_qform(reference.get_qform(), code=int(reference.header["qform_code"]))
    img.set_sform(reference.get_sform(), code=int(reference.header["sform_code"]))
    img.header["scl_slope"] = 1
    img.header["scl_inter"] = 0
    img.header["intent_code"] = 0
    return atomic_write(path, lambda p: _save(img, p, ".nii.gz"))


def predict_path(
    checkpoint: str | Path | Predictor,
    input: str | Path,
    output: str | Path,
    *,
    device: str = "auto",
    tta: bool = False,
    save_probabilities: bool = False,
    overwrite: bool = False,
    batch_size: int | None = None,
    force_tta: bool = False,
) -> list[Path]:
    """Segment one NIfTI file or a folder of them with a checkpoint.

    Each scan is read with :func:`transunet.data.nifti.load_nifti` (slices along the third NIfTI
    axis), normalised with the checkpoint's ``preprocessing["normalization"]`` (CT window or
    z-score; one per channel for a multi-channel model, whose scans are nnU-Net's ``CASE_0000``,
    ``CASE_0001``... files, grouped by case, or 4D images with the channels last), predicted slice
    by slice at the model's ``img_size`` (any in-plane size and number of slices) and written as a
    uint8 label NIfTI with the input's exact shape, affine and header.
    All destinations are checked before anything is predicted.

    Args:
        checkpoint: Our checkpoint (``RUN/checkpoints/best.pt`` or a converted file), a run folder
            (its ``best.pt``, else ``last.pt``), or a :class:`Predictor` already built from one.
        input: A ``.nii``/``.nii.gz`` file or a folder of them (not searched recursively).
        output: Output file (single input; or a folder) or output folder (folder input).
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        tta: Average the softmax over the flips the model was trained with (horizontal and
            vertical for ``data.augment: official``); refused for a model trained without flips.
        save_probabilities: Also write class probabilities as a 4D float32 NIfTI
            ``<name>_probabilities.nii.gz`` (last axis = class).
        overwrite: Replace existing outputs (never the input).
        batch_size: Slices per forward pass (default: the config's ``eval.batch_size`` or 16).
        force_tta: With ``tta``, use both flips even on a model trained without them.

    Returns:
        The written label files.
    """
    from transunet.data.nifti import load_nifti, load_nifti_channels, save_like
    from transunet.data.normalize import channel_normalizations, normalize, normalize_channels

    predictor = checkpoint if isinstance(checkpoint, Predictor) else \
        Predictor.from_checkpoint(checkpoint, device=device, batch_size=batch_size)
    in_ch = int(getattr(predictor.model, "in_channels", 1))
    channels = int(predictor.preprocessing.get("channels", 1))
    names = predictor.preprocessing.get("channel_names") or [f"channel {k}" for k in range(channels)]
    expected = f"{channels} channels ({', '.join(map(str, names))})"
    if channels == 1 and in_ch not in (1, 3):
        raise CheckpointError(f"checkpoint {predictor.path} expects {in_ch} input channels; prediction on "
                              "single-channel NIfTI scans needs a model with in_channels 1 or 3.")
    if channels > 1 and in_ch != channels:
        raise CheckpointError(f"checkpoint {predictor.path}: the model reads {in_ch} channels but its preprocessing "
                              f"record names {expected}; the checkpoint is inconsistent, train or convert it again.")
    specs = channel_normalizations(predictor.preprocessing.get("normalization"), channels,
                                   f"checkpoint {predictor.path}")
    plan = plan_outputs(input, output, save_probabilities=save_probabilities, overwrite=overwrite,
                        channels=channels, expected=expected)
    flips = predictor.tta_flips(tta, force=force_tta)
    written: list[Path] = []
    bar = tqdm(plan, desc="predict", unit="scan", dynamic_ncols=True, disable=len(plan) < 2)
    for src, dst, probs_path in bar:
        bar.set_postfix_str(src.name)
        if channels == 1:
            raw, _spacing, _affine, ref = load_nifti(src, dtype=np.float32)
            raws = [raw]
        else:
            raws, _spacing, _affine, ref = load_nifti_channels(src, channels, expected=expected)
        if not all(np.all(np.isfinite(raw)) for raw in raws):
            raise DataError(f"{src}: the volume contains NaN or infinite values; fix the scan (e.g. replace "
                            "NaN by the background intensity) and run again.")
        image = normalize(raws[0], specs[0]) if channels == 1 else normalize_channels(raws, specs)  # (S[, C], H, W)
        result = predictor.predict_volume(image, tta=flips, return_probabilities=probs_path is not None)
        label, probs = (result if probs_path is not None else (result, None))  # type: ignore[misc]
        written.append(save_like(label, ref, dst, dtype=np.uint8))
        if probs_path is not None and probs is not None:
            _save_probabilities(probs, ref, probs_path)
        log.info("%s -> %s", src, dst)
    return written
