"""Prior sampling speed and image-tokenizer training throughput; one JSON object per line.

Sampling: a batch of ``--n`` class-conditional 7x7 code maps (K=512, 10 classes, labels
``arange(n) % 10``) from freshly initialised priors of the reference size:

- ``transformer_generate``: ``TransformerPrior.generate`` (our KV-cached loop), once per cache
  implementation (``dynamic``; on CUDA also ``static``, the CUDA-graph path that ``auto`` picks);
- ``transformer_generate_uncached``: ``generate_uncached`` (whole prefix recomputed per step);
- ``transformer_hf_generate``: ``transformers``' own ``generate()`` on the very same
  ``LlamaForCausalLM`` (prompt = the class token, ``do_sample=True``, exactly 49 new tokens,
  start tokens suppressed so it samples codes only);
- ``transformer_speedup``: ``hf_generate`` seconds / each cached variant's seconds;
- ``pixelcnn_generate`` / ``pixelcnn_generate_naive``: ``PixelCNNPrior`` cached vs naive.

Training: ``image_tokenizer_train_step``: forward + backward + AdamW step of
``image_tokenizer_28x28_gray()`` (the full-preset model; bf16 autocast on CUDA, and on CPU with
``--cpu-amp``; ``torch.compile``-d with ``--compile``, as the full preset trains it) on
random 28x28 batches of 256; reports images/s.

``seconds`` is the median wall time of ``--repeats`` runs after one warm-up run (CUDA
synchronised around each). On CPU the defaults are trimmed to finish in about two minutes on an
idle 2-core machine: one timed run each, and the slow references (``generate_uncached``,
``generate_naive``) sample ``--slow-n`` maps (default 10 on CPU) once without warm-up; compare them
through ``samples_per_s``.

    python benchmarks/bench_priors.py --device cpu
    python benchmarks/bench_priors.py --device cpu --only tokenizer --compile --cpu-amp
    python benchmarks/bench_priors.py --device cuda --n 100 --repeats 10
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from vqgen.priors.transformer import TransformerPrior  # noqa: E402

CODEBOOK_SIZE, CODE_SHAPE, NUM_CLASSES = 512, (7, 7), 10


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine() or "cpu"


def emit(**fields) -> None:
    print(json.dumps(fields), flush=True)


def time_runs(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int = 1) -> list[float]:
    """Wall seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones."""
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return times


def record(bench: str, times: list[float], device: torch.device, **extra) -> float:
    seconds = statistics.median(times)
    if device.type == "cpu":
        extra["threads"] = torch.get_num_threads()
    emit(bench=bench, device=device_name(device), seconds=round(seconds, 5), repeats=len(times),
         **extra)
    return seconds


# --------------------------------------------------------------------------- transformer
def bench_transformer(args, device: torch.device) -> None:
    torch.manual_seed(0)
    prior = TransformerPrior.from_config(codebook_size=CODEBOOK_SIZE, code_shape=CODE_SHAPE,
                                         num_classes=NUM_CLASSES, hidden_size=args.hidden,
                                         num_layers=args.layers).to(device).eval()
    n, n_seq = args.n, prior.seq_len
    labels = torch.arange(n, device=device) % NUM_CLASSES
    info = dict(n=n, code_shape=list(CODE_SHAPE), codebook_size=CODEBOOK_SIZE,
                layers=args.layers, hidden=args.hidden, params=prior.num_parameters())

    impls = ["dynamic", "static"] if device.type == "cuda" else ["dynamic"]
    cached = {}
    for impl in impls:
        times = time_runs(lambda: prior.generate(n, labels, generator=torch.Generator().manual_seed(0),
                                                 cache_implementation=impl), device, args.repeats)
        cached[impl] = record("transformer_generate", times, device, cache=impl, **info,
                              samples_per_s=round(n / statistics.median(times), 2))

    cpu = device.type == "cpu"
    slow_n = args.slow_n
    times = time_runs(lambda: prior.generate_uncached(slow_n, labels[:slow_n],
                                                      generator=torch.Generator().manual_seed(0)),
                      device, 1 if cpu else args.repeats, warmup=0 if cpu else 1)
    record("transformer_generate_uncached", times, device, **{**info, "n": slow_n},
           samples_per_s=round(slow_n / statistics.median(times), 2))

    # transformers' own generate() on the same LlamaForCausalLM: prompt = class start token
    lm = prior.lm
    prompt = (labels + prior.num_levels * CODEBOOK_SIZE)[:, None]                # (n, 1)
    start_tokens = list(range(prior.num_levels * CODEBOOK_SIZE, lm.config.vocab_size))

    @torch.no_grad()
    def hf_generate():
        return lm.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=True,
                           max_new_tokens=n_seq, min_new_tokens=n_seq, top_k=0, top_p=1.0,
                           temperature=1.0, suppress_tokens=start_tokens, pad_token_id=0)

    out = hf_generate()
    assert out.shape == (n, n_seq + 1) and int(out[:, 1:].max()) < CODEBOOK_SIZE
    times = time_runs(hf_generate, device, args.repeats)
    hf = record("transformer_hf_generate", times, device, **info,
                samples_per_s=round(n / statistics.median(times), 2))
    for impl, seconds in cached.items():
        emit(bench="transformer_speedup", device=device_name(device), cache=impl, n=n,
             hf_generate_over_cached=round(hf / seconds, 3))


# --------------------------------------------------------------------------- pixelcnn
def bench_pixelcnn(args, device: torch.device) -> None:
    from vqgen.priors.pixelcnn import PixelCNNPrior
    torch.manual_seed(0)
    prior = PixelCNNPrior.from_config(codebook_size=CODEBOOK_SIZE, code_shape=CODE_SHAPE,
                                      num_classes=NUM_CLASSES).to(device).eval()
    naive = prior.generate_naive
    n = args.n
    labels = torch.arange(n, device=device) % NUM_CLASSES
    info = dict(n=n, code_shape=list(CODE_SHAPE), codebook_size=CODEBOOK_SIZE,
                params=prior.num_parameters())
    cpu = device.type == "cpu"
    for bench, fn, m in [("pixelcnn_generate", prior.generate, n),
                         ("pixelcnn_generate_naive", naive, args.slow_n)]:
        slow = fn is naive and cpu
        times = time_runs(lambda: fn(m, labels[:m], generator=torch.Generator().manual_seed(0)),
                          device, 1 if slow else args.repeats, warmup=0 if slow else 1)
        record(bench, times, device, **{**info, "n": m},
               samples_per_s=round(m / statistics.median(times), 2))


# --------------------------------------------------------------------------- tokenizer
def bench_tokenizer(args, device: torch.device) -> None:
    from vqgen.tokenizers.image import image_tokenizer_28x28_gray
    torch.manual_seed(0)
    # the full-preset model (Fashion-MNIST quality target), trained as the full preset trains it
    model = image_tokenizer_28x28_gray().to(device).train()
    run = torch.compile(model) if args.compile else model  # as TrainConfig(compile=True) does
    batch = args.tokenizer_batch
    x = torch.rand(batch, 1, 28, 28, device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16,
                            enabled=device.type == "cuda" or args.cpu_amp):
            out = run(x)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()

    warmup = (2 if args.compile else 1) if device.type == "cpu" else 3
    times = time_runs(step, device, args.repeats, warmup=warmup)
    record("image_tokenizer_train_step", times, device, batch=batch, image_size=[28, 28],
           params=model.num_parameters(), compile=args.compile,
           bf16=device.type == "cuda" or args.cpu_amp,
           images_per_s=round(batch / statistics.median(times), 1))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--n", type=int, default=100, help="samples per sampling call")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs (default 1 on CPU, 10 on CUDA)")
    parser.add_argument("--slow-n", type=int, default=None,
                        help="samples for the uncached/naive references (default 10 on CPU, --n on CUDA)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads on CPU")
    parser.add_argument("--layers", type=int, default=6, help="TransformerPrior layers")
    parser.add_argument("--hidden", type=int, default=256, help="TransformerPrior width")
    parser.add_argument("--tokenizer-batch", type=int, default=256)
    parser.add_argument("--compile", action="store_true", help="torch.compile the tokenizer")
    parser.add_argument("--cpu-amp", action="store_true", help="bf16 autocast for the tokenizer on CPU too")
    parser.add_argument("--only", choices=["transformer", "pixelcnn", "tokenizer"], nargs="*",
                        help="run only these groups")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but CUDA is not available")
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    cuda = device.type == "cuda"
    args.repeats = args.repeats if args.repeats is not None else (10 if cuda else 1)
    args.slow_n = args.slow_n if args.slow_n is not None else (args.n if cuda else min(args.n, 10))
    if min(args.n, args.repeats, args.slow_n, args.threads or 1) < 1:
        parser.error("--n, --repeats, --slow-n and --threads must be >= 1")
    if args.slow_n > args.n:
        parser.error("--slow-n must be <= --n")
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging
    hf_logging.set_verbosity_error()

    groups = {"transformer": bench_transformer, "pixelcnn": bench_pixelcnn, "tokenizer": bench_tokenizer}
    for name, fn in groups.items():
        if not args.only or name in args.only:
            fn(args, device)


if __name__ == "__main__":
    main()
