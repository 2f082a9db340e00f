#!/usr/bin/env python
"""Image recipe, top to bottom: data -> tokenizer -> codes -> prior -> samples -> metrics -> report.

    python recipes/image.py --preset quick                       # CPU, about 3 minutes
    python recipes/image.py --preset full                        # quality run, ~1.5 h on 2 CPU cores
    python recipes/image.py --preset full prior=pixelcnn name=image-full-pixelcnn \
        tokenizer_from=runs/image-full/tokenizer                 # reuse the tokenizer
    python recipes/image.py --preset quick prior=pixelcnn name=image-pixelcnn
    torchrun --nproc_per_node=2 recipes/image.py --preset full   # DDP

Everything lands in ``runs/<name>/``: config.yaml, tokenizer/, prior/, train_state_*.pt,
logs/*.jsonl, codes/, samples/*.png, metrics.json and report.html. Re-running resumes.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from vqgen import metrics as M
from vqgen.config import load_config
from vqgen.data.codes import encode_batches, encode_cached
from vqgen.data.images import load_image_dataset
from vqgen.modeling import atomic_write_text, build_config
from vqgen.pipeline import GenerationPipeline, image_grid, save_png
from vqgen.priors.pixelcnn import PixelCNNPrior
from vqgen.priors.transformer import TransformerPrior
from vqgen.report import write_report
from vqgen.runs import run_main, start_run
from vqgen.tokenizers import image as image_tokenizers
from vqgen.tokenizers.image import ImageTokenizer
from vqgen.training import TrainConfig, init_distributed, is_main_process, resolve_device, train

HERE = Path(__file__).resolve().parent
PRIORS = {"transformer": TransformerPrior, "pixelcnn": PixelCNNPrior}


def parse_args(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(HERE / "configs" / "image.yaml"))
    p.add_argument("--preset", choices=["quick", "full"], default=None)
    p.add_argument("--runs", default="runs", help="parent folder of run directories")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("overrides", nargs="*", help="key=value config overrides (dotted keys)")
    args = p.parse_intermixed_args(argv)
    cfg = load_config(args.config, args.preset, args.overrides,
                      open_keys=("tokenizer.overrides", "prior_config.transformer", "prior_config.pixelcnn"))
    if cfg["prior"] not in PRIORS:
        raise ValueError(f"prior must be one of {sorted(PRIORS)}, got {cfg['prior']!r}")
    cfg["runs"], cfg["progress"] = args.runs, not args.no_progress
    return cfg


def main(argv=None) -> dict:
    cfg = parse_args(argv)
    dist = init_distributed()
    device = resolve_device(cfg["device"]) if dist.world_size == 1 else dist.device
    run_dir = Path(cfg["runs"]) / cfg["name"]
    main_rank = is_main_process()
    start_run(run_dir, cfg, main=main_rank, train_sections=("tokenizer_train", "prior_train"))
    torch.manual_seed(cfg["seed"])
    t_start = time.time()

    # 1. Data -------------------------------------------------------------------------------
    data = load_image_dataset(cfg["dataset"], root=cfg["data_root"], limit=cfg["train_limit"])
    test_x, test_y = data.test_x, data.test_y
    if cfg["test_limit"]:
        test_x, test_y = test_x[:cfg["test_limit"]], test_y[:cfg["test_limit"]]
    C, H, W = data.train_x.shape[1:]
    num_classes = len(data.classes)
    print(f"data: {data.name} train {tuple(data.train_x.shape)} test {tuple(test_x.shape)} "
          f"{num_classes} classes; device {device}; run dir {run_dir}")

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
                                  num_classes=num_classes, **cfg["prior_config"][cfg["prior"]]).to(device)

    def prior_step(model, batch):
        return model.loss(batch[0], batch[1]), {}

    @torch.no_grad()
    def prior_eval(model):
        nll = sum(float(model.nll(c.to(device), y.to(device)).sum())
                  for c, y in zip(test_codes.split(512), test_y.split(512)))
        return {"test_bits_per_code": nll / (test_codes.numel() * math.log(2))}

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
    grid = pipe.generate(len(grid_labels), labels=grid_labels, seed=cfg["seed"], **cfg["sampling"])
    save_png(image_grid(grid, nrow=per_class), samples_dir / f"samples_grid_{cfg['prior']}.png")
    originals = test_x[:16].float() / 255
    recon = pipe.decode(tokenizer.encode(originals.to(device)))
    pairs = torch.stack([originals, recon], 1).flatten(0, 1)   # original, recon, original, ...
    save_png(image_grid(pairs, nrow=8), samples_dir / "reconstructions.png")

    # 6. Evaluate ---------------------------------------------------------------------------
    recon_all = torch.cat([pipe.decode(c.to(device)) for c in test_codes.split(512)])
    real = test_x.float() / 255
    metrics = {"test_psnr": float(M.psnr(recon_all, real)), "test_ssim": float(M.ssim(recon_all, real))}
    metrics.update(M.codebook_stats(test_codes, tokenizer.codebook_size))
    metrics["prior_bits_per_code"] = prior_eval(pipe.prior)["test_bits_per_code"]
    clf, clf_acc = M.train_classifier(
        data.train_x, data.train_y, data.test_x, data.test_y, steps=cfg["classifier"]["steps"],
        batch_size=cfg["classifier"]["batch_size"], device=device,
        cache_path=Path(cfg["data_root"]) / data.name
        / f"classifier-n{len(data.train_x)}-s{cfg['classifier']['steps']}.safetensors")
    n_eval = cfg["num_eval_samples"]
    eval_labels = torch.arange(n_eval) % num_classes
    fake = pipe.generate(n_eval, labels=eval_labels, seed=cfg["seed"] + 1, batch_size=500, **cfg["sampling"])
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
