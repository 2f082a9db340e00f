"""Sample quality for audio: a small voice/timbre classifier on log-mel features, trained on the
dataset's own training split (no downloaded weights), and Fréchet distances.

- :class:`AudioClassifier`: log-mel front end, 1-D conv stack over frames, mean + std pooling
  over time (any clip length), an embedding (``features``) and a linear head (``forward``).
- :func:`train_audio_classifier`: seeded training on random crops of the training clips,
  cached as ``.safetensors`` + ``.json`` (which holds the held-out accuracy); a progress bar.
- :func:`audio_class_accuracy`, :func:`audio_frechet_distance` (torchmetrics FID with the
  classifier as a custom feature extractor) and :func:`mel_frechet_distance` (Gaussians fitted
  to log-mel frames; compare with the train-vs-test distance as a yardstick).

Waves are float ``(N, 1, T)`` or ``(N, T)`` in [-1, 1] at the classifier's ``sample_rate``.
Functions return plain floats and raise ``ValueError`` naming expected and actual shapes.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from ..modeling import atomic_write, atomic_write_text
from ..progress import progress_bar
from . import _Features

__all__ = ["AudioClassifier", "LogMel", "train_audio_classifier", "audio_class_accuracy",
           "audio_frechet_distance", "mel_frechet_distance", "crop_clips", "gaussian_frechet"]


# --------------------------------------------------------------------------- helpers
def _as_waves(x: torch.Tensor, name: str = "waves") -> torch.Tensor:
    """``(N, 1, T)`` or ``(N, T)`` float -> ``(N, T)`` float32; ``ValueError`` otherwise."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise ValueError(f"expected {name} as a float tensor (N, 1, T) or (N, T), got "
                         f"{getattr(x, 'dtype', type(x).__name__)}")
    if x.dim() == 3 and x.shape[1] == 1:
        x = x[:, 0]
    if x.dim() != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"expected {name} (N, 1, T) or (N, T) with N, T >= 1, got {tuple(x.shape)}")
    return x.float()


def crop_clips(clips, length: int, centre: bool = True, generator: torch.Generator | None = None,
               index=None) -> torch.Tensor:
    """Fixed-length crops ``(n, 1, length)`` of :class:`vqgen.data.audio.AudioClips` (all clips,
    or those at ``index``): the centre (``centre=True``) or a random window from ``generator``;
    clips shorter than ``length`` are zero-padded at the end."""
    index = range(len(clips)) if index is None else [int(i) for i in index]
    out = torch.zeros(len(index), 1, length)
    for row, i in enumerate(index):
        wave = clips.clip(i)
        room = len(wave) - length
        if room > 0:
            off = room // 2 if centre else int(torch.randint(room + 1, (), generator=generator))
            wave = wave[off:off + length]
        out[row, 0, :len(wave)] = wave
    return out


class LogMel(nn.Module):
    """``(N, T)`` waves -> log-mel ``(N, n_mels, frames)`` (natural log, floor 1e-5)."""

    def __init__(self, sample_rate: int, n_mels: int = 64, n_fft: int = 400, hop: int = 160):
        super().__init__()
        import torchaudio
        self.mel = torchaudio.transforms.MelSpectrogram(sample_rate, n_fft=n_fft, hop_length=hop,
                                                        n_mels=n_mels, power=2.0)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return torch.log(self.mel(wave.float()).clamp_min(1e-5))


# --------------------------------------------------------------------------- classifier
class AudioClassifier(nn.Module):
    """Voice/timbre classifier over log-mel frames, for any clip length >= ``n_fft`` samples.

    ``features(wave (N, 1, T) or (N, T)) -> (N, embed_dim)``; ``forward`` gives logits
    ``(N, num_classes)``. Input normalisation is a learned BatchNorm over mel bins.
    """

    def __init__(self, sample_rate: int, num_classes: int, width: int = 128, embed_dim: int = 128,
                 n_mels: int = 64):
        super().__init__()
        self.sample_rate, self.num_classes = sample_rate, num_classes
        self.num_features = embed_dim  # read by torchmetrics' FID
        self.logmel = LogMel(sample_rate, n_mels)

        def block(cin: int, cout: int, stride: int) -> list[nn.Module]:
            return [nn.Conv1d(cin, cout, 5, stride, padding=2), nn.BatchNorm1d(cout), nn.ReLU()]

        self.body = nn.Sequential(nn.BatchNorm1d(n_mels), *block(n_mels, width, 1),
                                  *block(width, width, 2), *block(width, 2 * width, 2),
                                  *block(2 * width, 2 * width, 1))
        self.embed = nn.Sequential(nn.Linear(4 * width, embed_dim), nn.ReLU())  # mean + std
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(embed_dim, num_classes))

    def features(self, wave: torch.Tensor) -> torch.Tensor:
        """Embeddings ``(N, embed_dim)`` of waves ``(N, 1, T)`` / ``(N, T)``."""
        x = _as_waves(wave).to(self.head[1].weight.device)
        h = self.body(self.logmel(x))                                   # (N, 2 * width, frames)
        stats = torch.cat([h.mean(-1), h.std(-1, unbiased=False)], 1)  # (N, 4 * width)
        return self.embed(stats)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(wave))


def _data_fingerprint(clips) -> str:
    h = hashlib.sha256()
    for arr in (clips.audio, clips.offsets, clips.labels):
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def train_audio_classifier(train, test, num_classes: int | None = None, steps: int = 1000,
                           batch_size: int = 64, crop_seconds: float = 1.5, lr: float = 2e-3,
                           width: int = 128, seed: int = 0, device: str | torch.device = "cpu",
                           cache_path: str | Path | None = None, progress: bool = True
                           ) -> tuple[AudioClassifier, float]:
    """Train an :class:`AudioClassifier` on random crops of ``train`` clips (AudioClips).

    AdamW with a one-cycle LR, random crop positions and random gain (+-6 dB); seeded by
    ``seed`` without touching the caller's RNG. The held-out accuracy is measured on centre
    crops of ``test`` clips whose label occurs in ``train`` (unseen classes cannot be named).
    With ``cache_path`` (``.safetensors``) a model trained on the same data with the same
    settings is loaded instead (``.json`` beside it holds the settings and the accuracy).
    Returns ``(model in eval mode, test accuracy in [0, 1])``. Raises ``ValueError`` for empty
    splits, mismatched rates or labels outside ``[0, num_classes)``.
    """
    if len(train) == 0 or len(test) == 0:
        raise ValueError(f"expected non-empty train and test clips, got {len(train)} and {len(test)}")
    if train.sample_rate != test.sample_rate:
        raise ValueError(f"train and test rates differ: {train.sample_rate} vs {test.sample_rate}")
    num_classes = num_classes or int(max(train.labels.max(), test.labels.max())) + 1
    if int(train.labels.max()) >= num_classes or int(test.labels.max()) >= num_classes:
        raise ValueError(f"labels must be in [0, {num_classes}), got max "
                         f"{int(max(train.labels.max(), test.labels.max()))}")
    rate, crop = train.sample_rate, int(crop_seconds * train.sample_rate)
    meta = {"version": 1, "train": _data_fingerprint(train), "test": _data_fingerprint(test),
            "num_classes": num_classes, "sample_rate": rate, "steps": steps, "lr": lr,
            "batch_size": batch_size, "crop_seconds": crop_seconds, "width": width, "seed": seed}
    device = torch.device(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AudioClassifier(rate, num_classes, width)
    cache_path = Path(cache_path) if cache_path is not None else None
    if cache_path is not None and cache_path.is_file() and cache_path.with_suffix(".json").is_file():
        try:
            info = json.loads(cache_path.with_suffix(".json").read_text())
            if info.get("config") == meta:
                model.load_state_dict(load_file(str(cache_path)), strict=True)
                return model.to(device).eval(), float(info["test_accuracy"])
        except (OSError, ValueError, RuntimeError, KeyError):
            pass  # stale or damaged cache: retrain
    gen = torch.Generator().manual_seed(seed)
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1),
                                                pct_start=0.1)
    labels = torch.as_tensor(np.asarray(train.labels), dtype=torch.long)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)  # dropout noise
        for _ in progress_bar(range(steps), desc="audio classifier", enabled=progress):
            idx = torch.randint(0, len(train), (batch_size,), generator=gen)
            x = crop_clips(train, crop, centre=False, generator=gen, index=idx)  # (B, 1, crop)
            gain = 10 ** (torch.empty(batch_size, 1, 1).uniform_(-6, 6, generator=gen) / 20)
            loss = F.cross_entropy(model((x * gain).clamp(-1, 1).to(device)), labels[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    seen = np.isin(np.asarray(test.labels), np.unique(np.asarray(train.labels)))
    idx = np.flatnonzero(seen)
    acc = float("nan") if len(idx) == 0 else audio_class_accuracy(
        crop_clips(test, crop, index=idx), torch.as_tensor(np.asarray(test.labels)[idx]), model)
    if cache_path is not None:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        atomic_write(cache_path, lambda tmp: save_file(state, tmp))
        atomic_write_text(cache_path.with_suffix(".json"), json.dumps(
            {"test_accuracy": acc, "config": meta}, indent=2) + "\n")
    return model, acc


# --------------------------------------------------------------------------- scores
@torch.no_grad()
def audio_class_accuracy(waves: torch.Tensor, labels, classifier: nn.Module,
                         batch_size: int = 64) -> float:
    """Share of ``waves`` ``(N, 1, T)`` that ``classifier`` assigns to ``labels`` ``(N,)``."""
    waves = _as_waves(waves)
    labels = torch.as_tensor(labels)
    if labels.shape != (len(waves),):
        raise ValueError(f"expected {len(waves)} labels, got shape {tuple(labels.shape)}")
    was_training = classifier.training
    classifier.eval()
    correct = sum(int((classifier(w).argmax(-1).cpu() == y).sum())
                  for w, y in zip(waves.split(batch_size), labels.cpu().split(batch_size)))
    classifier.train(was_training)
    return correct / len(waves)


@torch.no_grad()
def audio_frechet_distance(real: torch.Tensor, fake: torch.Tensor, classifier: nn.Module,
                           batch_size: int = 64) -> float:
    """Fréchet distance between Gaussians fitted to ``classifier.features`` of two sets of waves
    ``(N, 1, T)`` and ``(M, 1, T')`` (N, M >= 2), via torchmetrics' FID with the classifier as a
    custom feature extractor. Not comparable with image FID or published FAD values."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    real, fake = _as_waves(real, "real waves"), _as_waves(fake, "fake waves")
    if len(real) < 2 or len(fake) < 2:
        raise ValueError(f"need at least 2 clips per set, got {len(real)} and {len(fake)}")
    was_training = classifier.training
    classifier.eval()
    device = next(classifier.parameters()).device
    fid = FrechetInceptionDistance(feature=_Features(classifier, classifier.num_features),
                                   reset_real_features=True, sync_on_compute=False).to(device)
    for waves, is_real in ((real, True), (fake, False)):
        for chunk in waves.split(batch_size):
            fid.update(chunk.to(device), real=is_real)
    value = float(fid.compute())
    classifier.train(was_training)
    return max(value, 0.0)


def gaussian_frechet(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to the rows of ``a (N, D)`` and ``b (M, D)``:
    ``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))`` in float64."""
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = torch.cov(a.T), torch.cov(b.T)
    root = torch.linalg.eigvals(s_a @ s_b).sqrt().real.sum()
    return max(float((mu_a - mu_b).square().sum() + s_a.trace() + s_b.trace() - 2 * root), 0.0)


@torch.no_grad()
def mel_frechet_distance(real: torch.Tensor, fake: torch.Tensor, sample_rate: int,
                         n_mels: int = 64) -> float:
    """Fréchet distance between Gaussians fitted to the log-mel frames (``n_mels``-dim vectors,
    10 ms hop) of two sets of waves. Report it next to the train-vs-test value of real data."""
    real, fake = _as_waves(real, "real waves"), _as_waves(fake, "fake waves")
    logmel = LogMel(sample_rate, n_mels)
    frames = [torch.cat([logmel(c).transpose(1, 2).reshape(-1, n_mels) for c in w.split(64)])
              for w in (real, fake)]
    if min(len(f) for f in frames) < 2:
        raise ValueError("need at least 2 log-mel frames per set")
    return gaussian_frechet(*frames)
