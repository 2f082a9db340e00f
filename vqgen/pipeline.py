"""End-to-end generation: a trained tokenizer plus a trained prior.

    pipe = GenerationPipeline.from_pretrained("runs/image")   # holds tokenizer/ and prior/
    images = pipe.generate(16, labels="Dress", seed=0)         # (16, C, H, W) in [0, 1]
    pipe.save(images, "out/", labels="Dress")                  # grid.png (+ grid.json) + 0000.png ...

Outputs per modality: images ``(n, C, H, W)`` float in [0, 1]; waveforms ``(n, 1, T)`` float
in [-1, 1] at the tokenizer's rate; text ``list[str]``.

Class names: a pipeline knows them from the prior's config (``id2label``), from ``labels.json``
in the run directory (``{"0": "T-shirt/top", ...}``, written by :func:`write_labels` and by
``save_pretrained``), or from the ``id2label`` argument; ``labels`` may then be names, ids or a
mix, everywhere (API, CLI, report).
"""
from __future__ import annotations

import importlib
import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import torch

from .modeling import CONFIG_NAME, ConfigModel, atomic_write, atomic_write_text
from .progress import progress_bar

LABELS_NAME = "labels.json"
Labels = Any  # int | str | Sequence[int | str] | torch.Tensor | None

# model_type -> "module:Class"; resolved lazily so that a run dir names its own classes.
MODEL_CLASSES = {
    "ImageTokenizer": "vqgen.tokenizers.image:ImageTokenizer",
    "AudioTokenizer": "vqgen.tokenizers.audio:AudioTokenizer",
    "HybridAudioTokenizer": "vqgen.tokenizers.hybrid_audio:HybridAudioTokenizer",
    "EnvelopeHead": "vqgen.tokenizers.envelope:EnvelopeHead",
    "TextTokenizer": "vqgen.tokenizers.text:TextTokenizer",
    "PixelCNNPrior": "vqgen.priors.pixelcnn:PixelCNNPrior",
    "TransformerPrior": "vqgen.priors.transformer:TransformerPrior",
}


def load_model(directory: str | os.PathLike, map_location: str | torch.device = "cpu") -> ConfigModel:
    """Load any vqgen model directory, dispatching on the ``model_type`` in its config.json."""
    directory = Path(directory)
    cfg = directory / CONFIG_NAME
    if not cfg.is_file():
        raise FileNotFoundError(f"expected a model directory with {CONFIG_NAME} at {directory}")
    try:
        model_type = json.loads(cfg.read_text()).get("model_type")
    except (json.JSONDecodeError, AttributeError):
        raise ValueError(f"{cfg} is not a vqgen config (corrupt JSON)") from None
    if model_type not in MODEL_CLASSES:
        raise ValueError(f"{directory} holds model_type {model_type!r}; expected one of "
                         f"{sorted(MODEL_CLASSES)}")
    module, name = MODEL_CLASSES[model_type].split(":")
    cls = getattr(importlib.import_module(module), name)
    return cls.from_pretrained(directory, map_location=map_location)


def image_grid(images: torch.Tensor, nrow: int, pad: int = 2) -> torch.Tensor:
    """Tile ``(n, C, H, W)`` images in [0, 1] into one ``(C, H', W')`` grid, ``nrow`` per row."""
    from torchvision.utils import make_grid
    return make_grid(images.float().clamp(0, 1), nrow=nrow, padding=pad, pad_value=1.0)


def save_png(image: torch.Tensor, path: str | os.PathLike) -> None:
    """Write one ``(C, H, W)`` float image in [0, 1] (C = 1 or 3) as PNG, atomically."""
    from PIL import Image
    arr = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    arr = arr[0].numpy() if arr.shape[0] == 1 else arr.permute(1, 2, 0).numpy()
    atomic_write(path, lambda tmp: Image.fromarray(arr).save(tmp, format="PNG"))


def write_labels(run_dir: str | os.PathLike, id2label: dict[int, str] | Sequence[str]) -> Path:
    """Write class names to ``run_dir/labels.json`` as ``{"0": name, ...}`` (atomically);
    ``id2label`` is a dict or a list of names in label order. Returns the path."""
    if not isinstance(id2label, dict):
        id2label = dict(enumerate(id2label))
    path = Path(run_dir) / LABELS_NAME
    atomic_write_text(path, json.dumps({str(int(k)): str(v) for k, v in id2label.items()},
                                       indent=2, ensure_ascii=False) + "\n")
    return path


def read_labels(run_dir: str | os.PathLike) -> dict[int, str] | None:
    """Class names from ``run_dir/labels.json`` as ``{id: name}``, or None when absent.
    Raises ``ValueError`` for a file that is not a JSON object of ``"id": "name"``."""
    path = Path(run_dir) / LABELS_NAME
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return {int(k): str(v) for k, v in raw.items()}
    except (ValueError, AttributeError, TypeError):
        raise ValueError(f"{path}: expected a JSON object {{\"0\": \"class name\", ...}}") from None


def _check_kinds(tokenizer: Any, prior: Any) -> None:
    """``ValueError`` unless ``tokenizer`` is a Tokenizer and ``prior`` a Prior (e.g. a run dir
    with ``tokenizer/`` and ``prior/`` swapped)."""
    from .priors.base import Prior
    from .tokenizers.base import Tokenizer
    for model, cls, role in ((tokenizer, Tokenizer, "tokenizer"), (prior, Prior, "prior")):
        if not isinstance(model, cls):
            raise ValueError(f"expected a {cls.__name__} as the {role}, got a {type(model).__name__}")


def _check_generate_args(n: Any, seed: Any, batch_size: Any) -> None:
    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)
    if not is_int(n) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    if seed is not None and not (is_int(seed) and -2**63 <= seed < 2**64):
        raise ValueError(f"seed must be None or an int in [-2**63, 2**64), got {seed!r}")
    if batch_size is not None and (not is_int(batch_size) or batch_size < 1):
        raise ValueError(f"batch_size must be None or an int >= 1, got {batch_size!r}")


def write_grid_info(png: str | os.PathLike, caption: str, rows: Sequence[str] | None = None,
                    cols: Sequence[str] | None = None, pad: int = 2) -> Path:
    """Write the report's sidecar ``<png stem>.json`` for an image grid made by
    :func:`image_grid` (``pad`` pixels around each tile): a caption and optional labels, one per
    grid row (``rows``) and per column (``cols``). Returns the sidecar's path."""
    meta: dict[str, Any] = {"caption": caption, "pad": pad}
    if rows:
        meta["rows"] = [str(r) for r in rows]
    if cols:
        meta["cols"] = [str(c) for c in cols]
    path = Path(png).with_suffix(".json")
    atomic_write_text(path, json.dumps(meta, ensure_ascii=False) + "\n")
    return path


class GenerationPipeline:
    """Tokenizer + prior. ``generate`` samples codes with the prior and decodes them.

    ``id2label`` (optional) names the prior's classes; by default they come from the prior's
    config (``prior.config.id2label``) when it has them.
    """

    def __init__(self, tokenizer: ConfigModel, prior: ConfigModel,
                 id2label: dict[int, str] | Sequence[str] | None = None):
        _check_kinds(tokenizer, prior)
        if prior.codebook_size != tokenizer.codebook_size:
            raise ValueError(f"prior codebook_size {prior.codebook_size} does not match the "
                             f"tokenizer's {tokenizer.codebook_size}")
        self.tokenizer = tokenizer
        self.prior = prior
        if id2label is not None and not isinstance(id2label, dict):
            id2label = dict(enumerate(id2label))
        self._id2label = {int(k): str(v) for k, v in id2label.items()} if id2label else None

    @property
    def id2label(self) -> dict[int, str] | None:
        """``{class id: name}``, or None when the classes have no names."""
        if self._id2label:
            return self._id2label
        names = getattr(self.prior.config, "id2label", None)
        return {int(k): str(v) for k, v in names.items()} if names else None

    def label_ids(self, labels: Labels, n: int) -> torch.Tensor | None:
        """``labels`` (an int, a class name, a list mixing both, or a tensor) as LongTensor
        ``(n,)``, or None. Raises ``ValueError`` for an unknown name (listing the valid ones),
        a name when the classes have no names, or a count other than 1 or ``n``."""
        if labels is None:
            return None
        if isinstance(labels, torch.Tensor):
            ids = labels.long().cpu()
        else:
            items = [labels] if isinstance(labels, (int, str)) else list(labels)
            ids = torch.tensor([self._label_id(v) for v in items], dtype=torch.long)
            if isinstance(labels, (int, str)):
                ids = ids[0]
        ids = ids.expand(n) if ids.dim() == 0 else ids
        if ids.shape != (n,):
            raise ValueError(f"expected one label or {n} labels, got shape {tuple(ids.shape)}")
        return ids

    def _label_id(self, value: Any) -> int:
        if isinstance(value, str) and not value.strip().lstrip("-").isdigit():
            names = self.id2label
            if not names:
                raise ValueError(f"label {value!r} is a name, but this prior's classes have no "
                                 f"names (no id2label, no {LABELS_NAME}); use class ids")
            ids = {name: i for i, name in names.items()}
            if value not in ids:
                raise ValueError(f"unknown class name {value!r}; expected one of "
                                 f"{list(ids)} (or an id in [0, {len(names)}))")
            return ids[value]
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ValueError(f"expected a class id or name, got {value!r}") from None

    def label_names(self, ids: torch.Tensor | Sequence[int]) -> list[str]:
        """Names of class ids (the id itself as text when the classes have no names)."""
        names = self.id2label or {}
        return [names.get(int(i), str(int(i))) for i in ids]

    @property
    def device(self) -> torch.device:
        return next(self.prior.parameters()).device

    def to(self, device: str | torch.device) -> "GenerationPipeline":
        self.tokenizer.to(device)
        self.prior.to(device)
        return self

    # ------------------------------------------------------------------- persistence
    def save_pretrained(self, run_dir: str | os.PathLike) -> Path:
        """Write ``run_dir/tokenizer``, ``run_dir/prior`` and, when the classes have names,
        ``run_dir/labels.json``."""
        run_dir = Path(run_dir)
        self.tokenizer.save_pretrained(run_dir / "tokenizer")
        self.prior.save_pretrained(run_dir / "prior")
        if self.id2label:
            write_labels(run_dir, self.id2label)
        return run_dir

    @classmethod
    def from_pretrained(cls, run_dir: str | os.PathLike, map_location: str | torch.device = "cpu",
                        prior_dir: str = "prior", tokenizer_dir: str | None = None) -> "GenerationPipeline":
        """Load the tokenizer whose codes the prior models, ``run_dir/<prior_dir>`` (eval mode,
        gradients off) and the class names of ``run_dir/labels.json`` when the prior has none.

        The tokenizer is ``run_dir/<tokenizer_dir>``; by default ``run_dir/prior_tokenizer``
        when the run has one (a recipe that trains the prior on a second tokenizer's codes, e.g.
        a phase-free audio codec, while ``tokenizer/`` is the reconstruction codec), else
        ``run_dir/tokenizer``."""
        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise FileNotFoundError(f"no run directory at {run_dir}")
        if tokenizer_dir is None:
            tokenizer_dir = "prior_tokenizer" if (run_dir / "prior_tokenizer").is_dir() else "tokenizer"
        tokenizer = load_model(run_dir / tokenizer_dir, map_location).requires_grad_(False)
        prior = load_model(run_dir / prior_dir, map_location).requires_grad_(False)
        return cls(tokenizer, prior, id2label=read_labels(run_dir))

    # ------------------------------------------------------------------- sampling
    @torch.no_grad()
    def generate(self, n: int, labels: Labels = None, seed: int | None = None,
                 batch_size: int | None = None, progress: bool = False,
                 **sampling: Any) -> torch.Tensor | list[str]:
        """Sample ``n`` outputs, ``batch_size`` at a time (default all at once).

        ``labels``: one class id or name for all, or ``n`` of them (class-conditional priors);
        see :meth:`label_ids`. ``sampling``: temperature, top_k, top_p, cfg_scale. ``seed``
        seeds one generator that the batches draw from in turn, so the same seed gives the same
        output (and, with a prior that samples per-sample streams, whatever ``batch_size``).
        ``progress`` shows a bar over the batches.
        """
        _check_generate_args(n, seed, batch_size)
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        labels = self.label_ids(labels, n)
        batch_size = batch_size or n
        outs = []
        for start in progress_bar(range(0, n, batch_size), desc=f"sample {n}", enabled=progress):
            m = min(batch_size, n - start)
            lab = None if labels is None else labels[start:start + m].to(self.device)
            codes = self.prior.generate(m, labels=lab, generator=generator, **sampling)
            outs.append(self.decode(codes))
        if isinstance(outs[0], list):
            return [s for o in outs for s in o]
        return torch.cat(outs)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor | list[str]:
        out = self.tokenizer.decode(codes.to(next(self.tokenizer.parameters()).device))
        if isinstance(out, torch.Tensor):
            lo = -1.0 if hasattr(self.tokenizer, "sample_rate") else 0.0
            out = out.float().clamp(lo, 1.0).cpu()
        return out

    def save(self, samples: torch.Tensor | list[str], out_dir: str | os.PathLike,
             nrow: int | None = None, prefix: str = "", labels: Labels = None) -> list[Path]:
        """Write samples: images -> ``grid.png`` + one PNG each; waveforms -> one WAV and one
        spectrogram PNG each + ``grid.png`` of all spectrograms; text -> ``samples.txt``.
        Returns the written paths.

        ``labels`` (as given to :meth:`generate`) adds ``grid.json`` beside the grid, the
        report's sidecar: a caption naming the classes and, when every grid row holds one class,
        the class name of each row.
        """
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        written: list[Path] = []
        if isinstance(samples, list):
            path = out_dir / f"{prefix}samples.txt"
            # one sample per line: line breaks inside a sample become spaces
            atomic_write_text(path, "".join(" ".join(s.splitlines()) + "\n" for s in samples))
            return [path]
        if not isinstance(samples, torch.Tensor):
            raise ValueError(f"expected a tensor or list of strings, got {type(samples).__name__}")
        if samples.dim() == 4:
            nrow = nrow or max(1, int(math.ceil(math.sqrt(samples.shape[0]))))
            grid = out_dir / f"{prefix}grid.png"
            save_png(image_grid(samples, nrow), grid)
            written.append(grid)
            if labels is not None:
                written.append(self._save_grid_labels(grid, labels, len(samples), nrow))
            for i, img in enumerate(samples):
                path = out_dir / f"{prefix}{i:04d}.png"
                save_png(img, path)
                written.append(path)
            return written
        if samples.dim() == 3 and samples.shape[1] == 1:
            return self._save_audio(samples, out_dir, nrow, prefix, labels)
        raise ValueError(f"expected images (n, C, H, W) or waveforms (n, 1, T), "
                         f"got shape {tuple(samples.shape)}")

    def _save_audio(self, waves: torch.Tensor, out_dir: Path, nrow: int | None, prefix: str,
                    labels: Labels) -> list[Path]:
        """Waveforms ``(n, 1, T)`` -> ``<i>.wav`` (16-bit PCM at the tokenizer's rate) and
        ``<i>.png`` (its log-mel spectrogram, shown beside the player in the report) per sample,
        ``<i>.json`` captions naming the class when ``labels`` are given, and ``grid.png``: all
        spectrograms tiled ``nrow`` per row (with ``grid.json`` row names)."""
        import soundfile as sf

        from .spectrogram import save_spectrogram_png, spectrogram_grid
        rate = int(getattr(self.tokenizer, "sample_rate"))
        names = None if labels is None else self.label_names(self.label_ids(labels, len(waves)))
        written: list[Path] = []
        for i, wav in enumerate(waves):
            path = out_dir / f"{prefix}{i:04d}.wav"
            data = wav[0].float().clamp(-1, 1).cpu().numpy()
            atomic_write(path, lambda tmp: sf.write(tmp, data, rate, format="WAV", subtype="PCM_16"))
            written += [path, save_spectrogram_png(wav, rate, path.with_suffix(".png"))]
            if names is not None:
                caption = f"sample {i}: {names[i]} ({data.shape[-1] / rate:.1f} s)"
                written.append(write_grid_info(path, caption))
        nrow = nrow or max(1, int(math.ceil(math.sqrt(len(waves)))))
        grid = out_dir / f"{prefix}grid.png"
        save_png(spectrogram_grid(waves, rate, nrow), grid)
        written.append(grid)
        if labels is not None:
            written.append(self._save_grid_labels(grid, labels, len(waves), nrow))
        return written

    def _save_grid_labels(self, grid: Path, labels: Labels, n: int, nrow: int) -> Path:
        """Write ``<grid>.json`` (caption, and row names when each row is one class)."""
        names = self.label_names(self.label_ids(labels, n))
        rows = [names[i:i + nrow] for i in range(0, n, nrow)]
        distinct = list(dict.fromkeys(names))
        caption = (f"{n} samples of class {distinct[0]}" if len(distinct) == 1 else
                   f"{n} samples of classes {', '.join(distinct)}")
        same = all(len(set(r)) == 1 for r in rows)
        return write_grid_info(grid, caption, rows=[r[0] for r in rows] if same else None)
