#!/usr/bin/env python
"""Speech recipe, top to bottom: data -> tokenizer -> tokenizer evaluation -> (prior stages) -> metrics.

    python recipes/speech.py --preset quick                      # CPU, under 4 minutes
    python recipes/speech.py --preset full                       # quality run, ~90 min on 2 CPU cores
    python recipes/speech.py --preset quick adversary.enabled=true name=speech-adv
    python recipes/speech.py --preset full tokenizer_from=runs/speech-full/tokenizer name=other

Everything lands in ``runs/<name>/``: config.yaml, tokenizer/, train_state_tokenizer.pt,
logs/*.jsonl, tokenizer_eval.json, samples/ (original and reconstructed WAVs with spectrograms),
metrics.json and report.html. Re-running the same command resumes: a finished tokenizer and its
evaluation are reused.

``prior_tokenizer.enabled``: the prior models the codes of a second tokenizer, trained after the
first into ``prior_tokenizer/`` (e.g. a ``phase_free`` codec, whose codes stay put over a held
note while the waveform codec's carry the phase and change every frame), and the samples decode
through it (:meth:`GenerationPipeline.from_pretrained` loads it when the run has one). The
reconstruction metrics stay those of ``tokenizer/``; ``prior_tokenizer_*`` metrics and
``samples/recon_*_prior_tokenizer.wav`` show the second one.

The steps are shared by the audio recipes: ``main(argv, modality)`` takes what differs as a
:class:`Modality` (the config, what a class is, the dataset loader, extra sample metrics);
``recipes/music.py`` calls it with the music data, no STOI and a key-consistency metric.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Callable, NamedTuple

# Idle OpenMP threads sleep instead of spinning: on a CPU shared with other jobs, spinning
# threads made training steps up to 10x slower (must be set before torch loads OpenMP).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from vqgen import metrics as M
from vqgen.data.audio import AudioClips, ClipSegments, write_audio
from vqgen.data.codes import CodeWindows, encode_clips_cached, fixed_windows
from vqgen.data.speech import load_speech_dataset
from vqgen.losses import AdversarialLoss, MultiScaleSTFTDiscriminator
from vqgen.metrics import audio as AM
from vqgen.metrics.audio_classifier import (audio_class_accuracy, audio_frechet_distance,
                                            crop_clips, mel_frechet_distance,
                                            train_audio_classifier)
from vqgen.modeling import atomic_write_text, build_config, read_train_step
from vqgen.pipeline import GenerationPipeline, write_labels
from vqgen.priors.pixelcnn import PixelCNNPrior
from vqgen.priors.transformer import TransformerPrior
from vqgen.report import write_report
from vqgen.runs import parse_recipe_args, run_main, start_run
from vqgen.spectrogram import save_spectrogram_png
from vqgen.tokenizers import audio as audio_tokenizers
from vqgen.tokenizers.audio import AudioTokenizer
from vqgen.tokenizers.envelope import EnvelopeHead, envelope_examples
from vqgen.tokenizers.hybrid_audio import HybridAudioTokenizer, HybridAudioTokenizerConfig
from vqgen.training import TrainConfig, init_distributed, is_main_process, resolve_device, train

HERE = Path(__file__).resolve().parent
PRIORS = {"transformer": TransformerPrior, "pixelcnn": PixelCNNPrior}


class RecipeData(NamedTuple):
    """A dataset as the audio recipes use it: ``train``/``test`` clips (labels are ids into
    ``classes``), ``test_unseen`` (bool per test clip: its class never occurs in training, scored
    apart) and ``summary``, words on the test split for the log."""

    train: AudioClips
    test: AudioClips
    classes: list
    name: str
    test_unseen: np.ndarray
    summary: str


class Modality(NamedTuple):
    """What differs between the audio recipes.

    ``name``: the default config ``configs/<name>.yaml`` and the report title; ``label``: what a
    class is ("voice", "timbre"), which names config keys (``prior_data.max_clips_per_<label>``,
    ``prior_samples.report_<label>s`` and ``eval_per_<label>``), the classifier cache and the
    classifier's Fréchet-distance metrics (``sample_<label>_fd``); ``load_data(cfg)`` gives a
    :class:`RecipeData`; ``sample_metrics(samples, test_audio, sample_rate)``, if set, adds
    modality metrics of class-conditional samples beside real held-out audio of the same length.
    The tokenizer evaluation scores STOI where ``tokenizer_eval.stoi`` is set (speech only).
    """

    name: str
    label: str
    load_data: Callable[[dict], RecipeData]
    sample_metrics: Callable[[torch.Tensor, torch.Tensor, int], dict] | None = None
    doc: str | None = None


def load_speech_data(cfg: dict) -> RecipeData:
    """espeak-ng speech (``dataset_options``) or an audio folder; some test voices are unseen."""
    options = cfg["dataset_options"] if cfg["dataset"] == "speech" else {}
    data = load_speech_dataset(cfg["dataset"], root=cfg["data_root"], progress=cfg["progress"],
                               seed=cfg["seed"], **options)
    return RecipeData(data.train, data.test, data.classes, data.name, data.test_unseen,
                      f"{int(data.test_unseen.sum())} by unseen voices {data.unseen_voices}")


SPEECH = Modality("speech", "voice", load_speech_data, doc=__doc__)


def parse_args(argv=None, modality: Modality = SPEECH) -> dict:
    return parse_recipe_args(HERE / "configs" / f"{modality.name}.yaml", modality.doc, PRIORS, argv,
                             example="tokenizer_train.steps=200 prior=transformer")


# what a cached tokenizer evaluation holds: a cache written with other metrics is scored again
EVAL_KEYS = 2   # 2: level_db per bitrate


def fixed_length(clips, index, seconds: float) -> torch.Tensor:
    """The first ``seconds`` of the clips ``index`` as ``(N, 1, T)`` (zero-padded)."""
    t = int(seconds * clips.sample_rate)
    waves = torch.zeros(len(index), 1, t)
    for row, i in enumerate(index):
        c = clips.clip(int(i))[:t]
        waves[row, 0, :len(c)] = c
    return waves


def spread_over_classes(index: list[int], labels, n: int) -> list[int]:
    """Up to ``n`` of ``index``, classes taken in turn (the first clip of each class in order of
    appearance, then the second of each, ...): examples that show several voices or timbres."""
    queues: dict[int, list[int]] = {}
    for i in index:
        queues.setdefault(int(labels[i]), []).append(i)
    out, rank = [], 0
    while len(out) < n and any(len(q) > rank for q in queues.values()):
        out += [q[rank] for q in queues.values() if len(q) > rank][:n - len(out)]
        rank += 1
    return out


def class_classifier(cfg: dict, data: RecipeData, label: str, device="cpu"):
    """The recipe's voice / timbre classifier for sample metrics: trained on the training clips
    with ``cfg["classifier"]`` settings, cached beside the data (``<label>-classifier-s<steps>``);
    returns ``(model, its held-out accuracy)``."""
    c = cfg["classifier"]
    return train_audio_classifier(
        data.train, data.test, num_classes=len(data.classes), steps=c["steps"], batch_size=c["batch_size"],
        crop_seconds=c["crop_seconds"], seed=cfg["seed"], device=device, progress=cfg["progress"],
        cache_path=Path(cfg["data_root"]) / data.name / f"{label}-classifier-s{c['steps']}.safetensors")


@torch.no_grad()
def reconstruct(tokenizer, waves: torch.Tensor, device="cpu", levels: int | None = None) -> torch.Tensor:
    """``waves`` ``(n, 1, T)`` through the tokenizer's first ``levels`` (default all), 16 at a
    time, back on the CPU."""
    return torch.cat([tokenizer.decode(tokenizer.encode(waves[i:i + 16].to(device), num_codebooks=levels),
                                       length=waves.shape[-1]).cpu() for i in range(0, len(waves), 16)])


def recon_scores(tokenizer, real: torch.Tensor, labels: torch.Tensor, clf, modality: Modality,
                 device="cpu", levels: int | None = None) -> dict:
    """The sample scores on codec reconstructions of real held-out audio ``(n, 1, T)`` from the
    first ``levels`` (default all) RVQ levels: the ceiling a prior over those levels could reach
    with this tokenizer (``recon_class_accuracy``, plus the modality's ``sample_*`` extras
    renamed ``recon_*``)."""
    recon = reconstruct(tokenizer, real, device, levels)
    out = {"recon_class_accuracy": audio_class_accuracy(recon, labels, clf)}
    if modality.sample_metrics:
        out.update({"recon_" + k[len("sample_"):]: v for k, v in
                    modality.sample_metrics(recon, real, tokenizer.sample_rate).items()
                    if k.startswith("sample_")})
    return out


def score_codec(tokenizer, model_dir: Path, eval_path: Path, data: RecipeData, ev: dict, label: str,
                write: bool) -> dict:
    """Held-out reconstruction scores of ``tokenizer`` at each bitrate (``evaluate_tokenizer``
    keys) on the first ``ev["seconds"]`` of up to ``ev["max_clips"]`` test clips of seen
    classes, plus the ``test_unseen_<label>_*`` keys on unseen classes when the split has them;
    cached in ``eval_path`` for the weights in ``model_dir``, these settings and this metric set
    (``EVAL_KEYS``; written when ``write``)."""
    seen_idx = [i for i in range(len(data.test)) if not data.test_unseen[i]]
    unseen_idx = [i for i in range(len(data.test)) if data.test_unseen[i]]
    weights_mtime = (model_dir / "model.safetensors").stat().st_mtime
    cached = json.loads(eval_path.read_text()) if eval_path.is_file() else {}
    if (cached.get("weights_mtime") == weights_mtime and cached.get("settings") == ev
            and cached.get("keys") == EVAL_KEYS):
        return cached["metrics"]
    levels, stoi = ev["levels"], ev.get("stoi", False)
    seen = fixed_length(data.test, seen_idx[:ev["max_clips"]], ev["seconds"])
    scores = AM.evaluate_tokenizer(tokenizer, seen, levels=levels, with_stoi=stoi)
    if unseen_idx:
        unseen = fixed_length(data.test, unseen_idx[:ev["max_clips"]], ev["seconds"])
        per_level = AM.evaluate_tokenizer(tokenizer, unseen, levels=levels, with_stoi=stoi,
                                          prefix=f"test_unseen_{label}_")
        scores.update({k: v for k, v in per_level.items() if k.startswith(f"test_unseen_{label}_")})
    if write:
        atomic_write_text(eval_path, json.dumps({"weights_mtime": weights_mtime, "settings": ev, "keys": EVAL_KEYS,
                                                 "metrics": scores}, indent=2) + "\n")
    return scores


def codec_metrics(tokenizer, scores: dict, ev: dict, label: str) -> dict:
    """``bitrate_kbps``, the figures at the tokenizer's top bitrate under the plain keys
    (``test_si_sdr``, ``test_level_db``, ``test_mel_distance``, ``test_stft_distance``, ``test_stoi`` when scored,
    ``test_unseen_<label>_si_sdr`` when there are unseen classes), ``scores`` (:func:`score_codec`)
    and the mean ``perplexity`` / ``usage`` over levels."""
    top = f"{tokenizer.bitrate():.1f}".rstrip("0").rstrip(".").replace(".", "p") + "kbps"
    out = {"bitrate_kbps": tokenizer.bitrate(),
           **{f"test_{k}": scores[f"test_{k}_{top}"] for k in ("si_sdr", "level_db", "mel_distance", "stft_distance")}}
    if ev.get("stoi", False):
        out["test_stoi"] = scores[f"test_stoi_{top}"]
    if f"test_unseen_{label}_si_sdr_{top}" in scores:
        out[f"test_unseen_{label}_si_sdr"] = scores[f"test_unseen_{label}_si_sdr_{top}"]
    out.update(scores)
    for what in ("perplexity", "usage"):
        out[what] = sum(v for k, v in scores.items() if k.startswith(f"{what}_level")) / tokenizer.num_codebooks
    return out


def build_tokenizer(cfg: dict, component: str) -> AudioTokenizer:
    """An untrained ``cfg[component]`` tokenizer: its preset of :mod:`vqgen.tokenizers.audio`
    with its overrides."""
    section = cfg[component]
    preset = getattr(audio_tokenizers, section["preset"], None)
    if preset is None or not callable(preset):
        raise ValueError(f"{component}.preset: expected a preset function of vqgen.tokenizers.audio, "
                         f"got {section['preset']!r}")
    return preset(**section["overrides"])


def search_fields(search: dict, key: str) -> dict:
    """A recipe's code search section ``key`` (``{candidates, passes}``) as the config fields
    ``search_candidates`` / ``search_passes`` (of the codec or the hybrid)."""
    if not isinstance(search, dict) or set(search) != {"candidates", "passes"}:
        raise ValueError(f"{key}: expected {{candidates: int, passes: int}}, got {search!r}")
    return {"search_candidates": search["candidates"], "search_passes": search["passes"]}


def apply_search(tokenizer: AudioTokenizer, search: dict, model_dir: Path | None = None) -> AudioTokenizer:
    """Give the trained codec ``tokenizer`` the encoder's code search of ``search``
    (``candidates``, ``passes``: :mod:`vqgen.tokenizers.code_search`; candidates 0 = greedy) and,
    when that changes its config and ``model_dir`` is given, save it again there (same weights
    and train step), so the run's tokenizer encodes as it was scored."""
    config = dataclasses.replace(tokenizer.config, **search_fields(search, "tokenizer.search"))
    if config != tokenizer.config:
        tokenizer.config = config
        if model_dir is not None:
            tokenizer.save_pretrained(model_dir, train_step=read_train_step(model_dir))
    return tokenizer


def calibrate_codec_level(tokenizer: AudioTokenizer, data: RecipeData, enabled: bool,
                          model_dir: Path | None = None, again: bool = False) -> AudioTokenizer:
    """With ``enabled`` (``tokenizer.calibrate_level``), give a complex codec that has no output
    gain yet (``output_gain`` 1; with ``again``, any complex codec: a new envelope head moves the
    level) the gain that brings its decoded level back to its input's,
    measured on the first second of 16 training clips spread over the classes (with the code
    search: ~20 s on the speech full preset)
    (:meth:`AudioTokenizer.calibrate_level`; the SI-SDR term leaves the level free, and the
    speech codec trained with it decodes about 9 dB low); saved to ``model_dir`` when given."""
    if not enabled or tokenizer.config.phase_free or (tokenizer.config.output_gain != 1.0 and not again):
        return tokenizer
    index = spread_over_classes(list(range(len(data.train))), data.train.labels, 16)
    device = next(tokenizer.parameters()).device
    gain = tokenizer.calibrate_level(fixed_length(data.train, index, 1.0).to(device))
    tokenizer.config = dataclasses.replace(tokenizer.config, output_gain=round(gain, 4))
    print(f"tokenizer: output gain {tokenizer.config.output_gain:g} ({20 * np.log10(gain):+.1f} dB) "
          f"restores the input's level")
    if model_dir is not None:
        tokenizer.save_pretrained(model_dir, train_step=read_train_step(model_dir))
    return tokenizer


def fit_envelope_head(cfg: dict, tokenizer: AudioTokenizer, data: RecipeData, run_dir: Path, device,
                      monitor: torch.Tensor, model_dir: Path | None = None) -> tuple[AudioTokenizer, float]:
    """``envelope_head``: give the trained complex codec a decoder-side envelope head
    (:mod:`vqgen.tokenizers.envelope`), trained with ``envelope_head_train`` on its frozen
    greedy decodes of every training clip at each level count of ``levels`` (null: 1 .. Q) in
    ``window_seconds`` windows, into ``run_dir/envelope_head`` (resuming; the eval lines score
    the head's loss on ``monitor``); then applied ``weight`` of the way; with
    ``envelope_codec_train.steps`` trained on together with the codec (:func:`fit_codec_with_head`)
    and then, with ``envelope_refine_train.steps``, on its own again on that codec's decodes
    (``run_dir/envelope_refine``); the codec's level calibrated again (``tokenizer.calibrate_level``: the head moves it) and the
    codec saved again to ``model_dir`` when given. A codec that has a head keeps it (only ``weight`` is updated).
    Returns the codec and the head's training seconds."""
    section = cfg["envelope_head"]
    weight = section["weight"]
    if tokenizer.envelope is not None:
        if tokenizer.config.envelope_weight != weight:
            tokenizer.config = dataclasses.replace(tokenizer.config, envelope_weight=weight)
            if model_dir is not None:
                tokenizer.save_pretrained(model_dir, train_step=read_train_step(model_dir))
        return tokenizer, 0.0
    head = EnvelopeHead(dataclasses.replace(tokenizer.config, envelope=section["overrides"]).envelope_config())
    seconds = train_envelope_head(cfg, tokenizer, head.to(device), data, run_dir, device, monitor, "envelope_head")
    tokenizer.attach_envelope(head, weight)
    if cfg["envelope_codec_train"]["steps"]:
        tokenizer, codec_seconds = fit_codec_with_head(cfg, tokenizer, data, run_dir, device, monitor)
        seconds += codec_seconds
        if cfg["envelope_refine_train"]["steps"]:  # the head again, on the codec it now serves
            seconds += train_envelope_head(cfg, tokenizer, tokenizer.envelope, data, run_dir, device, monitor,
                                           "envelope_refine")
    if cfg["tokenizer"]["calibrate_level"]:  # the head moves the level: calibrated again (and saved)
        return calibrate_codec_level(tokenizer, data, True, model_dir, again=True), seconds
    if model_dir is not None:
        tokenizer.save_pretrained(model_dir, train_step=read_train_step(model_dir))
    return tokenizer, seconds


def train_envelope_head(cfg: dict, tokenizer: AudioTokenizer, head: EnvelopeHead, data: RecipeData,
                        run_dir: Path, device, monitor: torch.Tensor, component: str) -> float:
    """Train ``head`` in place with ``cfg[component + "_train"]`` into ``run_dir/<component>``
    (resuming) on the frozen ``tokenizer``'s greedy decodes of every training clip at each level
    count of ``envelope_head.levels`` in ``window_seconds`` windows (the eval lines score the
    head's loss on ``monitor``); returns the training seconds."""
    section = cfg["envelope_head"]
    levels = section["levels"] or list(range(1, tokenizer.num_codebooks + 1))
    window = max(1, round(section["window_seconds"] * tokenizer.sample_rate / tokenizer.config.stft_hop))
    progress = (lambda it: tqdm(it, desc=f"{component} data", dynamic_ncols=True, mininterval=10.0)) \
        if cfg["progress"] else (lambda it: it)
    clips = [data.train.clip(i).reshape(-1) for i in range(len(data.train))]
    examples = envelope_examples(tokenizer, clips, head.config, levels, window, progress)
    held_out = envelope_examples(tokenizer, list(monitor[:, 0].cpu()), head.config,
                                 [tokenizer.num_codebooks], window)
    check = [torch.stack(t).to(device) for t in zip(*(held_out[i] for i in range(len(held_out))))]
    print(f"{component}: {len(examples)} windows of {window} frames (level counts {levels})")

    def step(model, batch):
        return model.loss(*batch), {}

    def evaluate(model):
        return {"test_envelope_loss": float(model.loss(*check))}

    train_cfg = build_config(TrainConfig, cfg[component + "_train"], seed=cfg["seed"], device=str(device),
                             progress=cfg["progress"])
    result = train(head, examples, run_dir, train_cfg, component=component, step_fn=step, eval_fn=evaluate)
    with torch.no_grad():  # train() leaves the trained (or, when finished before, the saved) weights in head
        print(f"{component}: held-out loss {float(head.loss(*check)):.3f} "
              f"(codec alone {float(EnvelopeHead(head.config).to(device).loss(*check)):.3f})")
    return result.seconds


def fit_codec_with_head(cfg: dict, tokenizer: AudioTokenizer, data: RecipeData, run_dir: Path, device,
                        monitor: torch.Tensor) -> tuple[AudioTokenizer, float]:
    """``envelope_codec_train`` (steps > 0): the codec and its just-trained envelope head trained
    together on ``envelope_head.window_seconds`` crops of the training clips, the codec's loss
    plus ``envelope_head.codec_loss_weight`` x the head's (``AudioTokenizerConfig.
    envelope_loss_weight``: the encoder learns to put into the codes what the head needs), into
    ``run_dir/envelope_codec`` (resuming; the eval lines score greedy SI-SDR on ``monitor``).
    Returns the codec with its head, and the training seconds."""
    section = cfg["envelope_head"]
    tokenizer.config = dataclasses.replace(tokenizer.config, envelope_loss_weight=section["codec_loss_weight"])

    def step(model, batch):
        out = model(batch[0])
        return out.loss, dict(out.metrics)

    def evaluate(model):
        recon = model.decode(model.encode(monitor, search=0), length=monitor.shape[-1])
        return {"test_si_sdr": AM.si_sdr(recon, monitor)}

    segment = int(section["window_seconds"] * tokenizer.sample_rate)
    train_cfg = build_config(TrainConfig, cfg["envelope_codec_train"], seed=cfg["seed"], device=str(device),
                             progress=cfg["progress"])
    result = train(tokenizer.train(), ClipSegments(data.train, segment), run_dir, train_cfg,
                   component="envelope_codec", step_fn=step, eval_fn=evaluate)
    tokenizer = AudioTokenizer.from_pretrained(run_dir / "envelope_codec").to(device).eval()
    print(f"envelope codec: codec and head trained together {train_cfg.steps} steps "
          f"(head loss x {section['codec_loss_weight']:g})")
    return tokenizer, result.seconds


def check_codec(cfg: dict) -> None:
    """Fail before any training when the codec's settings cannot work: ``tokenizer.search``
    must be a valid code search for it, ``envelope_head`` valid settings of its head, and with ``hybrid.enabled`` the hybrid must be joinable:
    it needs the prior tokenizer, and the two tokenizers' STFTs and codebooks must match
    (:class:`HybridAudioTokenizerConfig` says which value differs)."""
    codec = (AudioTokenizer.from_pretrained(cfg["tokenizer_from"]) if cfg["tokenizer_from"]
             else build_tokenizer(cfg, "tokenizer"))
    apply_search(codec, cfg["tokenizer"]["search"])
    eh = cfg["envelope_head"]
    if eh["enabled"]:  # the head's settings, on this codec
        dataclasses.replace(codec.config, envelope=eh["overrides"], envelope_weight=eh["weight"])
        levels = eh["levels"]
        if levels is not None and (not isinstance(levels, list) or not levels or any(
                isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= codec.num_codebooks for n in levels)):
            raise ValueError(f"envelope_head.levels: expected null or a list of ints in [1, "
                             f"{codec.num_codebooks}], got {levels!r}")
        w = eh["window_seconds"]
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not w > 0:
            raise ValueError(f"envelope_head.window_seconds: expected a number > 0, got {w!r}")
        dataclasses.replace(codec.config, envelope_loss_weight=eh["codec_loss_weight"])
    if not cfg["hybrid"]["enabled"]:
        return
    if not cfg["prior_tokenizer"]["enabled"]:
        raise ValueError("hybrid.enabled: expected prior_tokenizer.enabled true (its codes are the "
                         "hybrid's magnitude levels), got false")
    HybridAudioTokenizerConfig(magnitude=dict(vars(build_tokenizer(cfg, "prior_tokenizer").config)),
                               phase=dict(vars(codec.config)), magnitude_weight=cfg["hybrid"]["magnitude_weight"],
                               blend=cfg["hybrid"]["blend"], envelope_bins=cfg["hybrid"]["envelope_bins"],
                               **search_fields(cfg["hybrid"]["search"], "hybrid.search"))


def fit_tokenizer(cfg: dict, component: str, data: RecipeData, run_dir: Path, device,
                  monitor: torch.Tensor, adversary=None) -> tuple[AudioTokenizer, float]:
    """Build ``cfg[component]`` (a preset of :mod:`vqgen.tokenizers.audio` with overrides),
    train it on ``segment_seconds`` crops of the training clips with ``cfg[component +
    "_train"]`` (resuming; a finished run is reused) and return it from ``run_dir/<component>``
    with its training seconds. The eval lines score ``monitor`` (held-out clips): SI-SDR, or
    for a ``phase_free`` codec (its phase is Griffin-Lim's, not the input's) the mel distance."""
    section = cfg[component]
    tokenizer = build_tokenizer(cfg, component).to(device)

    def step(model, batch):
        wave = batch[0]
        out = model(wave)
        loss, metrics = out.loss, dict(out.metrics)
        if adversary is not None:
            metrics["disc_loss"] = adversary.discriminator_step(out.recon, wave)
            g_loss, g_metrics = adversary.generator_loss(out.recon, wave)
            loss = loss + g_loss
            metrics.update(g_metrics)
        return loss, metrics

    def evaluate(model):
        recon = model.decode(model.encode(monitor), length=monitor.shape[-1])
        if model.config.phase_free:
            return {"test_mel_distance": AM.mel_distance(recon, monitor, model.sample_rate)}
        return {"test_si_sdr": AM.si_sdr(recon, monitor)}

    segment = int(section["segment_seconds"] * tokenizer.sample_rate)
    train_cfg = build_config(TrainConfig, cfg[component + "_train"], seed=cfg["seed"],
                             device=str(device), progress=cfg["progress"])
    result = train(tokenizer, ClipSegments(data.train, segment), run_dir, train_cfg,
                   component=component, step_fn=step, eval_fn=evaluate, auxiliary=adversary)
    return AudioTokenizer.from_pretrained(run_dir / component).to(device), result.seconds


def main(argv=None, modality: Modality = SPEECH) -> dict:
    cfg = parse_args(argv, modality)
    check_codec(cfg)
    label = modality.label
    dist = init_distributed()
    device = resolve_device(cfg["device"]) if dist.world_size == 1 else dist.device
    run_dir = Path(cfg["runs"]) / cfg["name"]
    main_rank = is_main_process()
    optional = [k for k in ("envelope_codec_train", "envelope_refine_train") if cfg[k]["steps"] != 0]  # 0: off
    start_run(run_dir, cfg, main=main_rank,
              train_sections=("tokenizer_train", "envelope_head_train", *optional, "prior_tokenizer_train",
                              "prior_train"))
    torch.manual_seed(cfg["seed"])
    t_start = time.time()

    # 1. Data -------------------------------------------------------------------------------
    data = modality.load_data(cfg)
    if main_rank:
        write_labels(run_dir, data.classes)
    print(f"data: {data.name} train {len(data.train)} clips ({data.train.seconds / 60:.1f} min), "
          f"test {len(data.test)} clips ({data.summary}); {len(data.classes)} {label}s; "
          f"device {device}; run dir {run_dir}")

    # 2. Tokenizer --------------------------------------------------------------------------
    tok_dir = run_dir / "tokenizer"
    seen_idx = [i for i in range(len(data.test)) if not data.test_unseen[i]]
    unseen_idx = [i for i in range(len(data.test)) if data.test_unseen[i]]
    ev = cfg["tokenizer_eval"]
    monitor = fixed_length(data.test, seen_idx[:16], 2.0).to(device)
    if cfg["tokenizer_from"]:
        tokenizer = AudioTokenizer.from_pretrained(cfg["tokenizer_from"]).to(device)
        tok_seconds = 0.0
        if main_rank:  # the run dir holds its own copy, so it is a complete pipeline
            tokenizer.save_pretrained(tok_dir)
    else:
        adv_cfg = cfg["adversary"]
        adversary = None
        if adv_cfg["enabled"]:
            adversary = AdversarialLoss(MultiScaleSTFTDiscriminator(channels=adv_cfg["channels"]),
                                        loss=adv_cfg["loss"], lr=float(adv_cfg["lr"]),
                                        adversarial_weight=adv_cfg["adversarial_weight"],
                                        feature_weight=adv_cfg["feature_weight"])
        tokenizer, tok_seconds = fit_tokenizer(cfg, "tokenizer", data, run_dir, device, monitor, adversary)
    tokenizer = apply_search(tokenizer.eval(), cfg["tokenizer"]["search"], tok_dir if main_rank else None)
    tokenizer = calibrate_codec_level(tokenizer, data, cfg["tokenizer"]["calibrate_level"],
                                      tok_dir if main_rank else None)
    head_seconds = 0.0
    if cfg["envelope_head"]["enabled"]:
        tokenizer, head_seconds = fit_envelope_head(cfg, tokenizer, data, run_dir, device, monitor,
                                                    tok_dir if main_rank else None)
    print(f"tokenizer: {tokenizer.num_parameters() / 1e6:.2f}M parameters, {tokenizer.num_codebooks} "
          f"levels x {tokenizer.codebook_size} at {tokenizer.frame_rate:g} Hz "
          f"({tokenizer.bitrate():g} kbps)")

    # 3. Evaluate the tokenizer on held-out audio (cached per tokenizer weights) ------------
    tok_metrics = score_codec(tokenizer, tok_dir, run_dir / "tokenizer_eval.json", data, ev, label, main_rank)
    codec = codec_metrics(tokenizer, tok_metrics, ev, label)
    metrics = dict(codec)
    print("tokenizer eval: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items() if "si_sdr" in k))

    samples_dir = run_dir / "samples"
    n_seen = ev["num_audio_examples"] - min(1, len(unseen_idx))          # one of an unseen class, if any
    shown = (spread_over_classes(seen_idx, data.test.labels, n_seen) + unseen_idx[:1])[:ev["num_audio_examples"]]

    def example_tag(j: int, i: int) -> str:
        return f"recon_{j}_{data.classes[int(data.test.labels[i])]}" + ("_unseen" if data.test_unseen[i] else "")

    def write_examples(model, levels: list[int], suffix: str = "") -> None:
        """The shown test clips through ``model`` at each level count (WAV + spectrogram),
        ``<tag>_<kbps>kbps<suffix>``, or ``<tag><suffix>`` when ``levels`` is empty (all levels);
        with the originals (``<tag>_original``) when there is no suffix."""
        for j, i in enumerate(shown):
            wave = fixed_length(data.test, [i], ev["seconds"]).to(device)
            tag = example_tag(j, i)
            codes = model.encode(wave)
            outs = {} if suffix else {"_original": wave[0, 0].cpu()}
            for n in levels or [model.num_codebooks]:
                what = "_" + f"{model.bitrate(n):g}".replace(".", "p") + "kbps" if levels else ""
                outs[what + suffix] = model.decode(codes[:, :n], length=wave.shape[-1])[0, 0].cpu()
            for what, w in outs.items():
                name = tag + what
                write_audio(samples_dir / f"{name}.wav", w, model.sample_rate)
                save_spectrogram_png(w, model.sample_rate, samples_dir / f"{name}.png")

    if main_rank:
        write_examples(tokenizer, sorted({1, max(1, tokenizer.num_codebooks // 2), tokenizer.num_codebooks}))

    # 3b. Optionally a second tokenizer whose codes the prior models (e.g. a phase-free codec) --
    gen_tokenizer, gen_dir, gen_seconds = tokenizer, tok_dir, 0.0
    if cfg["prior_tokenizer"]["enabled"]:
        gen_tokenizer, gen_seconds = fit_tokenizer(cfg, "prior_tokenizer", data, run_dir, device, monitor)
        gen_tokenizer.eval()
        gen_dir = run_dir / "prior_tokenizer"
        seen = fixed_length(data.test, seen_idx[:ev["max_clips"]], ev["seconds"])
        recon = reconstruct(gen_tokenizer, seen, device)
        metrics["prior_tokenizer_bitrate_kbps"] = gen_tokenizer.bitrate()
        metrics["prior_tokenizer_mel_distance"] = AM.mel_distance(recon, seen, gen_tokenizer.sample_rate)
        print(f"prior tokenizer: {gen_tokenizer.num_parameters() / 1e6:.2f}M parameters, "
              f"{gen_tokenizer.num_codebooks} levels x {gen_tokenizer.codebook_size} "
              f"({gen_tokenizer.bitrate():g} kbps); held-out mel distance "
              f"{metrics['prior_tokenizer_mel_distance']:.3f}")
        if main_rank:  # the same examples through the prior's tokenizer
            write_examples(gen_tokenizer, [], "_prior_tokenizer")
    hy = cfg["hybrid"]
    if hy["enabled"] and main_rank:  # 3c. the hybrid codec (check_codec): the prior tokenizer's
        # magnitude code + the codec's leading levels
        hybrid = HybridAudioTokenizer.from_parts(gen_tokenizer, tokenizer, magnitude_weight=hy["magnitude_weight"],
                                                 blend=hy["blend"], envelope_bins=hy["envelope_bins"],
                                                 **search_fields(hy["search"], "hybrid.search"))
        hybrid_dir = hybrid.save_pretrained(run_dir / "hybrid_tokenizer")
        scores = score_codec(hybrid, hybrid_dir, run_dir / "hybrid_tokenizer_eval.json", data, ev, label, True)
        # the hybrid is the run's codec now: its figures under the plain keys, the codec's as codec_*
        metrics = {**codec_metrics(hybrid, scores, ev, label), **{"codec_" + k: v for k, v in codec.items()},
                   **{k: v for k, v in metrics.items() if k not in codec}}
        print("hybrid codec eval: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()
                                                if "si_sdr" in k and not k.startswith("codec_")))
        write_examples(hybrid, sorted({hybrid.num_codebooks // 2, hybrid.num_codebooks}), "_hybrid")
    prior_levels = cfg["prior_data"]["levels"]                     # the prior's (leading) levels
    prior_levels = gen_tokenizer.num_codebooks if prior_levels is None else prior_levels
    if isinstance(prior_levels, bool) or not isinstance(prior_levels, int) \
            or not 1 <= prior_levels <= gen_tokenizer.num_codebooks:
        raise ValueError(f"prior_data.levels: expected null or an int in [1, {gen_tokenizer.num_codebooks}] "
                         f"(the levels of the prior's tokenizer), got {cfg['prior_data']['levels']!r}")

    # 4. Prior: encode every clip (cached), train a class-conditioned prior on code windows ---
    pd = cfg["prior_data"]
    window = max(2, round(pd["window_seconds"] * gen_tokenizer.frame_rate))  # frames per window
    codes_dir = run_dir / ("prior_codes" if cfg["prior_tokenizer"]["enabled"] else "codes")
    prior_clips = {"train": data.train, "test": data.test}
    per_class = pd[f"max_clips_per_{label}"]
    if per_class:  # the first clips of each class (a smaller, faster prior set)
        labels = torch.as_tensor(data.train.labels)
        keep = [i for v in labels.unique() for i in (labels == v).nonzero()[:, 0][:per_class]]
        prior_clips["train"] = data.train.subset(torch.stack(keep).sort().values.numpy())
    enc = {split: encode_clips_cached(gen_tokenizer, gen_dir, split, clips, codes_dir, device=device,
                                      progress=cfg["progress"])
           for split, clips in prior_clips.items()}
    enc = {split: dataclasses.replace(e, codes=e.codes[:prior_levels]) for split, e in enc.items()}
    seen_classes = sorted({int(v) for v in data.train.labels})
    heldout, heldout_y = fixed_windows(enc["test"].subset(torch.as_tensor(~data.test_unseen)), window)
    pick = torch.linspace(0, len(heldout) - 1, min(len(heldout), pd["max_eval_windows"])).long()
    heldout, heldout_y = heldout[pick], heldout_y[pick]                   # test clips, seen classes
    train_fit, train_fit_y = fixed_windows(enc["train"], window)
    pick = torch.linspace(0, len(train_fit) - 1, min(len(train_fit), len(heldout))).long()
    train_fit, train_fit_y = train_fit[pick], train_fit_y[pick]           # same scoring, training codes
    code_shape = (prior_levels, window)
    print(f"prior data: {len(enc['train'])} clips, {enc['train'].codes.shape[1]} frames; windows "
          f"{code_shape} ({window / gen_tokenizer.frame_rate:g} s); {len(heldout)} held-out windows")
    prior = PRIORS[cfg["prior"]].from_config(
        codebook_size=gen_tokenizer.codebook_size, code_shape=code_shape, num_classes=len(data.classes),
        id2label=dict(enumerate(data.classes)), **cfg["prior_config"][cfg["prior"]]).to(device)

    def prior_step(model, batch):
        return model.loss(batch[0], batch[1]), {}

    def prior_eval(model):
        return {"test_bits_per_code": M.prior_bits_per_code(model, heldout, heldout_y, batch_size=8)}

    prior_cfg = build_config(TrainConfig, cfg["prior_train"], seed=cfg["seed"], device=str(device),
                             progress=cfg["progress"])
    result = train(prior, CodeWindows(enc["train"], window, seed=cfg["seed"]), run_dir, prior_cfg,
                   component="prior", step_fn=prior_step, eval_fn=prior_eval)
    prior_seconds = result.seconds
    if not main_rank:
        return {}
    pipe = GenerationPipeline.from_pretrained(run_dir, map_location=device)
    metrics["prior_bits_per_code"] = M.prior_bits_per_code(pipe.prior, heldout, heldout_y, batch_size=8)
    metrics["prior_train_bits_per_code"] = M.prior_bits_per_code(pipe.prior, train_fit, train_fit_y,
                                                                 batch_size=8)
    warning = M.overfitting_warning(metrics["prior_train_bits_per_code"],
                                    metrics["prior_bits_per_code"], what=f"{cfg['prior']} prior")
    if warning:
        print(f"warning: {warning}", file=sys.stderr)

    # 5. Samples: a few seconds per class (WAV + spectrogram each), and sample metrics -------
    ps = cfg["prior_samples"]
    shown = seen_classes[:ps[f"report_{label}s"]]
    t0 = time.time()
    waves = pipe.generate(len(shown), labels=shown, seed=cfg["seed"], progress=cfg["progress"],
                          **cfg["sampling"])
    pipe.save(waves, samples_dir / f"prior_{cfg['prior']}", prefix="sample_", labels=shown,
              nrow=ps["grid_columns"])
    print(f"sampled {len(shown)} x {waves.shape[-1] / tokenizer.sample_rate:g} s in "
          f"{time.time() - t0:.1f} s")
    clf, clf_acc = class_classifier(cfg, data, label, device)
    eval_labels = torch.tensor(seen_classes).repeat(ps[f"eval_per_{label}"])
    fake = pipe.generate(len(eval_labels), labels=eval_labels, seed=cfg["seed"] + 1,
                         batch_size=ps["batch_size"], progress=cfg["progress"], **cfg["sampling"])
    length = fake.shape[-1]
    test_seen_idx = [i for i in range(len(data.test)) if not data.test_unseen[i]]
    real = crop_clips(data.test, length, index=test_seen_idx)               # held-out, seen classes
    train_real = crop_clips(data.train, length,
                            index=torch.linspace(0, len(data.train) - 1, len(real)).long())
    metrics["sample_class_accuracy"] = audio_class_accuracy(fake, eval_labels, clf)
    metrics["classifier_test_accuracy"] = clf_acc
    metrics[f"sample_{label}_fd"] = audio_frechet_distance(real, fake, clf)
    metrics[f"train_test_{label}_fd"] = audio_frechet_distance(real, train_real, clf)
    metrics["sample_mel_fd"] = mel_frechet_distance(real, fake, tokenizer.sample_rate)
    metrics["train_test_mel_fd"] = mel_frechet_distance(real, train_real, tokenizer.sample_rate)
    extra = modality.sample_metrics(fake, real, tokenizer.sample_rate) if modality.sample_metrics else {}
    metrics.update(extra)
    metrics.update(recon_scores(gen_tokenizer, real, torch.as_tensor(np.asarray(data.test.labels))[test_seen_idx],
                                clf, modality, device, prior_levels))
    print("samples: " + ", ".join(f"{k} {metrics[k]:.3f}" for k in (
        "prior_bits_per_code", "prior_train_bits_per_code", "sample_class_accuracy",
        "classifier_test_accuracy", "recon_class_accuracy", "sample_mel_fd", "train_test_mel_fd", *extra)))

    # 6. Metrics and report -----------------------------------------------------------------
    metrics["train_seconds"] = tok_seconds + head_seconds + gen_seconds + prior_seconds
    metrics["total_seconds"] = time.time() - t_start
    metrics["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    atomic_write_text(run_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    report = write_report(run_dir, title=f"vqgen {modality.name} recipe: {cfg['name']}")
    print(json.dumps({k: v for k, v in metrics.items() if "level" not in k}))
    print(f"report: {report}")
    return metrics


if __name__ == "__main__":
    sys.exit(run_main(main, prog="speech.py"))  # user mistakes: one line, exit 2
