"""Reconstruction and adversarial losses shared by the modalities (audio first).

Waveforms are ``(B, 1, T)`` or ``(B, T)`` float; every loss returns an fp32 scalar and computes
its spectra in fp32 with autocast off (bf16 STFTs are too coarse for a loss).

- :func:`compressed_spectrum_loss`: MSE between power-law compressed complex STFTs (and their
  magnitudes), the loss that lets an STFT-domain codec learn phase.
- :class:`MultiResolutionSTFTLoss`: spectral convergence + log-magnitude L1 over several FFT sizes.
- :class:`MelLoss`: L1 between log-mel spectrograms (filterbank from torchaudio).
- :func:`si_sdr_loss`, :func:`sdr_loss`, :func:`waveform_l1`: waveform-domain terms.
- :class:`AudioReconstructionLoss`: the weighted sum a tokenizer's ``forward`` uses.
- :class:`MultiScaleSTFTDiscriminator` and :class:`AdversarialLoss`: the optional adversary, one
  auxiliary object (discriminator + its optimizer + its loss) the training step calls; it lives
  in the train state (``state_dict`` holds the optimizer too) and is never exported.

Buffers (windows, filterbanks) are non-persistent: a loss module never adds checkpoint keys.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["compressed_spectrum_loss", "spectrum_mse", "MultiResolutionSTFTLoss", "MelLoss", "si_sdr_loss",
           "sdr_loss", "waveform_l1", "AudioLossConfig", "AudioReconstructionLoss",
           "MultiScaleSTFTDiscriminator", "AdversarialLoss"]


# --------------------------------------------------------------------------- helpers
def _flat(wave: Tensor) -> Tensor:
    """``(B, 1, T)`` / ``(B, T)`` -> fp32 ``(B, T)``."""
    if wave.dim() == 3:
        if wave.shape[1] != 1:
            raise ValueError(f"expected mono waves (B, 1, T), got shape {tuple(wave.shape)}")
        wave = wave[:, 0]
    if wave.dim() != 2:
        raise ValueError(f"expected waves (B, 1, T) or (B, T), got shape {tuple(wave.shape)}")
    return wave.float()


def _check_pair(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    pred, target = _flat(pred), _flat(target)
    if pred.shape != target.shape:
        raise ValueError(f"expected prediction and target of one shape, got {tuple(pred.shape)} "
                         f"and {tuple(target.shape)}")
    return pred, target


def stft(wave: Tensor, n_fft: int, hop: int, window: Tensor) -> Tensor:
    """Complex STFT ``(B, n_fft // 2 + 1, frames)`` of fp32 ``(B, T)`` (centered, reflect pad
    when the input is long enough, zero pad otherwise)."""
    mode = "reflect" if wave.shape[-1] > n_fft // 2 else "constant"
    return torch.stft(wave, n_fft, hop, window=window, center=True, pad_mode=mode, return_complex=True)


def compress(spec: Tensor, power: float, eps: float = 1e-8) -> Tensor:
    """Power-law compression of a complex spectrum: magnitude ``|X| ** power``, phase kept.
    ``eps`` keeps the gradient finite at digital silence."""
    mag = (spec.real.square() + spec.imag.square() + eps).sqrt()
    return spec * mag.pow(power - 1)


# --------------------------------------------------------------------------- spectral losses
def compressed_spectrum(wave: Tensor, n_fft: int = 320, hop: int = 160, power: float = 0.3) -> Tensor:
    """Power-law compressed complex STFT of waves ``(B, 1, T)`` / ``(B, T)`` as real | imag
    stacked on dim 1: ``(B, 2F, frames)``, fp32."""
    wave = _flat(wave).float()
    with torch.autocast(wave.device.type, enabled=False):
        spec = compress(stft(wave, n_fft, hop, torch.hann_window(n_fft, device=wave.device)), power)
    return torch.cat([spec.real, spec.imag], dim=1)


def compressed_spectrum_loss(pred: Tensor, target: Tensor, n_fft: int = 320, hop: int = 160,
                             power: float = 0.3, mag_weight: float = 0.0) -> Tensor:
    """``MSE(C(pred), C(target)) + mag_weight * MSE(|C(pred)|, |C(target)|)`` where ``C`` is
    the power-law compressed complex STFT (real and imaginary parts compared)."""
    pred, target = _check_pair(pred, target)
    return spectrum_mse(compressed_spectrum(pred, n_fft, hop, power),
                        compressed_spectrum(target, n_fft, hop, power), mag_weight)


def _check_spectra(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    if pred.shape != target.shape:
        raise ValueError(f"expected spectra of one shape, got {tuple(pred.shape)} and {tuple(target.shape)}")
    return pred.float(), target.float()


def stacked_magnitude(spec: Tensor, eps: float = 1e-8) -> Tensor:
    """Magnitudes ``(B, F, N)`` of a spectrum given as real | imag stacked on dim 1 (``(B, 2F,
    N)``); ``eps`` keeps the gradient finite at 0."""
    re, im = spec.chunk(2, dim=1)
    return (re.square() + im.square() + eps).sqrt()


def magnitude_mse(pred: Tensor, target: Tensor) -> Tensor:
    """MSE of the magnitudes of spectra given as real | imag stacked on dim 1 (``(B, 2F, N)``):
    blind to phase."""
    pred, target = _check_spectra(pred, target)
    return F.mse_loss(stacked_magnitude(pred), stacked_magnitude(target))


def spectrum_mse(pred: Tensor, target: Tensor, mag_weight: float = 0.0) -> Tensor:
    """MSE of compressed spectra given as real | imag stacked on dim 1 (``(B, 2F, N)``), plus
    ``mag_weight`` x :func:`magnitude_mse`."""
    pred, target = _check_spectra(pred, target)
    loss = F.mse_loss(pred, target)
    if mag_weight:
        loss = loss + mag_weight * magnitude_mse(pred, target)
    return loss


class MultiResolutionSTFTLoss(nn.Module):
    """Mean over FFT sizes of spectral convergence ``||S_t - S_p||_F / ||S_t||_F`` plus
    ``mean |log S_t - log S_p|`` (magnitudes floored at 1e-5); hop = n_fft / 4."""

    def __init__(self, fft_sizes: tuple[int, ...] = (256, 512, 1024)):
        super().__init__()
        self.fft_sizes = tuple(fft_sizes)
        for n in self.fft_sizes:
            self.register_buffer(f"window_{n}", torch.hann_window(n), persistent=False)

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        pred, target = _check_pair(pred, target)
        total = pred.new_zeros(())
        with torch.autocast(pred.device.type, enabled=False):
            for n in self.fft_sizes:
                w = getattr(self, f"window_{n}")
                sp, st = stft(pred, n, n // 4, w).abs(), stft(target, n, n // 4, w).abs()
                sc = (st - sp).norm() / st.norm().clamp(min=1e-5)
                total = total + sc + (st.clamp(min=1e-5).log() - sp.clamp(min=1e-5).log()).abs().mean()
        return total / len(self.fft_sizes)


class MelLoss(nn.Module):
    """L1 between natural-log mel spectrograms (magnitude, floored at 1e-5), averaged over the
    given FFT sizes (hop = n_fft / 4, ``n_mels`` bands, Slaney-free HTK scale from torchaudio)."""

    def __init__(self, sample_rate: int, fft_sizes: tuple[int, ...] = (512, 1024), n_mels: int = 64):
        super().__init__()
        import torchaudio.functional as AF
        self.fft_sizes = tuple(fft_sizes)
        for n in self.fft_sizes:
            self.register_buffer(f"window_{n}", torch.hann_window(n), persistent=False)
            fb = AF.melscale_fbanks(n // 2 + 1, 0.0, sample_rate / 2, n_mels, sample_rate)  # (F, M)
            self.register_buffer(f"fb_{n}", fb, persistent=False)

    def log_mel(self, wave: Tensor, n_fft: int) -> Tensor:
        """``(B, T)`` fp32 -> ``(B, frames, n_mels)`` log-mel."""
        mag = stft(wave, n_fft, n_fft // 4, getattr(self, f"window_{n_fft}")).abs()  # (B, F, frames)
        return (mag.transpose(1, 2) @ getattr(self, f"fb_{n_fft}")).clamp(min=1e-5).log()

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        pred, target = _check_pair(pred, target)
        with torch.autocast(pred.device.type, enabled=False):
            return sum(F.l1_loss(self.log_mel(pred, n), self.log_mel(target, n))
                       for n in self.fft_sizes) / len(self.fft_sizes)


def si_sdr_loss(pred: Tensor, target: Tensor, eps: float = 1e-8) -> Tensor:
    """Negative mean scale-invariant SDR in dB (zero-mean signals); lower is better."""
    pred, target = _check_pair(pred, target)
    pred, target = pred - pred.mean(-1, keepdim=True), target - target.mean(-1, keepdim=True)
    alpha = (pred * target).sum(-1, keepdim=True) / (target.square().sum(-1, keepdim=True) + eps)
    proj = alpha * target
    ratio = (proj.square().sum(-1) + eps) / ((pred - proj).square().sum(-1) + eps)
    return -10 * torch.log10(ratio).mean()


def sdr_loss(pred: Tensor, target: Tensor, eps: float = 1e-8) -> Tensor:
    """Negative mean signal-to-distortion ratio in dB, ``10 log10(|t|^2 / |t - p|^2)``: unlike
    SI-SDR it is not scale-invariant, so a quieter output costs (lower is better)."""
    pred, target = _check_pair(pred, target)
    ratio = (target.square().sum(-1) + eps) / ((target - pred).square().sum(-1) + eps)
    return -10 * torch.log10(ratio).mean()


def waveform_l1(pred: Tensor, target: Tensor) -> Tensor:
    pred, target = _check_pair(pred, target)
    return F.l1_loss(pred, target)


# --------------------------------------------------------------------------- weighted sum
@dataclass
class AudioLossConfig:
    """Weights of :class:`AudioReconstructionLoss` (0 turns a term off)."""

    complex_weight: float = 1.0        # compressed complex-spectrum MSE
    magnitude_weight: float = 0.0      # compressed-magnitude MSE (phase-blind; alone, i.e. with
                                       # complex_weight 0, it lets a decoder choose the phase)
    mel_weight: float = 0.1
    stft_weight: float = 0.0           # multi-resolution STFT loss
    waveform_weight: float = 0.0       # L1 on samples
    si_sdr_weight: float = 0.0         # x (-SI-SDR dB) / 10
    sdr_weight: float = 0.0            # x (-SDR dB) / 10 (level-sensitive)
    n_fft: int = 320
    hop: int = 160
    power: float = 0.3


class AudioReconstructionLoss(nn.Module):
    """Weighted sum of the terms above; ``forward(pred, target) -> (loss, {term: value})``."""

    def __init__(self, config: AudioLossConfig, sample_rate: int):
        super().__init__()
        self.config = config
        self.mel = MelLoss(sample_rate) if config.mel_weight else None
        self.stft = MultiResolutionSTFTLoss() if config.stft_weight else None

    def forward(self, pred: Tensor, target: Tensor, pred_spec: Tensor | None = None,
                target_spec: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """``pred``/``target`` waves ``(B, 1, T)``. A codec that predicts the compressed spectrum
        may pass it (``pred_spec``, ``target_spec``: real tensors of one shape, e.g. real | imag
        stacked ``(B, 2F, N)``); the complex term then compares those directly (no extra STFT)."""
        c = self.config
        terms: dict[str, Tensor] = {}
        if (c.complex_weight or c.magnitude_weight) and pred_spec is None:
            pred, target = _check_pair(pred, target)
            pred_spec, target_spec = (compressed_spectrum(w, c.n_fft, c.hop, c.power) for w in (pred, target))
        if c.complex_weight:
            terms["complex_loss"] = c.complex_weight * spectrum_mse(pred_spec, target_spec)
        if c.magnitude_weight:
            terms["magnitude_loss"] = c.magnitude_weight * magnitude_mse(pred_spec, target_spec)
        if self.mel is not None:
            terms["mel_loss"] = c.mel_weight * self.mel(pred, target)
        if self.stft is not None:
            terms["stft_loss"] = c.stft_weight * self.stft(pred, target)
        if c.waveform_weight:
            terms["waveform_loss"] = c.waveform_weight * waveform_l1(pred, target)
        if c.si_sdr_weight:
            terms["si_sdr_loss"] = c.si_sdr_weight * si_sdr_loss(pred, target) / 10
        if c.sdr_weight:
            terms["sdr_loss"] = c.sdr_weight * sdr_loss(pred, target) / 10
        if not terms:
            raise ValueError("AudioLossConfig: expected at least one non-zero loss weight")
        total = torch.stack(list(terms.values())).sum()
        return total, {k: v.detach() for k, v in terms.items()}


# --------------------------------------------------------------------------- adversary
class _STFTDiscriminator(nn.Module):
    """One scale: complex STFT ``(B, 2, frames, freq)`` -> conv2d stack -> logits map."""

    def __init__(self, n_fft: int, channels: int = 32):
        super().__init__()
        self.n_fft = n_fft
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        layers = [nn.Conv2d(2, channels, (3, 9), padding=(1, 4))]
        for d in (1, 2, 4):
            layers.append(nn.Conv2d(channels, channels, (3, 9), stride=(1, 2), dilation=(d, 1),
                                    padding=(d, 4)))
        layers.append(nn.Conv2d(channels, channels, (3, 3), padding=(1, 1)))
        self.layers = nn.ModuleList(layers)
        self.out = nn.Conv2d(channels, 1, (3, 3), padding=(1, 1))

    def forward(self, wave: Tensor) -> tuple[Tensor, list[Tensor]]:
        with torch.autocast(wave.device.type, enabled=False):
            spec = stft(wave.float(), self.n_fft, self.n_fft // 4, self.window)      # (B, F, N)
        x = torch.view_as_real(spec).permute(0, 3, 2, 1)                           # (B, 2, N, F)
        feats = []
        for layer in self.layers:
            x = F.leaky_relu(layer(x), 0.2)
            feats.append(x)
        return self.out(x), feats


class MultiScaleSTFTDiscriminator(nn.Module):
    """EnCodec-style multi-scale STFT discriminator: one small 2D conv net per FFT size.
    ``forward(wave (B, 1, T)) -> (list of logits maps, list of feature-map lists)``."""

    def __init__(self, fft_sizes: tuple[int, ...] = (256, 512, 1024), channels: int = 32):
        super().__init__()
        self.scales = nn.ModuleList(_STFTDiscriminator(n, channels) for n in fft_sizes)

    def forward(self, wave: Tensor) -> tuple[list[Tensor], list[list[Tensor]]]:
        wave = _flat(wave)
        outs = [d(wave) for d in self.scales]
        return [o[0] for o in outs], [o[1] for o in outs]


class AdversarialLoss(nn.Module):
    """Discriminator + its optimizer + its loss: the one auxiliary object of adversarial training.

    In a training step call :meth:`discriminator_step` (updates the discriminator on
    ``fake.detach()`` vs ``real``; gradients all-reduced under DDP) and add
    :meth:`generator_loss` (adversarial + ``feature_weight`` x feature matching) to the
    generator's loss. ``state_dict()`` holds the discriminator weights *and* its optimizer state,
    so the training loop saves and restores it with the run (exact resume); it is never part of
    the exported tokenizer. ``loss`` is ``"hinge"`` or ``"ls"`` (least squares).
    """

    def __init__(self, discriminator: nn.Module, loss: str = "hinge", lr: float = 2e-4,
                 betas: tuple[float, float] = (0.5, 0.9), adversarial_weight: float = 1.0,
                 feature_weight: float = 2.0):
        super().__init__()
        if loss not in ("hinge", "ls"):
            raise ValueError(f"AdversarialLoss loss must be 'hinge' or 'ls', got {loss!r}")
        self.discriminator, self.loss_type = discriminator, loss
        self.adversarial_weight, self.feature_weight = adversarial_weight, feature_weight
        self.optimizer = torch.optim.Adam(discriminator.parameters(), lr=lr, betas=betas)

    def _d_loss(self, real_logits: Tensor, fake_logits: Tensor) -> Tensor:
        if self.loss_type == "hinge":
            return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()
        return (real_logits - 1).square().mean() + fake_logits.square().mean()

    def _g_loss(self, fake_logits: Tensor) -> Tensor:
        if self.loss_type == "hinge":
            return F.relu(1 - fake_logits).mean()
        return (fake_logits - 1).square().mean()

    def discriminator_step(self, fake: Tensor, real: Tensor) -> Tensor:
        """One optimizer step of the discriminator; returns its (detached) loss."""
        self.optimizer.zero_grad(set_to_none=True)
        real_logits, _ = self.discriminator(real.detach())
        fake_logits, _ = self.discriminator(fake.detach())
        loss = sum(self._d_loss(r.float(), f.float()) for r, f in zip(real_logits, fake_logits)) / len(real_logits)
        loss.backward()
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            world = dist.get_world_size()
            for p in self.discriminator.parameters():
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad.div_(world)
        self.optimizer.step()
        return loss.detach()

    def generator_loss(self, fake: Tensor, real: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Adversarial + feature-matching loss for the generator (gradient flows into ``fake``)."""
        fake_logits, fake_feats = self.discriminator(fake)
        with torch.no_grad():
            _, real_feats = self.discriminator(real.detach())
        adv = sum(self._g_loss(f.float()) for f in fake_logits) / len(fake_logits)
        fm = [F.l1_loss(f.float(), r.float()) / (r.float().abs().mean() + 1e-5)
              for fs, rs in zip(fake_feats, real_feats) for f, r in zip(fs, rs)]
        fm = sum(fm) / len(fm)
        total = self.adversarial_weight * adv + self.feature_weight * fm
        return total, {"adv_loss": adv.detach(), "feature_loss": fm.detach()}

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return {"discriminator": self.discriminator.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any], strict: bool = True, assign: bool = False) -> Any:
        if not isinstance(state, dict) or set(state) != {"discriminator", "optimizer"}:
            raise ValueError("AdversarialLoss state must hold 'discriminator' and 'optimizer'")
        self.discriminator.load_state_dict(state["discriminator"], strict=strict)
        self.optimizer.load_state_dict(state["optimizer"])
