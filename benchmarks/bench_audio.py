"""Audio speed: prior sampling (frame-major vs delay pattern), codec real-time factor, codec
training throughput; optionally held-out bits per code of both layouts. One JSON line each.

- ``audio_prior_sampling``: ``TransformerPrior.generate`` (KV-cached) of ``--n`` voice-conditioned
  windows of ``--frames`` code frames at 8 levels x 1024 (the speech full preset's prior size,
  freshly initialised: speed does not depend on the weights), ``layout`` ``frames`` (``Q * T``
  steps) and ``delay`` (``T + Q - 1`` steps); ``audio_seconds_per_second`` = seconds of audio
  produced per wall second (50 Hz frames); ``delay_speedup`` = frames seconds / delay seconds.
- ``audio_codec_rtf``: ``speech_16khz()`` (the full-preset AudioTokenizer) encoding and decoding
  ``--clip-seconds`` of audio in one call; ``rtf`` = wall seconds / audio seconds (< 1 is faster
  than real time) and ``x_realtime`` = its inverse.
- ``audio_codec_train``: forward + backward + AdamW step of the same codec on batches of
  ``16 x 0.5 s`` (the recipe's default crops); ``audio_seconds_per_second``.
- ``audio_prior_bits`` (with ``--codes RUN_DIR``): trains a delay and a frame-major prior of the
  same size for ``--train-steps`` steps on ``--frames`` windows of the run's cached codes
  (``RUN_DIR/codes/{train,test}.safetensors``, written by recipes/speech.py; without them the
  speech data is encoded with ``RUN_DIR/tokenizer``) and reports each one's held-out bits per
  code (test sentences, seen voices) and their ratio.

``seconds`` is the median of ``--repeats`` timed runs after ``--warmup`` untimed ones. Use ``--threads 1`` when
another job trains on the machine, and say so with the numbers.

    python benchmarks/bench_audio.py --threads 2
    python benchmarks/bench_audio.py --threads 1 --only sampling --n 4
    python benchmarks/bench_audio.py --threads 2 --only bits --codes runs/speech-full
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # no spinning OpenMP threads on a shared CPU
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_priors import device_name, emit, time_runs  # noqa: E402

from vqgen.priors.transformer import TransformerPrior  # noqa: E402

LEVELS, CODEBOOK, VOICES, FRAME_RATE = 8, 1024, 16, 50.0
PRIOR_SIZE = dict(hidden_size=192, num_layers=4, num_heads=4)  # recipes/configs/speech.yaml


def make_prior(layout: str, frames: int, **size) -> TransformerPrior:
    torch.manual_seed(0)
    return TransformerPrior.from_config(codebook_size=CODEBOOK, code_shape=(LEVELS, frames),
                                        layout=layout, num_classes=VOICES,
                                        **{**PRIOR_SIZE, **size}).eval()


def bench_sampling(args, device: torch.device, info: dict) -> None:
    seconds = {}
    labels = torch.arange(args.n) % VOICES
    for layout in ("delay", "frames"):
        prior = make_prior(layout, args.frames).to(device)
        times = time_runs(lambda: prior.generate(args.n, labels, generator=torch.Generator().manual_seed(0)),
                          device, args.repeats, args.warmup)
        seconds[layout] = sorted(times)[len(times) // 2]
        emit(bench="audio_prior_sampling", layout=layout, steps=prior.seq_len, n=args.n,
             frames=args.frames, seconds=round(seconds[layout], 3),
             audio_seconds_per_second=round(args.n * args.frames / FRAME_RATE / seconds[layout], 3),
             params=prior.num_parameters(), **info)
    emit(bench="audio_prior_sampling_speedup", delay_speedup=round(seconds["frames"] / seconds["delay"], 2),
         **info)


def bench_codec(args, device: torch.device, info: dict) -> None:
    from vqgen.tokenizers.audio import speech_16khz
    torch.manual_seed(0)
    tok = speech_16khz().to(device).eval()
    rate = tok.sample_rate
    wave = 0.1 * torch.randn(1, 1, int(args.clip_seconds * rate), device=device)
    codes = tok.encode(wave)
    enc = time_runs(lambda: tok.encode(wave), device, args.repeats, args.warmup)
    dec = time_runs(lambda: tok.decode(codes), device, args.repeats, args.warmup)
    for what, times in (("encode", enc), ("decode", dec)):
        s = sorted(times)[len(times) // 2]
        emit(bench="audio_codec_rtf", op=what, clip_seconds=args.clip_seconds, seconds=round(s, 3),
             rtf=round(s / args.clip_seconds, 4), x_realtime=round(args.clip_seconds / s, 1),
             params=tok.num_parameters(), **info)
    tok.train()
    opt = torch.optim.AdamW(tok.parameters(), lr=1e-3)
    batch = 0.1 * torch.randn(16, 1, rate // 2, device=device)

    def step():
        out = tok(batch)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
    times = time_runs(step, device, args.repeats, args.warmup)
    s = sorted(times)[len(times) // 2]
    emit(bench="audio_codec_train", batch="16 x 0.5 s", seconds_per_step=round(s, 3),
         audio_seconds_per_second=round(16 * 0.5 / s, 2), **info)


def encode_speech(tok_dir: Path, work: Path, clips_per_voice: int):
    """Codes of the prepared speech data (``data/``): the first ``clips_per_voice`` training
    clips of each voice, and every test clip; cached under ``work/codes``."""
    import numpy as np

    from vqgen.data.codes import encode_clips_cached
    from vqgen.data.speech import load_speech
    from vqgen.tokenizers.audio import AudioTokenizer
    data = load_speech("data", progress=False)
    tok = AudioTokenizer.from_pretrained(tok_dir)
    labels = np.asarray(data.train.labels)
    keep = np.sort(np.concatenate([np.flatnonzero(labels == v)[:clips_per_voice] for v in np.unique(labels)]))
    return (encode_clips_cached(tok, tok_dir, "train", data.train.subset(keep), work / "codes", progress=False),
            encode_clips_cached(tok, tok_dir, "test", data.test, work / "codes", progress=False))


def bench_bits(args, device: torch.device, info: dict) -> None:
    from safetensors.torch import load_file

    from vqgen.data.codes import CodeWindows, EncodedClips, fixed_windows
    from vqgen.metrics import prior_bits_per_code
    from vqgen.training import TrainConfig, train
    codes_dir = Path(args.codes) / "codes"
    if (codes_dir / "train.safetensors").is_file():
        train_enc = EncodedClips(**load_file(str(codes_dir / "train.safetensors")))
        test_enc = EncodedClips(**load_file(str(codes_dir / "test.safetensors")))
    else:  # a run dir without codes/: encode the speech data with its tokenizer (cached in --work)
        train_enc, test_enc = encode_speech(Path(args.codes) / "tokenizer", Path(args.work), args.clips_per_voice)
    seen = torch.isin(test_enc.labels, torch.unique(train_enc.labels))
    heldout, heldout_y = fixed_windows(test_enc.subset(seen), args.frames)
    levels = train_enc.codes.shape[0]
    codebook = json.loads((Path(args.codes) / "tokenizer" / "config.json").read_text())["config"]["codebook_size"]
    bits = {}
    for layout in ("delay", "frames"):
        torch.manual_seed(0)
        prior = TransformerPrior.from_config(
            codebook_size=codebook,
            code_shape=(levels, args.frames), layout=layout,
            num_classes=int(max(train_enc.labels.max(), test_enc.labels.max())) + 1,
            hidden_size=args.hidden, num_layers=args.layers, num_heads=4)
        cfg = TrainConfig(steps=args.train_steps, batch_size=16, lr=1e-3, warmup_steps=50,
                          eval_every=0, checkpoint_every=0, log_every=50, device=str(device),
                          progress=False, weight_decay=0.01)
        result = train(prior, CodeWindows(train_enc, args.frames, seed=0),
                       Path(args.work) / f"bits-{layout}", cfg, component="prior",
                       step_fn=lambda model, batch: (model.loss(batch[0], batch[1]), {}))
        bits[layout] = prior_bits_per_code(prior.eval(), heldout, heldout_y, batch_size=8)
        emit(bench="audio_prior_bits", layout=layout, frames=args.frames, levels=levels,
             train_steps=args.train_steps, train_seconds=round(result.seconds, 1),
             heldout_windows=len(heldout), bits_per_code=round(bits[layout], 4), **info)
    emit(bench="audio_prior_bits_ratio", delay_over_frames=round(bits["delay"] / bits["frames"], 4),
         **info)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--only", choices=["sampling", "codec", "bits"], default=None)
    p.add_argument("--n", type=int, default=8, help="windows sampled per call")
    p.add_argument("--frames", type=int, default=150, help="code frames per window (50 Hz)")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--warmup", type=int, default=1, help="untimed runs before the timed ones")
    p.add_argument("--clip-seconds", type=float, default=10.0)
    p.add_argument("--codes", default=None, help="run dir with codes/ (for --only bits)")
    p.add_argument("--train-steps", type=int, default=300)
    p.add_argument("--clips-per-voice", type=int, default=30, help="training clips per voice "
                   "encoded when the run dir has no codes/")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--work", default="/tmp/vqgen-bench-audio", help="scratch run dirs (bits)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    info = dict(device=device_name(device), threads=torch.get_num_threads(),
                date=datetime.date.today().isoformat())
    if args.only in (None, "sampling"):
        bench_sampling(args, device, info)
    if args.only in (None, "codec"):
        bench_codec(args, device, info)
    if args.only == "bits" or (args.only is None and args.codes):
        if not args.codes:
            p.error("--only bits needs --codes RUN_DIR")
        bench_bits(args, device, info)


if __name__ == "__main__":
    main()
