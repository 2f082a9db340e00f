"""ImageTokenizer: shapes, dtypes, gradients, save/load, input validation and a real learning check."""
import pytest
import torch

from vqgen.data.images import load_image_dataset
from vqgen.metrics import psnr
from vqgen.tokenizers.base import TokenizerOutput
from vqgen.tokenizers.image import (ImageTokenizer, ImageTokenizerConfig, image_tokenizer_28x28_gray,
                                    image_tokenizer_32x32_rgb, image_tokenizer_debug)


def _images(b, c, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, c, h, w, generator=g)


# --------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("c,h,w,d,q", [
    (1, 16, 16, 4, 1), (1, 28, 28, 4, 1), (3, 32, 32, 4, 1), (1, 16, 32, 4, 1),
    (4, 16, 16, 8, 1), (3, 32, 32, 8, 2), (1, 16, 32, 4, 2), (1, 32, 32, 16, 1),
])
def test_encode_decode_forward_shapes(c, h, w, d, q):
    model = image_tokenizer_debug(in_channels=c, downsample=d, num_codebooks=q)
    assert (model.downsample, model.num_codebooks, model.codebook_size) == (d, q, 64)
    x = _images(2, c, h, w)
    grid = (h // d, w // d) if q == 1 else (q, h // d, w // d)
    assert model.code_shape(c, h, w) == grid

    out = model(x)  # training mode: k-means init + EMA update
    assert isinstance(out, TokenizerOutput)
    assert out.recon.shape == x.shape and out.recon.dtype == torch.float32
    assert out.codes.shape == (2, *grid) and out.codes.dtype == torch.long
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)
    for key in ("recon_loss", "vq_loss", "perplexity", "usage", "dead_codes"):
        assert out.metrics[key].dim() == 0 and torch.isfinite(out.metrics[key])

    model.eval()
    codes = model.encode(x)
    assert codes.shape == (2, *grid) and codes.dtype == torch.long
    assert int(codes.min()) >= 0 and int(codes.max()) < model.codebook_size
    assert torch.equal(codes, model(x).codes)  # eval forward and encode agree
    recon = model.decode(codes)
    assert recon.shape == x.shape and recon.dtype == torch.float32


def test_code_shape_defaults_to_config_image_size():
    assert image_tokenizer_debug().code_shape() == (4, 4)
    assert image_tokenizer_debug(num_codebooks=3).code_shape() == (3, 4, 4)
    with pytest.raises(ValueError, match="image_size"):
        image_tokenizer_debug(image_size=None).code_shape()


def test_presets_geometry():
    gray = image_tokenizer_28x28_gray()
    assert gray.code_shape() == (7, 7) and gray.codebook_size == 512 and gray.in_channels == 1
    rgb = image_tokenizer_32x32_rgb()
    assert rgb.code_shape() == (8, 8) and rgb.in_channels == 3
    out = gray(_images(2, 1, 28, 28))
    assert out.recon.shape == (2, 1, 28, 28)
    # a downsample override adapts the preset's channel multipliers
    assert image_tokenizer_32x32_rgb(downsample=8).code_shape() == (4, 4)


def test_from_config_with_design_keywords():
    model = ImageTokenizer.from_config(in_channels=3, downsample=8, codebook_size=128,
                                       num_codebooks=2, channels=8, num_res_blocks=0)
    assert model.code_shape(3, 32, 32) == (2, 4, 4)
    assert model.config.widths == (8, 16, 16, 32)  # auto channel_mult (1, 2, 2, 4)


# --------------------------------------------------------------------------- gradients, dtypes
@pytest.mark.parametrize("q", [1, 2])
def test_backward_reaches_encoder_and_decoder(q):
    model = image_tokenizer_debug(num_codebooks=q)
    out = model(_images(4, 1, 16, 16))
    out.loss.backward()
    for name in ("encoder.conv_in.weight", "encoder.conv_out.weight",
                 "decoder.conv_in.weight", "decoder.conv_out.weight"):
        grad = model.get_parameter(name).grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name


def test_uint8_input_equals_float_over_255():
    model = image_tokenizer_debug()
    model(_images(8, 1, 16, 16))  # k-means init so codes are spread over the codebook
    model.eval()
    x8 = torch.randint(0, 256, (3, 1, 16, 16), dtype=torch.uint8)
    xf = x8.float() / 255
    assert torch.equal(model.encode(x8), model.encode(xf))
    a, b = model(x8), model(xf)
    assert torch.equal(a.recon, b.recon) and torch.equal(a.loss, b.loss)


def test_encode_never_changes_the_codebook():
    model = image_tokenizer_debug()  # training mode
    before = {k: v.clone() for k, v in model.quantizer.state_dict().items()}
    model.encode(_images(4, 1, 16, 16))
    after = model.quantizer.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


# --------------------------------------------------------------------------- save / load
@pytest.mark.parametrize("q", [1, 2])
def test_save_load_round_trip_is_bit_exact(tmp_path, q):
    torch.manual_seed(0)
    model = image_tokenizer_debug(num_codebooks=q, in_channels=3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for seed in range(3):  # k-means init, EMA updates and weight changes all go to disk
        out = model(_images(4, 3, 16, 16, seed))
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    model.eval()
    model.save_pretrained(tmp_path / "tok")
    assert (tmp_path / "tok" / "config.json").is_file()
    loaded = ImageTokenizer.from_pretrained(tmp_path / "tok")
    assert not loaded.training and loaded.config == model.config
    x = _images(3, 3, 32, 16, seed=9)
    codes = model.encode(x)
    assert torch.equal(loaded.encode(x), codes)
    assert torch.equal(loaded.decode(codes), model.decode(codes))


def test_load_refuses_other_config_keys(tmp_path):
    with pytest.raises(ValueError, match="unknown ImageTokenizerConfig key"):
        image_tokenizer_debug(learning_rate=1e-3)


# --------------------------------------------------------------------------- validation
def test_bad_inputs_raise_value_error():
    model = image_tokenizer_debug()
    with pytest.raises(ValueError, match=r"expected images of shape \(B, 1, H, W\).*\(16, 16\)"):
        model.encode(torch.rand(16, 16))
    with pytest.raises(ValueError, match="expected 1 image channel.*got 3"):
        model.encode(torch.rand(2, 3, 16, 16))
    with pytest.raises(ValueError, match="divisible by downsample=4.*18x16"):
        model.encode(torch.rand(2, 1, 18, 16))
    nan = torch.rand(2, 1, 16, 16)
    nan[0, 0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        model(nan)
    inf = torch.rand(2, 1, 16, 16)
    inf[1, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN/inf"):
        model.encode(inf)
    with pytest.raises(ValueError, match="dtype torch.int32"):
        model.encode(torch.zeros(2, 1, 16, 16, dtype=torch.int32))
    with pytest.raises(ValueError, match="at least one image"):
        model.encode(torch.rand(0, 1, 16, 16))
    with pytest.raises(ValueError, match="tensor"):
        model.encode([[0.0]])


def test_bad_codes_raise_value_error():
    model = image_tokenizer_debug()
    with pytest.raises(ValueError, match=r"out of range.*\[0, 64\).*max 64"):
        model.decode(torch.full((1, 4, 4), 64))
    with pytest.raises(ValueError, match="out of range"):
        model.decode(torch.full((1, 4, 4), -1))
    with pytest.raises(ValueError, match="rank 3"):
        model.decode(torch.zeros(4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        model.decode(torch.zeros(1, 4, 4))
    rvq = image_tokenizer_debug(num_codebooks=2)
    with pytest.raises(ValueError, match=r"\(B, 2, h, w\)"):
        rvq.decode(torch.zeros(1, 3, 4, 4, dtype=torch.long))


@pytest.mark.parametrize("overrides,match", [
    (dict(downsample=3), "downsample"),
    (dict(downsample=8, channel_mult=(1, 2)), "channel_mult"),
    (dict(recon_loss="l2"), "recon_loss"),
    (dict(image_size=18), "image_size"),
    (dict(in_channels=0), "in_channels"),
    (dict(codebook_size=1), "codebook_size"),
    (dict(vq_decay=1.5), "decay"),
])
def test_invalid_config_raises(overrides, match):
    with pytest.raises(ValueError, match=match):
        image_tokenizer_debug(**overrides)


def test_config_rejects_unknown_model_type(tmp_path):
    ImageTokenizerConfig()  # defaults are valid
    image_tokenizer_debug().quantizer.save_pretrained(tmp_path / "vq")
    with pytest.raises(ValueError, match="expected 'ImageTokenizer'"):
        ImageTokenizer.from_pretrained(tmp_path / "vq")


# --------------------------------------------------------------------------- learning
def test_short_training_improves_psnr(tmp_path):
    """A real learning check: 100 AdamW steps on digits 16x16 raise test PSNR by > 5 dB."""
    data = load_image_dataset("digits", root=tmp_path)
    torch.manual_seed(0)
    model = image_tokenizer_debug(recon_loss="mse")
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)

    def test_psnr():
        model.eval()
        with torch.no_grad():
            recon = model.decode(model.encode(data.test_x))
        model.train()
        return psnr(recon.clamp(0, 1), data.test_x)

    losses = []
    for step in range(100):
        batch = data.train_x[torch.randint(0, len(data.train_x), (32,), generator=g)]
        out = model(batch)
        if step == 0:
            start = test_psnr()  # after k-means init, before any weight update
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.detach().item())
    end = test_psnr()
    assert end > start + 5.0 and end > 18.0, (start, end)
    assert sum(losses[-10:]) < 0.5 * sum(losses[:10])
