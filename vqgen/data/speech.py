"""Synthetic multi-voice speech from espeak-ng, and the speech dataset loader.

espeak-ng comes from the ``espeakng-loader`` wheel (shared library + voice data; no system
install) and is driven with ctypes in synchronous mode. A *voice* is an espeak language variant
plus a voice variant (``en-us+f3``), a base pitch, pitch range and speaking rate; each clip
jitters rate and pitch a little around its voice's values. The voice is the class label.

Sentences come from Debian ``fortunes`` when installed (``/usr/share/games/fortunes``), else
from ``pydoc_data.topics`` (stdlib) split into sentences.

The split is fixed by ``seed``: sentences are divided into train and test sets (test sentences
are never spoken in training), and ``num_unseen_voices`` voices are held out entirely. The test
split holds test sentences spoken by the seen voices *and* by the unseen voices; the manifest
records which voices are unseen (``unseen_voices``) so metrics can be reported for both.

The split (which voice speaks which sentence, with which jitter) is a function of ``seed``;
espeak-ng's samples are not bit-reproducible between calls (synthesis state carries over), so
the prepared arrays are cached and reused rather than regenerated.

Prepared data lives in ``<root>/speech/prepared/`` (see :mod:`vqgen.data.cache`): int16 audio
back to back with offsets, labels and sentence ids per split, and the class names.
"""
from __future__ import annotations

import ctypes
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .audio import AudioClips, pack_clips, split_clips, resample
from .cache import load_arrays, save_arrays

SAMPLE_RATE = 16000
FORTUNES = Path("/usr/share/games/fortunes")

# (espeak voice name, base pitch 0-100, pitch range 0-100, rate words/min)
VOICES: tuple[tuple[str, int, int, int], ...] = (
    ("en-us+m1", 40, 50, 165), ("en-us+f1", 60, 60, 160), ("en-us+m3", 35, 40, 175),
    ("en-us+f3", 70, 70, 170), ("en+m2", 45, 50, 150), ("en+f2", 65, 55, 155),
    ("en+m4", 30, 45, 180), ("en+f4", 75, 65, 165), ("en-gb-scotland+m5", 50, 50, 160),
    ("en-gb-x-rp+f5", 55, 60, 150), ("en-029+m6", 40, 60, 170), ("en-us-nyc+m7", 45, 35, 185),
    ("en-gb-x-gbclan+f1", 62, 50, 175), ("en+klatt", 50, 50, 160), ("en-us+croak", 35, 40, 155),
    ("en-gb-x-rp+m2", 42, 55, 165),
)

__all__ = ["SpeechData", "prepare_speech", "load_speech", "load_speech_dataset", "sentences", "EspeakSynth",
           "SAMPLE_RATE", "VOICES"]


# --------------------------------------------------------------------------- text
def _fortune_texts() -> list[str]:
    texts = []
    for f in sorted(FORTUNES.glob("*")) if FORTUNES.is_dir() else []:
        if f.is_file() and not f.suffix:
            with open(f, encoding="utf-8", errors="ignore") as fh:
                texts.extend(fh.read().split("\n%\n"))
    return texts


def sentences(min_chars: int = 25, max_chars: int = 140) -> list[str]:
    """Plain English sentences (letters, digits, basic punctuation), deduplicated and sorted.

    From Debian fortunes when present, else ``pydoc_data.topics``; code-like lines are dropped.
    """
    texts = _fortune_texts()
    if not texts:
        from pydoc_data.topics import topics
        texts = list(topics.values())
    out = set()
    for text in texts:
        text = re.sub(r"\s+", " ", text)
        for s in re.split(r"(?<=[.!?])\s+", text):
            s = s.strip()
            if (min_chars <= len(s) <= max_chars and re.fullmatch(r"[A-Za-z][A-Za-z0-9 ,;:'\-]*[.!?]", s)
                    and len(s.split()) >= 5):
                out.add(s)
    return sorted(out)


# --------------------------------------------------------------------------- espeak-ng via ctypes
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_CHARS_UTF8 = 1
_RATE, _VOLUME, _PITCH, _RANGE = 1, 2, 3, 4


class EspeakSynth:
    """Text -> float32 waveform at espeak's native rate (22,050 Hz), one process-wide engine.

    Raises ``ImportError`` (with the pip command) when ``espeakng-loader`` is not installed and
    ``ValueError`` for a voice name espeak does not know.
    """

    _lib = None
    _rate = 0

    def __init__(self) -> None:
        if EspeakSynth._lib is None:
            try:
                import espeakng_loader
            except ImportError:
                raise ImportError("speech synthesis needs espeak-ng: pip install espeakng-loader") from None
            lib = ctypes.CDLL(espeakng_loader.get_library_path())
            lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
            lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
            lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
            lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                         ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
            rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0,
                                         espeakng_loader.get_data_path().encode(), 0)
            if rate <= 0:
                raise RuntimeError(f"espeak_Initialize failed ({rate})")
            EspeakSynth._lib, EspeakSynth._rate = lib, rate
        self._chunks: list[np.ndarray] = []

        def collect(wav, n, events):  # called by espeak during espeak_Synth
            if n > 0:
                self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
            return 0
        self._callback = _CALLBACK(collect)     # keep a reference: espeak holds the pointer

    @property
    def sample_rate(self) -> int:
        return EspeakSynth._rate

    def __call__(self, text: str, voice: str, pitch: int = 50, pitch_range: int = 50,
                 rate: int = 175) -> np.ndarray:
        lib = EspeakSynth._lib
        lib.espeak_SetSynthCallback(self._callback)
        if lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"espeak-ng does not know the voice {voice!r}")
        for param, value in ((_RATE, rate), (_PITCH, pitch), (_RANGE, pitch_range), (_VOLUME, 100)):
            lib.espeak_SetParameter(param, int(value), 0)
        self._chunks = []
        data = text.encode("utf-8") + b"\0"
        lib.espeak_Synth(data, len(data), 0, 0, 0, _CHARS_UTF8, None, None)
        wave = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
        return wave.astype(np.float32) / 32768.0


# --------------------------------------------------------------------------- dataset
@dataclass
class SpeechData:
    """A prepared speech split: ``train`` and ``test`` :class:`AudioClips` (labels = voice ids
    into ``classes``), the test clips' ``test_unseen`` mask (voice never heard in training) and
    sentence ids per clip."""

    train: AudioClips
    test: AudioClips
    test_unseen: np.ndarray
    train_sentences: np.ndarray
    test_sentences: np.ndarray
    classes: list[str]
    unseen_voices: list[str]
    sample_rate: int = SAMPLE_RATE
    name: str = "speech"


def _trim(wave: np.ndarray, rate: int, pad_s: float = 0.1) -> np.ndarray:
    """Cut leading/trailing silence, keeping ``pad_s`` seconds each side."""
    loud = np.flatnonzero(np.abs(wave) > 1e-3)
    if len(loud) == 0:
        return wave
    pad = int(pad_s * rate)
    return wave[max(0, loud[0] - pad):loud[-1] + pad]


def prepare_speech(root: str | Path = "data", clips_per_voice: int = 100, test_clips_per_voice: int = 16,
                   num_unseen_voices: int = 2, test_sentence_fraction: float = 0.15,
                   max_seconds: float = 5.0, seed: int = 0, progress: bool = True) -> Path:
    """Synthesise the speech dataset into ``<root>/speech/prepared/`` (skipped when a cache with
    the same settings exists); returns that directory.

    Every seen voice speaks ``clips_per_voice`` training sentences and ``test_clips_per_voice``
    test sentences; every unseen voice speaks ``test_clips_per_voice`` test sentences.
    """
    settings = dict(clips_per_voice=clips_per_voice, test_clips_per_voice=test_clips_per_voice,
                    num_unseen_voices=num_unseen_voices, test_sentence_fraction=test_sentence_fraction,
                    max_seconds=max_seconds, split_seed=seed, sample_rate=SAMPLE_RATE, num_voices=len(VOICES))
    out = Path(root) / "speech" / "prepared"
    if load_arrays(out, **settings) is not None:
        return out
    if not 0 <= num_unseen_voices < len(VOICES):
        raise ValueError(f"num_unseen_voices must be in [0, {len(VOICES) - 1}], got {num_unseen_voices}")
    rng = np.random.default_rng(seed)
    texts = sentences()
    order = rng.permutation(len(texts))
    n_test = max(1, int(round(test_sentence_fraction * len(texts))))
    test_ids, train_ids = order[:n_test], order[n_test:]
    voice_order = rng.permutation(len(VOICES))
    unseen = set(voice_order[:num_unseen_voices].tolist())
    synth = EspeakSynth()
    plan = []   # (split, voice, sentence id)
    for v in range(len(VOICES)):
        if v not in unseen:
            plan += [("train", v, int(s)) for s in rng.choice(train_ids, clips_per_voice, replace=False)]
        plan += [("test", v, int(s)) for s in rng.choice(test_ids, test_clips_per_voice, replace=False)]
    jitter = rng.uniform(-1, 1, size=(len(plan), 2))
    waves: dict[str, list] = {"train": [], "test": []}
    meta: dict[str, list] = {"train": [], "test": []}
    for (split, v, s), (jr, jp) in zip(tqdm(plan, desc="espeak-ng", disable=not progress), jitter):
        name, pitch, prange, wpm = VOICES[v]
        wave = synth(texts[s], name, pitch=int(pitch + 6 * jp), pitch_range=prange, rate=int(wpm * (1 + 0.1 * jr)))
        wave = _trim(wave, synth.sample_rate)[:int(max_seconds * synth.sample_rate)]
        wave = resample(torch.from_numpy(wave), synth.sample_rate, SAMPLE_RATE).numpy()
        waves[split].append(0.9 * wave / max(1e-4, float(np.abs(wave).max())))   # peak -0.9 dBFS
        meta[split].append((v, s))
    classes = [v[0] for v in VOICES]
    arrays = {}
    for split in ("train", "test"):
        clips = pack_clips(waves[split], [v for v, _ in meta[split]], classes, SAMPLE_RATE)
        arrays.update({f"{split}_audio": clips.audio, f"{split}_offsets": clips.offsets,
                       f"{split}_labels": clips.labels,
                       f"{split}_sentences": np.array([s for _, s in meta[split]], dtype=np.int64)})
    save_arrays(out, arrays, classes=classes, unseen_voices=[classes[v] for v in sorted(unseen)],
                source="fortunes" if FORTUNES.is_dir() and _fortune_texts() else "pydoc_data.topics",
                num_sentences=len(texts), **settings)
    return out


def load_speech(root: str | Path = "data", progress: bool = True, **settings) -> SpeechData:
    """Prepare (if needed) and load the speech dataset; ``settings`` as :func:`prepare_speech`."""
    out = prepare_speech(root, progress=progress, **settings)
    arrays, meta = load_arrays(out)
    classes = list(meta["classes"])

    def clips(split: str) -> AudioClips:
        return split_clips(arrays, split, classes, SAMPLE_RATE)
    unseen_ids = [classes.index(v) for v in meta["unseen_voices"]]
    return SpeechData(clips("train"), clips("test"), np.isin(arrays["test_labels"], unseen_ids),
                      arrays["train_sentences"], arrays["test_sentences"], classes,
                      list(meta["unseen_voices"]))


def load_speech_dataset(name: str, root: str | Path = "data", progress: bool = True,
                        test_fraction: float = 0.1, seed: int = 0, **settings) -> SpeechData:
    """``"speech"`` (espeak-ng, :func:`load_speech` with ``settings``) or ``"folder:/path"``: any
    audio folder (labels from subfolders) at 16 kHz, split by file with ``test_fraction`` of the
    clips (at least one) held out by ``seed``; a folder has no unseen-voice group.

    Raises ``ValueError`` for another name, ``FileNotFoundError`` for a missing folder.
    """
    from .audio import load_audio_folder
    if name == "speech":
        return load_speech(root, progress=progress, **settings)
    if not name.startswith("folder:"):
        raise ValueError(f"expected dataset 'speech' or 'folder:/path/to/audio', got {name!r}")
    clips = load_audio_folder(name[len("folder:"):], SAMPLE_RATE)
    if len(clips) < 2:
        raise ValueError(f"expected at least 2 audio files in {name}, got {len(clips)}")
    order = np.random.default_rng(seed).permutation(len(clips))
    n_test = max(1, int(round(test_fraction * len(clips))))
    test, train = clips.subset(np.sort(order[:n_test])), clips.subset(np.sort(order[n_test:]))
    none = np.full(0, -1, dtype=np.int64)
    return SpeechData(train, test, np.zeros(len(test), bool), none, none, clips.classes, [],
                      name=Path(name[len("folder:"):]).name)
