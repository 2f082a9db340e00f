"""``vqgen`` command line: data, training, encode/decode, generation, evaluation, report.

    vqgen data prepare fashion-mnist
    vqgen train tokenizer --dataset digits --run-dir runs/d --steps 200 --preset image_tokenizer_debug
    vqgen train prior runs/d --dataset digits --prior pixelcnn --steps 200 hidden=32 num_layers=2
    vqgen generate runs/d --n 16 --labels 3 --seed 0          # -> runs/d/samples/generated/
    vqgen encode runs/d/tokenizer img1.png img2.png --out codes.safetensors
    vqgen decode runs/d/tokenizer codes.safetensors --out decoded/
    vqgen evaluate runs/d --dataset digits                    # -> runs/d/metrics.json
    vqgen report runs/d                                       # -> runs/d/report.html

User mistakes (bad paths, bad values, corrupt checkpoints) print one line on stderr and exit 2.
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path


def _labels(text: str | None):
    """``--labels``: comma-separated class ids and/or names ("Dress,3"); one value or a list."""
    if text is None:
        return None
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values:
        raise ValueError(f"--labels expects comma-separated class ids or names, got {text!r}")
    values = [int(v) if v.lstrip("-").isdigit() else v for v in values]
    return values[0] if len(values) == 1 else values


def _positive_int(text: str) -> int:
    """argparse type: an int >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def _read_image(path: str):
    """One image file as a numpy array; ``ValueError`` for an empty, truncated or non-image file."""
    import numpy as np
    from PIL import Image
    if not Path(path).is_file():
        raise FileNotFoundError(f"no image file at {path}")
    try:
        with Image.open(path) as img:
            return np.asarray(img)
    except (OSError, SyntaxError, ValueError) as e:  # PIL: UnidentifiedImageError, truncated data
        raise ValueError(f"expected an image file (PNG, JPEG, ...) at {path}, could not read it: {e}") from None


def _out_file(path: str) -> str:
    if Path(path).is_dir():
        raise ValueError(f"--out must be a file path, got the directory {path}")
    return path


def _out_dir(path: str) -> str:
    if Path(path).exists() and not Path(path).is_dir():
        raise ValueError(f"--out must be a directory, got the existing file {path}")
    return path


def _load(directory: str, kind: str):
    """Load a model directory that must hold a ``kind`` ("tokenizer" or "prior")."""
    from .pipeline import load_model
    from .priors.base import Prior
    from .tokenizers.base import Tokenizer
    model = load_model(directory)
    expected = {"tokenizer": Tokenizer, "prior": Prior}[kind]
    if not isinstance(model, expected):
        raise ValueError(f"expected a {kind} directory at {directory}, "
                         f"got a {type(model).__name__}")
    return model


def _image_files(paths: list[str]):
    import numpy as np
    import torch
    arrays = []
    for p in paths:
        img = _read_image(p)
        arrays.append(img[None] if img.ndim == 2 else img.transpose(2, 0, 1))
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise ValueError(f"expected images of one size, got shapes {sorted(shapes)}")
    return torch.from_numpy(np.stack(arrays))


# --------------------------------------------------------------------------- commands
def cmd_data_prepare(args) -> None:
    if args.name == "speech":
        from .data.speech import prepare_speech
        print(f"prepared speech in {prepare_speech(root=args.root)}")
        return
    if args.name == "music":
        from .data.music import prepare_music
        print(f"prepared music in {prepare_music(root=args.root)}")
        return
    if args.name == "text" or args.name.startswith("text:"):  # text, text:pydoc, text:file:/path
        import warnings

        from .data.text import load_text_dataset, prepare_text_dataset
        source = args.name[len("text:"):] or "fortunes"
        if source == "fortunes":  # fall back to pydoc (with a note) when fortunes are missing
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                data = load_text_dataset(source, root=args.root, fallback=True)
            for w in caught:
                print(f"note: {w.message}", file=sys.stderr)
            source = data.name
        print(f"prepared text ({source}) in {prepare_text_dataset(source, root=args.root)}")
        return
    from .data.images import prepare_image_dataset
    path = prepare_image_dataset(args.name, root=args.root, image_size=args.image_size)
    print(f"prepared {args.name} in {path}")


def _train_config(args, **extra):
    """The TrainConfig of ``vqgen train``; seeds torch with ``--seed`` (as the recipes do) so
    that the model built next starts from the same weights every time."""
    import torch

    from .modeling import build_config
    from .training import TrainConfig
    every = args.checkpoint_every or max(1, min(100, args.steps // 10))
    values = {"steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
              "device": args.device, "seed": args.seed,
              "warmup_steps": min(100, max(1, args.steps // 10)),
              "eval_every": args.steps, "checkpoint_every": every}
    config = build_config(TrainConfig, values, **extra)
    torch.manual_seed(config.seed)
    return config


def _locking_run_dir(must_exist: bool):
    """Decorator: hold the run directory's lock for the whole command, so a second writer
    fails before loading anything (``train`` takes the same, re-entrant lock)."""
    def wrap(cmd):
        @functools.wraps(cmd)
        def run(args) -> None:
            from .runs import run_lock
            if must_exist and not Path(args.run_dir).is_dir():
                raise FileNotFoundError(f"no run directory at {args.run_dir}")
            with run_lock(args.run_dir):
                cmd(args)
        return run
    return wrap


@_locking_run_dir(must_exist=False)
def cmd_train_tokenizer(args) -> None:
    from torch.utils.data import TensorDataset

    from .config import parse_overrides
    from .data.images import load_image_dataset
    from .pipeline import write_labels
    from .tokenizers import image as image_tokenizers
    from .training import train
    config = _train_config(args)
    data = load_image_dataset(args.dataset, root=args.root, limit=args.limit,
                              image_size=args.image_size)
    preset = getattr(image_tokenizers, args.preset, None)
    if not args.preset.startswith("image_tokenizer") or not callable(preset):
        raise ValueError(f"unknown tokenizer preset {args.preset!r}; expected a function "
                         f"image_tokenizer_* in vqgen.tokenizers.image")
    model = preset(in_channels=data.train_x.shape[1], **parse_overrides(args.overrides))
    write_labels(args.run_dir, data.class_names)
    result = train(model, TensorDataset(data.train_x), args.run_dir, config,
                   component="tokenizer", step_fn=lambda m, b: (lambda o: (o.loss, o.metrics))(m(b[0])))
    print(f"trained tokenizer for {result.steps} steps in {result.seconds:.1f}s -> {args.run_dir}/tokenizer")


@_locking_run_dir(must_exist=True)
def cmd_train_prior(args) -> None:
    from torch.utils.data import TensorDataset

    from .config import parse_overrides
    from .data.codes import encode_cached
    from .data.images import load_image_dataset
    from .pipeline import MODEL_CLASSES, write_labels
    from .training import resolve_device, train
    run_dir = Path(args.run_dir)
    config = _train_config(args)
    tokenizer = _load(run_dir / "tokenizer", "tokenizer")
    data = load_image_dataset(args.dataset, root=args.root, limit=args.limit,
                              image_size=args.image_size)
    codes = encode_cached(tokenizer, run_dir / "tokenizer", "train", data.train_x, run_dir / "codes",
                          device=resolve_device(args.device))
    name = {"transformer": "TransformerPrior", "pixelcnn": "PixelCNNPrior"}[args.prior]
    module, cls_name = MODEL_CLASSES[name].split(":")
    import importlib
    cls = getattr(importlib.import_module(module), cls_name)
    prior = cls.from_config(codebook_size=tokenizer.codebook_size, code_shape=tuple(codes.shape[1:]),
                            num_classes=len(data.classes), id2label=data.id2label,
                            **parse_overrides(args.overrides))
    write_labels(run_dir, data.class_names)
    result = train(prior, TensorDataset(codes, data.train_y), run_dir, config,
                   component="prior", step_fn=lambda m, b: (m.loss(b[0], b[1]), {}))
    print(f"trained {args.prior} prior for {result.steps} steps in {result.seconds:.1f}s -> {run_dir}/prior")


def cmd_encode(args) -> None:
    from safetensors.torch import save_file

    from .modeling import atomic_write
    out = _out_file(args.out)
    tokenizer = _load(args.tokenizer, "tokenizer")
    codes = tokenizer.encode(_image_files(args.inputs)).contiguous()
    atomic_write(out, lambda tmp: save_file({"codes": codes}, tmp))
    print(f"encoded {len(args.inputs)} image(s) to codes {tuple(codes.shape)} -> {args.out}")


def cmd_decode(args) -> None:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .pipeline import GenerationPipeline
    _out_dir(args.out)
    tokenizer = _load(args.tokenizer, "tokenizer")
    if not Path(args.codes).is_file():
        raise FileNotFoundError(f"no codes file at {args.codes}")
    try:
        codes = load_file(args.codes)["codes"]
    except (SafetensorError, KeyError, OSError) as e:
        raise ValueError(f"expected a safetensors file with a 'codes' tensor at {args.codes}: {e}") from None
    if codes.dim() == 0 or codes.shape[0] == 0:
        raise ValueError(f"expected codes for at least one image in {args.codes}, got shape "
                         f"{tuple(codes.shape)}")
    images = tokenizer.decode(codes).clamp(0, 1)
    # GenerationPipeline.save only needs the tokenizer for audio; images need no prior.
    paths = GenerationPipeline.save(GenerationPipeline.__new__(GenerationPipeline), images, args.out)
    print(f"decoded {len(images)} image(s) -> {paths[0].parent}")


def cmd_generate(args) -> None:
    from .pipeline import GenerationPipeline
    from .training import resolve_device
    out = args.out or str(Path(args.run_dir) / "samples" / "generated")
    _out_dir(out)
    pipe = GenerationPipeline.from_pretrained(args.run_dir, map_location=resolve_device(args.device))
    labels = _labels(args.labels)
    samples = pipe.generate(args.n, labels=labels, seed=args.seed, batch_size=64, progress=True,
                            temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                            cfg_scale=args.cfg_scale)
    paths = pipe.save(samples, out, labels=labels)
    print(f"wrote {len(paths)} file(s) to {out}")


def cmd_evaluate(args) -> None:
    import torch

    from . import metrics as M
    from .data.codes import encode_batches
    from .data.images import load_image_dataset
    from .modeling import atomic_write_text
    from .pipeline import GenerationPipeline
    from .progress import progress_bar
    pipe = GenerationPipeline.from_pretrained(args.run_dir)
    data = load_image_dataset(args.dataset, root=args.root, image_size=args.image_size)
    x, y = data.test_x[:args.limit], data.test_y[:args.limit]
    codes = encode_batches(pipe.tokenizer, x, desc="encode test")
    recon = torch.cat([pipe.decode(c) for c in progress_bar(codes.split(256), desc="decode")])
    real = x.float() / 255
    out = {"test_psnr": float(M.psnr(recon, real)), "test_ssim": float(M.ssim(recon, real))}
    out.update({k: float(v) for k, v in M.codebook_stats(codes, pipe.tokenizer.codebook_size).items()})
    n_fit = min(len(data.train_x), max(len(x), 1000))
    train_codes = encode_batches(pipe.tokenizer, data.train_x[:n_fit], desc="encode train")
    out["prior_bits_per_code"] = M.prior_bits_per_code(pipe.prior, codes, y)
    out["prior_train_bits_per_code"] = M.prior_bits_per_code(pipe.prior, train_codes,
                                                             data.train_y[:n_fit])
    warning = M.overfitting_warning(out["prior_train_bits_per_code"], out["prior_bits_per_code"])
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    path = Path(args.run_dir) / "metrics.json"
    try:  # keep what the recipe measured (samples, wall time); update what was re-measured
        merged = json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:
        merged = {}
    merged = {**(merged if isinstance(merged, dict) else {}), **out}
    atomic_write_text(path, json.dumps(merged, indent=2) + "\n")
    print(f"metrics -> {path}")
    print(json.dumps(out))


def cmd_report(args) -> None:
    from .report import write_report
    print(f"report: {write_report(args.run_dir)}")


# --------------------------------------------------------------------------- parser
class _Parser(argparse.ArgumentParser):
    """Usage mistakes as one line on stderr (plus where to get help), exit 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _tokenizer_presets() -> list[str]:
    """Names of the image tokenizer presets (functions ``image_tokenizer_*``)."""
    from .tokenizers import image as image_tokenizers
    return sorted(n for n in dir(image_tokenizers)
                  if n.startswith("image_tokenizer_") and callable(getattr(image_tokenizers, n)))


DATASET_HELP = ("fashion-mnist | digits | cifar10 | folder:/path (a folder of <class>/<image> "
                "files) (default: %(default)s)")


def _data_options(s: argparse.ArgumentParser, default: str = "fashion-mnist") -> None:
    s.add_argument("--dataset", default=default, help=DATASET_HELP)
    s.add_argument("--root", default="data", help="where prepared datasets are cached and raw "
                   "files are looked for first (default: %(default)s)")
    s.add_argument("--image-size", type=_positive_int, default=None, metavar="N",
                   help="resize images to N x N (default: keep the native size; a folder of "
                   "mixed sizes becomes 64 x 64)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="vqgen", description="VQ-VAE tokenizers and discrete priors: train, "
                "encode, decode, generate, evaluate, report. Run 'vqgen COMMAND --help' for "
                "a command's options.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = sub.add_parser("data", help="prepare datasets").add_subparsers(dest="action", required=True)
    prep = data.add_parser("prepare", help="convert a dataset into <root>/<name>/prepared")
    prep.add_argument("name", help="fashion-mnist | digits | cifar10 | folder:/path | speech | "
                                   "music | text (fortunes) | text:pydoc | text:file:/path")
    prep.add_argument("--root", default="data", help="cache folder (default: %(default)s)")
    prep.add_argument("--image-size", type=_positive_int, default=None, metavar="N",
                      help="for folders: prepare at N x N (default: native size)")
    prep.set_defaults(func=cmd_data_prepare)

    tr = sub.add_parser("train", help="train a tokenizer or a prior").add_subparsers(dest="stage", required=True)
    presets = _tokenizer_presets()
    for stage, func in (("tokenizer", cmd_train_tokenizer), ("prior", cmd_train_prior)):
        s = tr.add_parser(stage, help=f"train the {stage} (stage {1 if stage == 'tokenizer' else 2})")
        if stage == "prior":
            s.add_argument("run_dir", help="run directory holding tokenizer/ (from 'vqgen train "
                           "tokenizer'); the prior is written to RUN_DIR/prior")
        else:
            s.add_argument("--run-dir", required=True, help="run directory to create or resume; "
                           "the tokenizer is written to RUN_DIR/tokenizer")
        _data_options(s)
        s.add_argument("--limit", type=_positive_int, default=None, metavar="N",
                       help="use only the first N training items (default: all)")
        s.add_argument("--steps", type=int, default=1000, help="optimizer steps (default: %(default)s)")
        s.add_argument("--batch-size", type=int, default=128, help="default: %(default)s")
        s.add_argument("--lr", type=float, default=1e-3 if stage == "tokenizer" else 5e-4,
                       help="peak learning rate (default: %(default)s)")
        s.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: %(default)s)")
        s.add_argument("--seed", type=int, default=0, help="seed of weights and data order (default: %(default)s)")
        s.add_argument("--checkpoint-every", type=_positive_int, default=None, metavar="N",
                       help="write a resumable checkpoint every N steps (default: steps/10, "
                            "at most 100, and always at the end)")
        if stage == "tokenizer":
            s.add_argument("--preset", default="image_tokenizer_28x28_gray", choices=presets,
                           metavar="PRESET", help=f"tokenizer size: {', '.join(presets)} "
                           "(default: %(default)s; image_tokenizer_debug is tiny)")
            s.add_argument("overrides", nargs="*", help="ImageTokenizerConfig overrides key=value, "
                           "e.g. codebook_size=256 channels=16")
        else:
            s.add_argument("--prior", choices=["transformer", "pixelcnn"], default="transformer",
                           help="prior architecture (default: %(default)s)")
            s.add_argument("overrides", nargs="*", help="prior config overrides key=value; a "
                           "small PixelCNN: hidden=32 num_layers=2; a small transformer: "
                           "hidden_size=64 num_layers=2 num_heads=2")
        s.set_defaults(func=func)

    enc = sub.add_parser("encode", help="images -> codes (.safetensors)")
    enc.add_argument("tokenizer", help="tokenizer directory (e.g. runs/d/tokenizer)")
    enc.add_argument("inputs", nargs="+", help="image files of one size (PNG, JPEG, ...)")
    enc.add_argument("--out", required=True, help="codes file to write (.safetensors, key 'codes')")
    enc.set_defaults(func=cmd_encode)

    dec = sub.add_parser("decode", help="codes (.safetensors) -> images")
    dec.add_argument("tokenizer", help="tokenizer directory (e.g. runs/d/tokenizer)")
    dec.add_argument("codes", help="codes file from 'vqgen encode' (.safetensors, key 'codes')")
    dec.add_argument("--out", required=True, help="folder for grid.png + one PNG per image")
    dec.set_defaults(func=cmd_decode)

    gen = sub.add_parser("generate", help="sample from a run dir (tokenizer/ + prior/)")
    gen.add_argument("run_dir", help="run directory holding tokenizer/ and prior/")
    gen.add_argument("--n", type=_positive_int, default=16, help="number of samples (default: %(default)s)")
    gen.add_argument("--labels", default=None, help="class-conditional priors: one class id or "
                     "name for all samples, or n comma-separated ids/names, e.g. 3 or Dress or "
                     "Dress,3 (names from RUN_DIR/labels.json)")
    gen.add_argument("--seed", type=int, default=None, help="same seed, same samples (default: random)")
    gen.add_argument("--temperature", type=float, default=1.0, help="softmax temperature (default: %(default)s)")
    gen.add_argument("--top-k", type=int, default=None, help="sample among the k most likely codes")
    gen.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass in (0, 1]")
    gen.add_argument("--cfg-scale", type=float, default=1.0,
                     help="classifier-free guidance scale; needs --labels (default: %(default)s)")
    gen.add_argument("--device", default="cpu", help="auto | cpu | cuda | cuda:N (default: %(default)s)")
    gen.add_argument("--out", default=None, help="output folder for grid.png (+ grid.json) and "
                     "one PNG per sample (default: RUN_DIR/samples/generated, shown by 'vqgen report')")
    gen.set_defaults(func=cmd_generate)

    ev = sub.add_parser("evaluate", help="tokenizer + prior metrics on a test set -> RUN_DIR/metrics.json")
    ev.add_argument("run_dir", help="run directory holding tokenizer/ and prior/")
    _data_options(ev)
    ev.add_argument("--limit", type=_positive_int, default=None, metavar="N",
                    help="evaluate on the first N test items (default: all)")
    ev.set_defaults(func=cmd_evaluate)

    rep = sub.add_parser("report", help="write RUN_DIR/report.html (self-contained)")
    rep.add_argument("run_dir", help="run directory")
    rep.set_defaults(func=cmd_report)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may come after options (argparse stops a positional list at a flag)
    if extra and (not hasattr(args, "overrides") or any("=" not in e or e.startswith("-") for e in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    from .runs import run_main
    return run_main(args.func, args, prog="vqgen")


if __name__ == "__main__":
    sys.exit(main())
