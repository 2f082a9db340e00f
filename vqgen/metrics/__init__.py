"""Evaluation metrics: image quality, codebook usage, bits per code, sample quality, tokens.

Image metrics take ``(N, C, H, W)`` batches, float in ``[0, 1]`` or uint8 (scaled by 1/255), and
run over a test set in chunks so memory stays bounded. Sample quality (Fréchet distance, class
accuracy) uses a small :class:`ImageClassifier` trained on the dataset itself — no downloaded
weights. Every function returns plain Python floats (for ``metrics.json``) unless stated, and raises
``ValueError`` naming expected and actual shapes on a mismatch.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from ..modeling import atomic_write, atomic_write_text
from ..progress import progress_bar
from .glossary import describe_metric, overfitting_warning

__all__ = ["psnr", "ssim", "codebook_stats", "bits_per_code", "prior_bits_per_code", "ImageClassifier",
           "train_classifier", "class_accuracy", "frechet_distance", "token_accuracy",
           "exact_match", "describe_metric", "overfitting_warning"]


# --------------------------------------------------------------------------- helpers
def _as_float_images(x: torch.Tensor, name: str = "images") -> torch.Tensor:
    """uint8 -> float/255, float -> float32; anything else raises."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"expected {name} as a torch.Tensor, got {type(x).__name__}")
    if x.dtype == torch.uint8:
        return x.float() / 255.0
    if not x.dtype.is_floating_point:
        raise ValueError(f"expected float or uint8 {name}, got dtype {x.dtype}")
    return x.float()


def _check_pair(x: torch.Tensor, y: torch.Tensor, min_dim: int = 2) -> None:
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise ValueError("expected two tensors")
    if x.shape != y.shape:
        raise ValueError(f"shape mismatch: expected equal shapes, got {tuple(x.shape)} "
                         f"and {tuple(y.shape)}")
    if x.dim() < min_dim:
        raise ValueError(f"expected a batch of rank >= {min_dim} (N, ...), got {tuple(x.shape)}")


# --------------------------------------------------------------------------- image quality
@torch.no_grad()
def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0,
         chunk_size: int = 1024) -> float:
    """Mean over samples of the per-sample PSNR in dB.

    ``x``, ``y``: same shape ``(N, ...)`` (images ``(N, C, H, W)``), float or uint8 (uint8 is
    scaled to [0, 1], so keep ``data_range=1``). Each sample's MSE is over all its elements.
    Identical samples give ``inf``; the mean is then ``inf`` too. Raises ``ValueError`` on a shape
    or dtype mismatch.
    """
    from torchmetrics.functional.image import peak_signal_noise_ratio

    _check_pair(x, y)
    dims = tuple(range(1, x.dim()))
    values = []
    for i in range(0, len(x), chunk_size):
        a = _as_float_images(x[i:i + chunk_size], "x")
        b = _as_float_images(y[i:i + chunk_size], "y").to(a.device)
        values.append(peak_signal_noise_ratio(a, b, data_range=data_range, dim=dims,
                                              reduction="none"))  # (n,)
    return float(torch.cat(values).mean()) if values else float("nan")


@torch.no_grad()
def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0,
         chunk_size: int = 1024) -> float:
    """Mean SSIM over images (Gaussian window, sigma 1.5, 11 wide or the largest odd size that
    fits a small image).

    ``x``, ``y``: same shape ``(N, C, H, W)`` with ``H, W >= 3``, float in [0, 1] or uint8.
    Raises ``ValueError`` on rank/shape/dtype problems.
    """
    from torchmetrics.functional.image import structural_similarity_index_measure

    _check_pair(x, y)
    if x.dim() != 4:
        raise ValueError(f"expected images (N, C, H, W), got shape {tuple(x.shape)}")
    side = min(x.shape[-2:])
    if side < 3:
        raise ValueError(f"SSIM needs images of at least 3x3, got {tuple(x.shape[-2:])}")
    kernel = min(11, side if side % 2 else side - 1)
    values = []
    for i in range(0, len(x), chunk_size):
        a = _as_float_images(x[i:i + chunk_size], "x")
        b = _as_float_images(y[i:i + chunk_size], "y").to(a.device)
        values.append(structural_similarity_index_measure(
            a, b, data_range=data_range, kernel_size=kernel, reduction="none"))  # (n,)
    return float(torch.cat(values).mean()) if values else float("nan")


# --------------------------------------------------------------------------- codes
@torch.no_grad()
def codebook_stats(codes: torch.Tensor, codebook_size: int,
                   level_dim: int | None = None) -> dict[str, float]:
    """Perplexity and usage of a set of codes.

    ``codes``: integer tensor of any shape with values in ``[0, codebook_size)``. The histogram is
    taken over all codes; with ``level_dim`` (e.g. 1 for image codes ``(B, Q, h, w)`` or audio
    ``(B, Q, T)``) each level gets its own histogram and the results are averaged over levels.

    Returns ``{"perplexity": exp(entropy) in [1, codebook_size], "usage": share of entries used
    at least once in [0, 1]}``. Raises ``ValueError`` for float codes or out-of-range values.
    """
    if not isinstance(codes, torch.Tensor) or codes.dtype.is_floating_point:
        raise ValueError(f"expected integer codes, got {getattr(codes, 'dtype', type(codes))}")
    if codes.numel() == 0:
        raise ValueError("expected at least one code, got an empty tensor")
    lo, hi = int(codes.min()), int(codes.max())
    if lo < 0 or hi >= codebook_size:
        raise ValueError(f"codes out of range: expected [0, {codebook_size}), got [{lo}, {hi}]")
    levels = [codes] if level_dim is None else list(codes.unbind(level_dim))
    perplexity, usage = 0.0, 0.0
    for level in levels:
        counts = torch.bincount(level.reshape(-1).long(), minlength=codebook_size).double()
        p = counts / counts.sum()
        entropy = -(p * torch.log(p.clamp_min(1e-30))).sum()
        perplexity += float(entropy.exp())
        usage += float((counts > 0).double().mean())
    return {"perplexity": perplexity / len(levels), "usage": usage / len(levels)}


def bits_per_code(nll_nats_total: float, num_codes: int) -> float:
    """Convert a summed negative log-likelihood in nats over ``num_codes`` codes to bits/code."""
    if num_codes <= 0:
        raise ValueError(f"num_codes must be positive, got {num_codes}")
    return float(nll_nats_total) / (num_codes * math.log(2.0))


@torch.no_grad()
def prior_bits_per_code(prior: nn.Module, codes: torch.Tensor, labels: torch.Tensor | None = None,
                        batch_size: int = 512) -> float:
    """Mean negative log-likelihood of ``codes`` ``(N, *code_shape)`` under ``prior`` (its
    ``nll(codes, labels) -> (B,)`` nats), in bits per code, in batches on the prior's device.
    ``labels``: ``(N,)`` or None. Raises ``ValueError`` for mismatched lengths or no codes."""
    if len(codes) == 0 or (labels is not None and len(labels) != len(codes)):
        raise ValueError(f"expected N >= 1 codes and N labels, got {len(codes)} codes and "
                         f"{None if labels is None else len(labels)} labels")
    device = next(prior.parameters()).device
    total = 0.0
    for i in range(0, len(codes), batch_size):
        y = None if labels is None else labels[i:i + batch_size].to(device)
        total += float(prior.nll(codes[i:i + batch_size].to(device), y).sum())
    return bits_per_code(total, codes.numel())


# --------------------------------------------------------------------------- classifier
class ImageClassifier(nn.Module):
    """Small CNN used to score samples (class accuracy, Fréchet distance features).

    Input ``(B, in_channels, H, W)`` float in [0, 1] or uint8, ``H, W >= 4``; three conv stages
    (two 2x max-pools) and a global average pool give ``features(x) -> (B, 4 * width)``; ``forward``
    returns logits ``(B, num_classes)``.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32):
        super().__init__()
        self.in_channels, self.num_classes, self.width = in_channels, num_classes, width
        self.num_features = 4 * width  # read by torchmetrics' FID (no dummy forward needed)

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]

        self.body = nn.Sequential(
            *block(in_channels, width), *block(width, width), nn.MaxPool2d(2),
            *block(width, 2 * width), *block(2 * width, 2 * width), nn.MaxPool2d(2),
            *block(2 * width, 4 * width), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(4 * width, num_classes))
        self.to(memory_format=torch.channels_last)  # much faster convs on CPU (oneDNN) and GPU

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected images (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        x = _as_float_images(x).to(self.head[1].weight.device)
        return ((x - 0.5) / 0.5).contiguous(memory_format=torch.channels_last)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features ``(B, 4 * width)``."""
        return self.body(self._prepare(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _classifier_meta(train_x: torch.Tensor, num_classes: int, **hparams) -> dict:
    """What a cached classifier must match: data geometry and training hyper-parameters."""
    return {"in_channels": int(train_x.shape[1]), "image_size": list(train_x.shape[2:]),
            "num_classes": num_classes, "num_train": int(len(train_x)),
            "version": 2, **hparams}  # 2: dropout seeded too (1 drew it from the global RNG)


def train_classifier(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
                     test_y: torch.Tensor, steps: int = 1000, batch_size: int = 128,
                     device: str | torch.device = "cpu", cache_path: str | Path | None = None,
                     lr: float = 2e-3, width: int = 32, seed: int = 0,
                     num_classes: int | None = None,
                     progress: bool = False) -> tuple[ImageClassifier, float]:
    """Train an :class:`ImageClassifier` with AdamW (cosine LR, light shift augmentation).

    ``train_x``/``test_x``: images ``(N, C, H, W)`` (uint8 or float in [0, 1]); ``train_y``/
    ``test_y``: int labels ``(N,)``. With ``cache_path`` (a ``.safetensors`` file) a matching
    cached model is loaded instead of training; otherwise the trained weights are written there
    with a ``.json`` beside it holding the test accuracy (the cache matches on image geometry,
    class and train-set counts and every hyper-parameter; anything else retrains). ``progress``
    shows a bar over the training steps. Returns ``(model in eval mode, test accuracy in
    [0, 1])``. Raises ``ValueError`` on shape/label mismatches.
    """
    for x, y, split in ((train_x, train_y, "train"), (test_x, test_y, "test")):
        if x.dim() != 4 or y.dim() != 1 or len(x) != len(y):
            raise ValueError(f"{split}: expected images (N, C, H, W) and labels (N,), got "
                             f"{tuple(x.shape)} and {tuple(y.shape)}")
    if train_x.shape[1:] != test_x.shape[1:]:
        raise ValueError(f"train images {tuple(train_x.shape[1:])} and test images "
                         f"{tuple(test_x.shape[1:])} differ in shape")
    num_classes = num_classes or int(max(train_y.max(), test_y.max())) + 1
    meta = _classifier_meta(train_x, num_classes, width=width, steps=steps,
                            batch_size=batch_size, lr=lr, seed=seed)
    device = torch.device(device)
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the global RNG
        torch.manual_seed(seed)
        model = ImageClassifier(train_x.shape[1], num_classes, width)
    if cache_path is not None:
        cache_path = Path(cache_path)
        info_path = cache_path.with_suffix(".json")
        if cache_path.is_file() and info_path.is_file():
            try:
                info = json.loads(info_path.read_text())
                if info.get("config") == meta:
                    model.load_state_dict(load_file(str(cache_path)), strict=True)
                    return model.to(device).eval(), float(info["test_accuracy"])
            except (OSError, ValueError, RuntimeError, KeyError):
                pass  # stale or damaged cache: retrain
    gen = torch.Generator().manual_seed(seed)
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    # OneCycleLR needs >= 2 warmup steps (pct_start * total); a very short run ends early in it
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 20),
                                                pct_start=0.1)
    pad = max(1, train_x.shape[-1] // 14)  # random shifts of up to ~7% of the width
    model.train()
    # dropout draws from the global RNG: seed it here (and restore the caller's stream after)
    # so the classifier, and every accuracy/FD scored with it, depends on nothing but `seed`
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        bar = progress_bar(range(steps), desc="classifier", enabled=progress)
        for step in bar:
            idx = torch.randint(0, len(train_x), (batch_size,), generator=gen)
            x = _as_float_images(train_x[idx]).to(device)  # (B, C, H, W)
            y = train_y[idx].long().to(device)
            shift = torch.randint(-pad, pad + 1, (2,), generator=gen).tolist()
            x = torch.roll(F.pad(x, (pad,) * 4), shift, dims=(-2, -1))[..., pad:-pad, pad:-pad]
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if step % 20 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    model.eval()
    acc = class_accuracy(test_x, test_y, model)
    if cache_path is not None:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        atomic_write(cache_path, lambda tmp: save_file(state, tmp))
        atomic_write_text(cache_path.with_suffix(".json"), json.dumps(
            {"test_accuracy": acc, "config": meta}, indent=2) + "\n")
    return model, acc


@torch.no_grad()
def class_accuracy(images: torch.Tensor, labels: torch.Tensor, classifier: nn.Module,
                   batch_size: int = 512) -> float:
    """Share of ``images`` ``(N, C, H, W)`` that ``classifier`` assigns to ``labels`` ``(N,)``."""
    if images.dim() != 4 or labels.dim() != 1 or len(images) != len(labels):
        raise ValueError(f"expected images (N, C, H, W) and labels (N,), got "
                         f"{tuple(images.shape)} and {tuple(labels.shape)}")
    if len(images) == 0:
        raise ValueError("expected at least one image, got none")
    was_training = classifier.training
    classifier.eval()
    correct = 0
    for i in range(0, len(images), batch_size):
        pred = classifier(images[i:i + batch_size]).argmax(-1).cpu()
        correct += int((pred == labels[i:i + batch_size].cpu()).sum())
    classifier.train(was_training)
    return correct / len(images)


# --------------------------------------------------------------------------- Fréchet distance
class _Features(nn.Module):
    """Adapter for torchmetrics' FID: images -> float ``(N, D)`` features of ``model``."""

    def __init__(self, model: nn.Module, num_features: int):
        super().__init__()
        self.model = model
        self.num_features = num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        extract = getattr(self.model, "features", self.model)
        return extract(x).flatten(1).float()  # (N, D)


@torch.no_grad()
def frechet_distance(real_images: torch.Tensor, fake_images: torch.Tensor,
                     feature_model: nn.Module, batch_size: int = 512) -> float:
    """Fréchet distance between Gaussians fitted to features of two image sets.

    ``real_images``/``fake_images``: ``(N, C, H, W)`` and ``(M, C, H, W)``, N, M >= 2, uint8 or
    float in [0, 1]. Features come from ``feature_model.features(x)`` when it has that method
    (e.g. :class:`ImageClassifier`), else ``feature_model(x)``, flattened to ``(N, D)``. Computed
    with torchmetrics' ``FrechetInceptionDistance`` given this custom extractor (no Inception
    weights). Raises ``ValueError`` for mismatched image shapes or fewer than 2 images.
    """
    from torchmetrics.image.fid import FrechetInceptionDistance

    if real_images.dim() != 4 or real_images.shape[1:] != fake_images.shape[1:]:
        raise ValueError(f"expected two image sets (N, C, H, W) of equal image shape, got "
                         f"{tuple(real_images.shape)} and {tuple(fake_images.shape)}")
    if len(real_images) < 2 or len(fake_images) < 2:
        raise ValueError(f"need at least 2 images per set, got {len(real_images)} and "
                         f"{len(fake_images)}")
    was_training = feature_model.training
    feature_model.eval()
    device = next(feature_model.parameters(), torch.empty(0)).device
    extract = getattr(feature_model, "features", feature_model)
    dim = extract(real_images[:2].to(device)).flatten(1).shape[1]
    fid = FrechetInceptionDistance(feature=_Features(feature_model, dim), normalize=True,
                                   reset_real_features=True,  # one rank evaluates: no sync
                                   sync_on_compute=False).to(device)
    for images, real in ((real_images, True), (fake_images, False)):
        for i in range(0, len(images), batch_size):
            fid.update(_as_float_images(images[i:i + batch_size]).to(device), real=real)
    value = float(fid.compute())
    feature_model.train(was_training)
    return max(value, 0.0)  # tiny negative values are round-off


# --------------------------------------------------------------------------- tokens
def _token_matches(pred: torch.Tensor, target: torch.Tensor,
                   lengths: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(matches, mask), both ``(B, L)`` bool; ``pred`` may be logits ``(B, L, V)``."""
    if pred.dtype.is_floating_point and pred.dim() == target.dim() + 1:
        pred = pred.argmax(-1)
    if pred.shape != target.shape or target.dim() != 2:
        raise ValueError(f"expected pred and target (B, L) (or pred logits (B, L, V)), got "
                         f"{tuple(pred.shape)} and {tuple(target.shape)}")
    mask = torch.ones_like(target, dtype=torch.bool)
    if lengths is not None:
        if lengths.shape != (target.shape[0],):
            raise ValueError(f"expected lengths ({target.shape[0]},), got {tuple(lengths.shape)}")
        pos = torch.arange(target.shape[1], device=target.device)
        mask = pos[None, :] < lengths.to(target.device)[:, None]  # (B, L)
    return pred.to(target.device) == target, mask


def token_accuracy(pred: torch.Tensor, target: torch.Tensor,
                   lengths: torch.Tensor | None = None) -> float:
    """Share of positions where ``pred`` equals ``target``.

    ``pred``: ``(B, L)`` ids or ``(B, L, V)`` logits; ``target``: ``(B, L)``; ``lengths``: ``(B,)``
    valid lengths (positions ``>= lengths[b]`` are ignored). Raises ``ValueError`` on a shape
    mismatch or when no position is valid.
    """
    match, mask = _token_matches(pred, target, lengths)
    total = int(mask.sum())
    if total == 0:
        raise ValueError("no valid positions to score (all lengths are 0)")
    return int((match & mask).sum()) / total


def exact_match(pred: torch.Tensor, target: torch.Tensor,
                lengths: torch.Tensor | None = None) -> float:
    """Share of sequences whose valid positions all match (shapes as :func:`token_accuracy`)."""
    match, mask = _token_matches(pred, target, lengths)
    return float((match | ~mask).all(dim=1).float().mean())
