#!/usr/bin/env python
"""Image recipe, top to bottom: data -> tokenizer -> codes -> prior -> samples -> metrics -> report.

    python recipes/image.py --preset quick                       # CPU, about 3 minutes
    python recipes/image.py --preset full                        # quality run, ~1.5 h on 2 CPU cores
    python recipes/image.py --preset full prior=pixelcnn name=image-full-pixelcnn \
        tokenizer_from=runs/image-full/tokenizer                 # reuse the tokenizer
    python recipes/image.py --preset quick prior=pixelcnn name=image-pixelcnn
    torchrun --nproc_per_node=2 recipes/image.py --preset full   # DDP

    python recipes/image.py --preset quick dataset=folder:/path/to/images   # your own images

Everything lands in ``runs/<name>/``: config.yaml, labels.json (class names), tokenizer/, prior/,
train_state_*.pt, logs/*.jsonl, codes/, samples/*.png (+ .json sidecars naming grid rows and
columns), metrics.json and report.html (self-contained). Re-running resumes. Under torchrun only
rank 0 prints.
"""
from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
import warnings
from pathlib import Path

if "WORLD_SIZE" in os.environ:  # torchrun: keep PyTorch's C++ warnings (one per rank) quiet
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
import torch  # noqa: E402 - after the log level is set
from torch.utils.data import TensorDataset

from vqgen import metrics as M
from vqgen.data.codes import encode_cached
from vqgen.data.images import load_image_dataset
from vqgen.modeling import atomic_write_text, build_config
from vqgen.pipeline import GenerationPipeline, image_grid, save_png, write_grid_info, write_labels
from vqgen.progress import progress_bar
from vqgen.priors.pixelcnn import PixelCNNPrior
from vqgen.priors.transformer import TransformerPrior
from vqgen.report import write_report
from vqgen.runs import parse_recipe_args, run_main, start_run
from vqgen.tokenizers import image as image_tokenizers
from vqgen.tokenizers.image import ImageTokenizer
from vqgen.training import (TrainConfig, epoch_capped_steps, init_distributed, is_main_process,
                            resolve_device, train)

HERE = Path(__file__).resolve().parent
PRIORS = {"transformer": TransformerPrior, "pixelcnn": PixelCNNPrior}


def parse_args(argv=None) -> dict:
    return parse_recipe_args(HERE / "configs" / "image.yaml", __doc__, PRIORS, argv,
                             example="dataset=digits image_size=32 prior_train.steps=200")


def quiet_other_ranks(main_rank: bool) -> None:
    """Under torchrun: framework warnings off everywhere, and ranks > 0 print nothing."""
    if "WORLD_SIZE" not in os.environ:
        return
    warnings.filterwarnings("ignore", module=r"torch(\.|$)")
    if not main_rank:
        warnings.filterwarnings("ignore")
        logging.disable(logging.WARNING)
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process


def balanced_indices(labels: torch.Tensor, n: int) -> list[int]:
    """Up to ``n`` indices cycling through the classes (class 0's first, class 1's first, ...)."""
    per_class = [torch.nonzero(labels == c).flatten().tolist() for c in labels.unique().tolist()]
    order = [idx[r] for r in range(max(map(len, per_class))) for idx in per_class if r < len(idx)]
    return order[:n]


def main(argv=None) -> dict:
    cfg = parse_args(argv)
    dist = init_distributed()
    device = resolve_device(cfg["device"]) if dist.world_size == 1 else dist.device
    run_dir = Path(cfg["runs"]) / cfg["name"]
    main_rank = is_main_process()
    quiet_other_ranks(main_rank)
    start_run(run_dir, cfg, main=main_rank, train_sections=("tokenizer_train", "prior_train"))
    torch.manual_seed(cfg["seed"])
    t_start = time.time()

    # 1. Data -------------------------------------------------------------------------------
    data = load_image_dataset(cfg["dataset"], root=cfg["data_root"], limit=cfg["train_limit"],
                              image_size=cfg["image_size"], verbose=main_rank)
    test_x, test_y = data.test_x, data.test_y
    if cfg["test_limit"]:
        test_x, test_y = test_x[:cfg["test_limit"]], test_y[:cfg["test_limit"]]
    C, H, W = data.train_x.shape[1:]
    num_classes = len(data.classes)
    if main_rank:
        write_labels(run_dir, data.class_names)
    print(f"data: {data.name} train {tuple(data.train_x.shape)} test {tuple(test_x.shape)} "
          f"{num_classes} classes ({', '.join(data.class_names[:10])}"
          f"{', ...' if num_classes > 10 else ''}); device {device}; run dir {run_dir}")

    # 2. Tokenizer --------------------------------------------------------------------------
    if cfg["tokenizer_from"]:
        tokenizer = ImageTokenizer.from_pretrained(cfg["tokenizer_from"]).to(device)
        tok_dir, tok_seconds = run_dir / "tokenizer", 0.0
        if main_rank:  # the run dir holds its own copy, so it is a complete pipeline
            tokenizer.save_pretrained(tok_dir)
    else:
        preset = getattr(image_tokenizers, cfg["tokenizer"]["preset"], None)
        if preset is None or not callable(preset):
            raise ValueError(f"unknown tokenizer preset {cfg['tokenizer']['preset']!r} in vqgen.tokenizers.image")
        tokenizer = preset(in_channels=C, **cfg["tokenizer"]["overrides"]).to(device)
        eval_x = test_x[:512]

        def tok_step(model, batch):
            out = model(batch[0])
            return out.loss, out.metrics

        def tok_eval(model):
            recon = model.decode(model.encode(eval_x.to(device))).clamp(0, 1).cpu()
            return {"test_psnr": float(M.psnr(recon, eval_x.float() / 255))}

        tok_cfg = build_config(TrainConfig, cfg["tokenizer_train"], seed=cfg["seed"],
                               device=str(device), progress=cfg["progress"])
        result = train(tokenizer, TensorDataset(data.train_x), run_dir, tok_cfg,
                       component="tokenizer", step_fn=tok_step, eval_fn=tok_eval)
        tok_dir, tok_seconds = run_dir / "tokenizer", result.seconds
        tokenizer = ImageTokenizer.from_pretrained(tok_dir).to(device)

    # 3. Encode the dataset (cached beside the tokenizer) -----------------------------------
    tokenizer.eval()
    codes_dir = run_dir / "codes"
    train_codes = encode_cached(tokenizer, tok_dir, "train", data.train_x, codes_dir, device=device,
                                progress=cfg["progress"])
    test_codes = encode_cached(tokenizer, tok_dir, "test", test_x, codes_dir, device=device,
                               progress=cfg["progress"])
    code_shape = tuple(train_codes.shape[1:])
    print(f"codes: {tuple(train_codes.shape)} (code_shape {code_shape}, K={tokenizer.codebook_size})")

    # 4. Prior ------------------------------------------------------------------------------
    prior_cls = PRIORS[cfg["prior"]]
    prior = prior_cls.from_config(codebook_size=tokenizer.codebook_size, code_shape=code_shape,
                                  num_classes=num_classes, id2label=data.id2label,
                                  **cfg["prior_config"][cfg["prior"]]).to(device)

    def prior_step(model, batch):
        return model.loss(batch[0], batch[1]), {}

    def prior_eval(model):
        return {"test_bits_per_code": M.prior_bits_per_code(model, test_codes, test_y)}

    prior_cfg = build_config(TrainConfig, cfg["prior_train"], seed=cfg["seed"], device=str(device),
                             progress=cfg["progress"])
    result = train(prior, TensorDataset(train_codes, data.train_y), run_dir, prior_cfg,
                   component="prior", step_fn=prior_step, eval_fn=prior_eval)
    prior_seconds = result.seconds
    if not main_rank:
        return {}
    pipe = GenerationPipeline.from_pretrained(run_dir, map_location=device)

    # 5. Samples: one row per class, and reconstructions beside originals -------------------
    samples_dir = run_dir / "samples"
    per_class = cfg["samples_per_class"]
    grid_labels = torch.arange(num_classes).repeat_interleave(per_class)
    grid = pipe.generate(len(grid_labels), labels=grid_labels, seed=cfg["seed"], batch_size=64,
                         progress=cfg["progress"], **cfg["sampling"])
    grid_png = samples_dir / f"samples_grid_{cfg['prior']}.png"
    save_png(image_grid(grid, nrow=per_class), grid_png)
    write_grid_info(grid_png, f"{cfg['prior']} prior samples: one row per class, {per_class} "
                    f"per row (seed {cfg['seed']})", rows=data.class_names)
    shown = balanced_indices(test_y, 10 if num_classes >= 10 else 8)
    originals = test_x[shown].float() / 255
    recon = pipe.decode(tokenizer.encode(originals.to(device)))
    recon_png = samples_dir / "reconstructions.png"
    save_png(image_grid(torch.cat([originals, recon]), nrow=len(shown)), recon_png)
    write_grid_info(recon_png, "held-out images (top) and their reconstructions (bottom)",
                    rows=["original", "reconstruction"],
                    cols=[data.class_names[int(test_y[i])] for i in shown])

    # 6. Evaluate ---------------------------------------------------------------------------
    recon_all = torch.cat([pipe.decode(c.to(device)) for c in progress_bar(
        test_codes.split(512), desc="evaluate reconstructions", enabled=cfg["progress"])])
    real = test_x.float() / 255
    metrics = {"test_psnr": float(M.psnr(recon_all, real)), "test_ssim": float(M.ssim(recon_all, real))}
    metrics.update(M.codebook_stats(test_codes, tokenizer.codebook_size))
    metrics["prior_bits_per_code"] = M.prior_bits_per_code(pipe.prior, test_codes, test_y)
    n_fit = min(len(train_codes), max(len(test_codes), 1000))  # same scoring on training codes
    metrics["prior_train_bits_per_code"] = M.prior_bits_per_code(
        pipe.prior, train_codes[:n_fit], data.train_y[:n_fit])
    warning = M.overfitting_warning(metrics["prior_train_bits_per_code"],
                                    metrics["prior_bits_per_code"], what=f"{cfg['prior']} prior")
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    clf_cfg = cfg["classifier"]
    # a small folder: a fixed number of passes, not the preset's steps
    clf_steps = epoch_capped_steps(clf_cfg["steps"], clf_cfg["max_epochs"] or None,
                                   math.ceil(len(data.train_x) / clf_cfg["batch_size"]))
    clf, clf_acc = M.train_classifier(
        data.train_x, data.train_y, data.test_x, data.test_y, steps=clf_steps,
        batch_size=clf_cfg["batch_size"], device=device, num_classes=num_classes,
        progress=cfg["progress"],
        cache_path=Path(cfg["data_root"]) / data.name
        / f"classifier-n{len(data.train_x)}-s{clf_steps}.safetensors")
    n_eval = cfg["num_eval_samples"]
    eval_labels = torch.arange(n_eval) % num_classes
    fake = pipe.generate(n_eval, labels=eval_labels, seed=cfg["seed"] + 1, batch_size=50,
                         progress=cfg["progress"], **cfg["sampling"])
    metrics["sample_fid"] = float(M.frechet_distance(real[:max(n_eval, 1000)], fake, clf))
    metrics["sample_class_accuracy"] = float(M.class_accuracy(fake, eval_labels, clf))
    metrics["classifier_test_accuracy"] = float(clf_acc)
    metrics["train_seconds"] = tok_seconds + prior_seconds
    metrics["total_seconds"] = time.time() - t_start
    metrics["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    atomic_write_text(run_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    report = write_report(run_dir, title=f"vqgen image recipe: {cfg['name']}")
    print(json.dumps(metrics))
    print(f"report: {report}")
    return metrics


if __name__ == "__main__":
    sys.exit(run_main(main, prog="image.py"))  # user mistakes: one line, exit 2
