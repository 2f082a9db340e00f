"""Audio losses and the adversary: hand-checked values, invariances, errors, exact resume."""
import json
import math

import pytest
import torch

from vqgen.losses import (AdversarialLoss, AudioLossConfig, AudioReconstructionLoss, MelLoss,
                          MultiResolutionSTFTLoss, MultiScaleSTFTDiscriminator,
                          compressed_spectrum, compressed_spectrum_loss, sdr_loss, si_sdr_loss, spectrum_mse,
                          waveform_l1)
from vqgen.tokenizers.audio import audio_tokenizer_debug
from vqgen.training import TrainConfig, train


def noise(batch=2, t=4000, seed=0):
    return 0.3 * torch.randn(batch, 1, t, generator=torch.Generator().manual_seed(seed))


def test_si_sdr_loss_hand_values():
    t = noise()
    g = torch.Generator().manual_seed(1)
    e = torch.randn(t.shape, generator=g)
    t0 = t - t.mean(-1, keepdim=True)
    e = e - e.mean(-1, keepdim=True)
    e = e - (e * t0).sum(-1, keepdim=True) / t0.square().sum(-1, keepdim=True) * t0   # orthogonal to t
    e = e * t0.norm(dim=-1, keepdim=True) / e.norm(dim=-1, keepdim=True)             # equal energy
    assert float(si_sdr_loss(t + e, t)) == pytest.approx(0.0, abs=1e-3)               # 0 dB
    assert float(si_sdr_loss(t + 0.1 * e, t)) == pytest.approx(-20.0, abs=1e-2)       # 20 dB
    assert float(si_sdr_loss(3.0 * (t + 0.1 * e), t)) == pytest.approx(-20.0, abs=1e-2)  # scale-free
    # SDR is not scale-free: t + 0.1 e scores 20 dB, half its level 10 log10(1 / (0.25 + 0.0025))
    assert float(sdr_loss(t + 0.1 * e, t)) == pytest.approx(-20.0, abs=1e-2)
    assert float(sdr_loss(0.5 * (t + 0.1 * e), t)) == pytest.approx(-10 * math.log10(1 / 0.2525), abs=1e-2)


def test_identical_inputs_give_zero_and_different_give_positive():
    x, y = noise(seed=0), noise(seed=1)
    mel, mrstft = MelLoss(16000), MultiResolutionSTFTLoss()
    for fn in (compressed_spectrum_loss, mrstft, lambda a, b: mel(a, b), waveform_l1):
        assert float(fn(x, x)) == pytest.approx(0.0, abs=1e-6)
        assert float(fn(x, y)) > 0.01
    assert float(waveform_l1(x, torch.zeros_like(x))) == pytest.approx(float(x.abs().mean()))


def test_spectrum_mse_hand_value():
    pred = torch.tensor([[[3.0], [0.0]]])          # (B=1, 2F=2, N=1): 3 + 0i
    target = torch.tensor([[[0.0], [4.0]]])        # 0 + 4i
    # MSE over (re, im) = (9 + 16) / 2; magnitudes 3 vs 4 -> 1
    assert float(spectrum_mse(pred, target, mag_weight=1.0)) == pytest.approx(12.5 + 1.0, rel=1e-5)


def test_magnitude_term_alone_is_blind_to_phase():
    """complex_weight 0 + magnitude_weight: a sign-flipped wave (every phase turned by pi) costs
    nothing, while the complex term sees it; with spectra passed or computed from the waves."""
    x = noise(seed=3)
    blind = AudioReconstructionLoss(AudioLossConfig(complex_weight=0.0, magnitude_weight=1.0, mel_weight=0.0), 16000)
    full = AudioReconstructionLoss(AudioLossConfig(mel_weight=0.0), 16000)
    loss, terms = blind(-x, x)
    assert set(terms) == {"magnitude_loss"} and float(loss) == pytest.approx(0.0, abs=1e-6)
    assert float(full(-x, x)[0]) > 0.01
    spec = compressed_spectrum(x)
    assert spec.shape == (2, 2 * 161, 4000 // 160 + 1)
    assert float(blind(-x, x, -spec, spec)[0]) == pytest.approx(0.0, abs=1e-6)
    assert float(blind(0.5 * x, x)[0]) > 0.001                 # the level still counts


def test_losses_have_finite_gradients_at_digital_silence():
    x = torch.zeros(2, 1, 2000, requires_grad=True)
    target = noise(t=2000)
    loss, terms = AudioReconstructionLoss(AudioLossConfig(stft_weight=1.0, waveform_weight=1.0,
                                                          si_sdr_weight=1.0, sdr_weight=1.0), 16000)(x, target)
    loss.backward()
    assert set(terms) == {"complex_loss", "mel_loss", "stft_loss", "waveform_loss", "si_sdr_loss", "sdr_loss"}
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="one shape"):
        compressed_spectrum_loss(noise(t=100), noise(t=101))
    with pytest.raises(ValueError, match="mono"):
        waveform_l1(torch.zeros(1, 2, 10), torch.zeros(1, 2, 10))
    with pytest.raises(ValueError, match="non-zero loss weight"):
        AudioReconstructionLoss(AudioLossConfig(complex_weight=0, mel_weight=0), 16000)(noise(), noise())
    with pytest.raises(ValueError, match="'hinge' or 'ls'"):
        AdversarialLoss(MultiScaleSTFTDiscriminator(), loss="wgan")


@pytest.mark.parametrize("kind", ["hinge", "ls"])
def test_adversary_updates_discriminator_and_passes_gradient_to_fake(kind):
    torch.manual_seed(0)
    adv = AdversarialLoss(MultiScaleSTFTDiscriminator(fft_sizes=(128, 256), channels=4), loss=kind)
    # hand values of the losses
    ones = torch.ones(3)
    # hinge: relu(1 - 1) + relu(1 + (-1)) = 0; least squares: (1 - 1)^2 + (-1)^2 = 1
    assert float(adv._d_loss(ones, -ones)) == (0.0 if kind == "hinge" else 1.0)
    # generator on fake logits 0: hinge relu(1 - 0) = 1; least squares (0 - 1)^2 = 1
    assert float(adv._g_loss(torch.zeros(3))) == 1.0
    before = [p.detach().clone() for p in adv.discriminator.parameters()]
    real, fake = noise(seed=0), noise(seed=1).requires_grad_()
    d_loss = adv.discriminator_step(fake, real)
    assert torch.isfinite(d_loss) and fake.grad is None          # fake was detached
    assert any(not torch.equal(a, b) for a, b in zip(before, adv.discriminator.parameters()))
    g_loss, metrics = adv.generator_loss(fake, real)
    g_loss.backward()
    assert set(metrics) == {"adv_loss", "feature_loss"} and fake.grad.abs().sum() > 0
    state = adv.state_dict()
    assert set(state) == {"discriminator", "optimizer"} and state["optimizer"]["state"]
    other = AdversarialLoss(MultiScaleSTFTDiscriminator(fft_sizes=(128, 256), channels=4), loss=kind)
    other.load_state_dict(state)
    for a, b in zip(other.discriminator.parameters(), adv.discriminator.parameters()):
        assert torch.equal(a, b)


class Clips(torch.utils.data.Dataset):
    def __len__(self):
        return 12

    def __getitem__(self, i):
        return (noise(batch=1, t=1600, seed=i)[0],)


def run_with_adversary(run_dir, steps, kill_at=None):
    torch.manual_seed(0)
    model = audio_tokenizer_debug()
    adv = AdversarialLoss(MultiScaleSTFTDiscriminator(fft_sizes=(128,), channels=4))
    calls = {"n": 0}

    def step_fn(m, batch):
        calls["n"] += 1
        if calls["n"] == kill_at:
            raise KeyboardInterrupt
        out = m(batch[0])
        d = adv.discriminator_step(out.recon, batch[0])
        g, metrics = adv.generator_loss(out.recon, batch[0])
        return out.loss + g, {"disc_loss": d, **metrics}

    cfg = TrainConfig(steps=steps, batch_size=4, lr=1e-3, warmup_steps=2, log_every=1,
                      eval_every=0, checkpoint_every=3, progress=False, device="cpu")
    return train(model, Clips(), run_dir, cfg, component="tokenizer", step_fn=step_fn, auxiliary=adv), adv


def losses(run_dir):
    lines = (json.loads(l) for l in (run_dir / "logs" / "tokenizer.jsonl").read_text().splitlines())
    return [(r["step"], r["loss"], r["disc_loss"]) for r in lines if not r.get("eval")]


def test_resume_with_adversary_gives_the_same_losses(tmp_path):
    _, ref_adv = run_with_adversary(tmp_path / "ref", steps=8)
    with pytest.raises(KeyboardInterrupt):
        run_with_adversary(tmp_path / "run", steps=8, kill_at=5)     # checkpoint at step 3
    state = torch.load(tmp_path / "run" / "train_state_tokenizer.pt", weights_only=True)
    assert state["step"] == 3 and set(state["auxiliary"]) == {"discriminator", "optimizer"}
    result, adv = run_with_adversary(tmp_path / "run", steps=8)
    assert result.resumed_from == 3
    assert losses(tmp_path / "run") == losses(tmp_path / "ref")
    assert all(math.isfinite(l) for _, l, _ in losses(tmp_path / "ref"))
    for a, b in zip(adv.discriminator.parameters(), ref_adv.discriminator.parameters()):
        assert torch.equal(a, b)
    exported = set(json.loads((tmp_path / "run" / "tokenizer" / "config.json").read_text())["config"])
    assert "discriminator" not in exported
