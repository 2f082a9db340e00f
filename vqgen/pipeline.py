"""End-to-end generation: a trained tokenizer plus a trained prior.

    pipe = GenerationPipeline.from_pretrained("runs/image")   # holds tokenizer/ and prior/
    images = pipe.generate(16, labels=3, seed=0, temperature=0.9)   # (16, C, H, W) in [0, 1]
    pipe.save(images, "out/")                                  # grid.png + 0000.png ...

Outputs per modality: images ``(n, C, H, W)`` float in [0, 1]; waveforms ``(n, 1, T)`` float
in [-1, 1] at the tokenizer's rate; text ``list[str]``.
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

# model_type -> "module:Class"; resolved lazily so that a run dir names its own classes.
MODEL_CLASSES = {
    "ImageTokenizer": "vqgen.tokenizers.image:ImageTokenizer",
    "AudioTokenizer": "vqgen.tokenizers.audio:AudioTokenizer",
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


class GenerationPipeline:
    """Tokenizer + prior. ``generate`` samples codes with the prior and decodes them."""

    def __init__(self, tokenizer: ConfigModel, prior: ConfigModel):
        if prior.codebook_size != tokenizer.codebook_size:
            raise ValueError(f"prior codebook_size {prior.codebook_size} does not match the "
                             f"tokenizer's {tokenizer.codebook_size}")
        self.tokenizer = tokenizer
        self.prior = prior

    @property
    def device(self) -> torch.device:
        return next(self.prior.parameters()).device

    def to(self, device: str | torch.device) -> "GenerationPipeline":
        self.tokenizer.to(device)
        self.prior.to(device)
        return self

    # ------------------------------------------------------------------- persistence
    def save_pretrained(self, run_dir: str | os.PathLike) -> Path:
        run_dir = Path(run_dir)
        self.tokenizer.save_pretrained(run_dir / "tokenizer")
        self.prior.save_pretrained(run_dir / "prior")
        return run_dir

    @classmethod
    def from_pretrained(cls, run_dir: str | os.PathLike, map_location: str | torch.device = "cpu",
                        prior_dir: str = "prior") -> "GenerationPipeline":
        """Load ``run_dir/tokenizer`` and ``run_dir/<prior_dir>`` (eval mode)."""
        run_dir = Path(run_dir)
        if not run_dir.is_dir():
            raise FileNotFoundError(f"no run directory at {run_dir}")
        return cls(load_model(run_dir / "tokenizer", map_location),
                   load_model(run_dir / prior_dir, map_location))

    # ------------------------------------------------------------------- sampling
    @torch.no_grad()
    def generate(self, n: int, labels: int | Sequence[int] | torch.Tensor | None = None,
                 seed: int | None = None, batch_size: int | None = None,
                 **sampling: Any) -> torch.Tensor | list[str]:
        """Sample ``n`` outputs. ``labels``: one int for all, or ``n`` ints (class-conditional
        priors). ``sampling``: temperature, top_k, top_p, cfg_scale. Same seed, same output."""
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be an int >= 1, got {n!r}")
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        if labels is not None:
            labels = torch.as_tensor(labels)
            labels = labels.expand(n) if labels.dim() == 0 else labels
            if labels.shape != (n,):
                raise ValueError(f"expected one label or {n} labels, got shape {tuple(labels.shape)}")
        batch_size = batch_size or n
        outs = []
        for start in range(0, n, batch_size):
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
             nrow: int | None = None, prefix: str = "") -> list[Path]:
        """Write samples: images -> ``grid.png`` + one PNG each; waveforms -> WAVs; text ->
        ``samples.txt``. Returns the written paths."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        written: list[Path] = []
        if isinstance(samples, list):
            path = out_dir / f"{prefix}samples.txt"
            atomic_write_text(path, "\n".join(samples) + "\n")
            return [path]
        if not isinstance(samples, torch.Tensor):
            raise ValueError(f"expected a tensor or list of strings, got {type(samples).__name__}")
        if samples.dim() == 4:
            nrow = nrow or max(1, int(math.ceil(math.sqrt(samples.shape[0]))))
            grid = out_dir / f"{prefix}grid.png"
            save_png(image_grid(samples, nrow), grid)
            written.append(grid)
            for i, img in enumerate(samples):
                path = out_dir / f"{prefix}{i:04d}.png"
                save_png(img, path)
                written.append(path)
            return written
        if samples.dim() == 3 and samples.shape[1] == 1:
            import soundfile as sf
            rate = int(getattr(self.tokenizer, "sample_rate"))
            for i, wav in enumerate(samples):
                path = out_dir / f"{prefix}{i:04d}.wav"
                data = wav[0].float().clamp(-1, 1).cpu().numpy()
                atomic_write(path, lambda tmp: sf.write(tmp, data, rate, format="WAV"))
                written.append(path)
            return written
        raise ValueError(f"expected images (n, C, H, W) or waveforms (n, 1, T), "
                         f"got shape {tuple(samples.shape)}")
