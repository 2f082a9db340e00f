"""Bach chorales rendered by a built-in multi-timbre synthesiser, and the music dataset loader.

Pieces are the chorales in ``music21``'s bundled corpus (the ``bach`` folder's MusicXML files,
about 400; no network). Each piece is parsed once into notes ``(pitch, onset, duration)`` in
quarter lengths (ties merged, every part kept), then rendered to 16 kHz mono by
:func:`synthesize` in each *timbre* of :data:`TIMBRES`; the timbre is the class label. A timbre
may also be a General MIDI program, ``"gm:<0-127>"``, rendered through a soundfont when the
optional renderer is installed (:mod:`vqgen.data.soundfont`).

A :class:`Timbre` is a harmonic spectrum (amplitude of harmonic ``k``), an attack/decay/
sustain/release envelope, optional per-harmonic exponential decay (plucked strings) and optional
vibrato. Synthesis is vectorised per note (harmonics x samples), deterministic for a seed (the
seed only sets vibrato phases), and peak-normalised to ``PEAK`` (-6 dBFS, no clipping).

Augmentation, drawn per clip from a generator seeded by ``(seed, piece)``: transposition by up
to ``transpose`` semitones either way, tempo uniform in ``tempo`` quarter notes per minute, and
the excerpt's start. Clips are ``clip_seconds`` long excerpts.

The split is by piece and fixed by ``seed``: pieces (variants of one chorale, ``bwv18.5-lz`` and
``bwv18.5-w``, count as one) are shuffled and ``test_fraction`` of them held out, so test pieces
never appear in training. Limiting ``num_pieces`` takes the first pieces of each side in that
order, so a small dataset's test pieces are also test pieces of the full one.

Prepared data lives in ``<root>/music/prepared/`` (``prepared-<digest>/`` for non-default
settings; see :mod:`vqgen.data.cache`): int16 audio
back to back with offsets, labels (timbre ids), piece ids and the augmentation of every clip.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..progress import progress_bar
from .audio import AudioClips, pack_clips, split_clips
from .cache import load_arrays, save_arrays
from .soundfont import gm_program, render_gm, require_soundfont

SAMPLE_RATE = 16000
PEAK = 0.5                  # peak of every rendered clip (-6 dBFS): headroom, never clips
MAX_HARMONIC_HZ = 7200.0    # harmonics above this are dropped (no aliasing at 16 kHz)

__all__ = ["Timbre", "TIMBRES", "MusicData", "chorale_paths", "chorale_notes", "synthesize",
           "split_pieces", "prepare_music", "load_music", "load_music_dataset", "SAMPLE_RATE", "PEAK"]


# --------------------------------------------------------------------------- timbres
@dataclass(frozen=True)
class Timbre:
    """One instrument of the synthesiser.

    harmonics: amplitude of harmonic ``k = 1, 2, ...`` (relative; 0 = absent).
    attack/decay/release: seconds; the level rises linearly to 1 over ``attack``, falls to
    ``sustain`` over ``decay``, holds until the note ends, then falls to 0 over ``release``.
    damping: per-harmonic exponential decay ``exp(-(damping[0] + damping[1] * k) * t)`` (1/s),
    so high harmonics die first (plucked strings); ``(0, 0)`` for sustained instruments.
    vibrato_hz/vibrato_cents: frequency modulation, faded in over ``vibrato_delay`` seconds.
    """

    name: str
    harmonics: tuple[float, ...]
    attack: float
    decay: float
    sustain: float
    release: float
    damping: tuple[float, float] = (0.0, 0.0)
    vibrato_hz: float = 0.0
    vibrato_cents: float = 0.0
    vibrato_delay: float = 0.0


def _harmonics(fn, n: int = 24) -> tuple[float, ...]:
    return tuple(float(fn(k)) for k in range(1, n + 1))


TIMBRES: dict[str, Timbre] = {t.name: t for t in (
    # pipe organ: octave-related drawbars (16', 8', 4', 2 2/3', 2' ...), flat sustain, no vibrato
    Timbre("organ", _harmonics(lambda k: {1: 1.0, 2: 0.8, 3: 0.45, 4: 0.55, 6: 0.3, 8: 0.35,
                                          10: 0.12, 12: 0.15, 16: 0.12}.get(k, 0.0)),
           attack=0.012, decay=0.0, sustain=1.0, release=0.05),
    # bowed strings: bright sawtooth-like 1/k spectrum, slow attack, delayed light vibrato
    Timbre("strings", _harmonics(lambda k: 1.0 / k * (1.0 + 0.6 * math.exp(-((k - 6) / 3) ** 2))),
           attack=0.15, decay=0.1, sustain=0.85, release=0.2,
           vibrato_hz=5.5, vibrato_cents=14.0, vibrato_delay=0.25),
    # plucked string (guitar/harpsichord-like): plucked at 1/5 of the length, exponential decay,
    # faster for higher harmonics
    Timbre("plucked", _harmonics(lambda k: abs(math.sin(math.pi * k * 0.2)) / k ** 1.3 if k % 5 else 0.0),
           attack=0.003, decay=0.0, sustain=1.0, release=0.06, damping=(1.2, 0.6)),
    # reed (clarinet-like): odd harmonics dominate, light vibrato
    Timbre("reed", _harmonics(lambda k: (1.0 / k if k % 2 else 0.06 / k) * (1.0 if k < 12 else 0.4), 20),
           attack=0.04, decay=0.06, sustain=0.85, release=0.08,
           vibrato_hz=4.8, vibrato_cents=8.0, vibrato_delay=0.15),
)}


# --------------------------------------------------------------------------- corpus
def chorale_paths() -> list[Path]:
    """The Bach chorales of music21's bundled corpus (MusicXML files; the one keyboard piece,
    BWV 846, is left out), sorted by name. Raises ``ImportError`` without music21."""
    try:
        from music21 import corpus
    except ImportError:
        raise ImportError("the music dataset needs music21: pip install music21") from None
    paths = [Path(p) for p in corpus.getComposer("bach") if Path(p).suffix in (".mxl", ".xml")]
    return sorted((p for p in paths if p.stem != "bwv846"), key=lambda p: p.name)


def chorale_notes(source) -> np.ndarray:
    """Every note of a score as float64 ``(n, 3)``: MIDI pitch, onset and duration in quarter
    lengths, sorted by onset then pitch. ``source`` is a path or a parsed ``music21`` stream;
    tied notes are merged, chords give one row per pitch, zero-length (grace) notes are dropped.
    """
    from music21 import converter
    if isinstance(source, (str, Path)):   # our own parse: merge ties in place (a copy costs 60%)
        score = converter.parse(source, forceSource=True, storePickle=False)
        score.stripTies(inPlace=True)
    else:
        score = source.stripTies()
    rows = []
    for part in score.parts:
        for n in part.flatten().notes:
            dur = float(n.quarterLength)
            if dur > 0:
                rows += [(float(p.ps), float(n.offset), dur) for p in n.pitches]
    if not rows:
        raise ValueError(f"expected a score with notes, got none in {source}")
    notes = np.array(rows, dtype=np.float64)
    return notes[np.lexsort((notes[:, 0], notes[:, 1]))]


# --------------------------------------------------------------------------- synthesis
def _render_note(out: np.ndarray, timbre: Timbre, pitch: float, onset: float, duration: float,
                 start: float, sample_rate: int, vib_phase: float) -> None:
    """Add one note (times in seconds, ``start`` = time of ``out[0]``) into ``out`` in place;
    only the samples inside ``out`` are computed."""
    first = max(0, int(math.ceil((onset - start) * sample_rate)))
    last = min(len(out), int(math.floor((onset + duration + timbre.release - start) * sample_rate)))
    if last <= first:
        return
    t = (np.arange(first, last) / sample_rate + start) - onset            # (n,) seconds since onset
    f0 = 440.0 * 2.0 ** ((pitch - 69.0) / 12.0)
    top = min(len(timbre.harmonics), int(MAX_HARMONIC_HZ / f0))        # highest harmonic kept
    if top < 1:
        return
    freq = np.full_like(t, f0)                                           # (n,) instantaneous Hz
    if timbre.vibrato_cents > 0:
        depth = 2.0 ** (timbre.vibrato_cents / 1200.0) - 1.0
        fade = np.clip(t / max(timbre.vibrato_delay, 1e-6), 0.0, 1.0)
        freq *= 1.0 + depth * fade * np.sin(2 * np.pi * timbre.vibrato_hz * t + vib_phase)
    phase = 2 * np.pi * (f0 * t[0] + np.cumsum(freq) / sample_rate)      # (n,) radians
    # sum_k amp_k sin(k phase) by the recurrence sin((k+1)x) = 2 cos(x) sin(kx) - sin((k-1)x):
    # one sin/cos per sample instead of one per harmonic; damping exp(-(d0 + d1 k) t) likewise
    # as exp(-d0 t) * exp(-d1 t)^k
    two_cos, s_prev, s_k = 2.0 * np.cos(phase), np.zeros_like(phase), np.sin(phase)
    damped = timbre.damping != (0.0, 0.0)
    step = np.exp(-timbre.damping[1] * t) if damped else None
    gain = step.copy() if damped else None
    acc = np.zeros_like(phase)
    for amp in timbre.harmonics[:top]:
        if amp > 0:
            acc += amp * (s_k * gain if damped else s_k)
        s_prev, s_k = s_k, two_cos * s_k - s_prev
        if damped:
            gain *= step
    if damped:
        acc *= np.exp(-timbre.damping[0] * t)
    # envelope: attack -> decay -> sustain, times a linear release gate after note-off
    a, d = max(timbre.attack, 1e-4), timbre.decay
    env = np.interp(t, [0.0, a, a + d], [0.0, 1.0, timbre.sustain])
    env *= np.clip(1.0 - (t - duration) / max(timbre.release, 1e-4), 0.0, 1.0)
    out[first:last] += env * acc


def synthesize(notes: np.ndarray, timbre: str | Timbre, *, tempo: float = 100.0, transpose: float = 0.0,
               start: float = 0.0, seconds: float = 4.0, sample_rate: int = SAMPLE_RATE, seed: int = 0,
               peak: float = PEAK) -> np.ndarray:
    """Render ``notes`` (``(n, 3)``: MIDI pitch, onset, duration in quarter lengths, as
    :func:`chorale_notes`) at ``tempo`` quarter notes per minute, ``transpose`` semitones up,
    in one timbre; returns float32 ``(round(seconds * sample_rate),)``: the excerpt from
    ``start`` seconds, peak-normalised to ``peak`` (an all-silent excerpt stays zeros).
    ``timbre`` is a built-in :class:`Timbre` (or its name in :data:`TIMBRES`) or a General MIDI
    program ``"gm:<0-127>"`` rendered through a soundfont (:mod:`vqgen.data.soundfont`).

    Deterministic: the same arguments give the same samples (``seed`` sets vibrato phases).
    Raises ``ValueError`` for an unknown timbre name, a bad ``notes`` shape, a non-positive
    ``tempo``/``seconds``, or a GM timbre where no soundfont renderer is installed.
    """
    program = gm_program(timbre)
    if isinstance(timbre, str) and program is None:
        if timbre not in TIMBRES:
            raise ValueError(f"expected a timbre in {list(TIMBRES)}, got {timbre!r}")
        timbre = TIMBRES[timbre]
    notes = np.asarray(notes, dtype=np.float64)
    if notes.ndim != 2 or notes.shape[1] != 3:
        raise ValueError(f"expected notes of shape (n, 3) (pitch, onset, duration), got {notes.shape}")
    if not tempo > 0 or not seconds > 0:
        raise ValueError(f"expected tempo > 0 and seconds > 0, got tempo={tempo}, seconds={seconds}")
    if program is not None:
        return render_gm(notes, program, tempo=tempo, transpose=transpose, start=start, seconds=seconds,
                         sample_rate=sample_rate, peak=peak)
    sec_per_q = 60.0 / tempo
    out = np.zeros(int(round(seconds * sample_rate)), dtype=np.float64)
    vib = np.random.default_rng(seed).uniform(0, 2 * np.pi, size=len(notes))
    for (pitch, onset, dur), phase in zip(notes, vib):                 # one vectorised render per note
        _render_note(out, timbre, pitch + transpose, onset * sec_per_q, dur * sec_per_q, start,
                     sample_rate, phase)
    top = np.abs(out).max()
    if top > 0:
        out *= peak / top
    return out.astype(np.float32)


# --------------------------------------------------------------------------- split
def split_pieces(names: list[str], test_fraction: float = 0.1, seed: int = 0) -> tuple[list[int], list[int]]:
    """Indices of ``names`` for training and testing, each in a seeded random order.

    Variants of one chorale (the name up to the first ``-``) always fall on the same side;
    ``test_fraction`` of the chorales (at least one) are held out.
    """
    groups = sorted({n.split("-")[0] for n in names})
    order = [groups[i] for i in np.random.default_rng(seed).permutation(len(groups))]
    test_groups = set(order[:max(1, int(round(test_fraction * len(groups))))])
    rank = {g: i for i, g in enumerate(order)}
    ordered = sorted(range(len(names)), key=lambda i: (rank[names[i].split("-")[0]], names[i]))
    return ([i for i in ordered if names[i].split("-")[0] not in test_groups],
            [i for i in ordered if names[i].split("-")[0] in test_groups])


# --------------------------------------------------------------------------- dataset
@dataclass
class MusicData:
    """A prepared music split: ``train`` and ``test`` :class:`AudioClips` (labels = timbre ids
    into ``classes``) and the piece of every clip (ids into ``pieces``; ``-1`` for an audio
    folder, whose clips are files)."""

    train: AudioClips
    test: AudioClips
    train_pieces: np.ndarray
    test_pieces: np.ndarray
    pieces: list[str]
    classes: list[str]
    sample_rate: int = SAMPLE_RATE
    name: str = "music"


def _check_settings(num_pieces, clips_per_piece, clip_seconds, test_fraction, transpose, tempo,
                    timbres, available: int) -> None:
    def is_int(x) -> bool:
        return isinstance(x, (int, np.integer)) and not isinstance(x, bool)
    if num_pieces is not None and not (is_int(num_pieces) and 2 <= num_pieces <= available):
        raise ValueError(f"num_pieces must be None (all) or an integer in [2, {available}], got {num_pieces!r}")
    if not (is_int(clips_per_piece) and clips_per_piece >= 1):
        raise ValueError(f"clips_per_piece must be an integer >= 1, got {clips_per_piece!r}")
    if not (isinstance(clip_seconds, (int, float)) and 0 < clip_seconds <= 60):
        raise ValueError(f"clip_seconds must be in (0, 60], got {clip_seconds!r}")
    if not (isinstance(test_fraction, (int, float)) and 0 < test_fraction < 1):
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    if not (is_int(transpose) and 0 <= transpose <= 12):
        raise ValueError(f"transpose must be an integer number of semitones in [0, 12], got {transpose!r}")
    if not (isinstance(tempo, (list, tuple)) and len(tempo) == 2
            and all(isinstance(x, (int, float)) for x in tempo) and 0 < tempo[0] <= tempo[1]):
        raise ValueError(f"tempo must be (low, high) quarter notes per minute with 0 < low <= high, got {tempo!r}")
    if isinstance(timbres, str) or not isinstance(timbres, (list, tuple)):
        raise ValueError(f"timbres must be a list of names from {list(TIMBRES)} or 'gm:<0-127>', "
                         f"got {timbres!r}")
    unknown = [t for t in timbres if t not in TIMBRES and gm_program(t) is None]
    if not timbres or unknown or len(set(timbres)) != len(timbres):
        raise ValueError(f"timbres must be distinct names from {list(TIMBRES)} or 'gm:<0-127>', "
                         f"got {list(timbres)!r}")


def prepare_music(root: str | Path = "data", num_pieces: int | None = None, clips_per_piece: int = 1,
                  clip_seconds: float = 4.0, test_fraction: float = 0.1, transpose: int = 3,
                  tempo: tuple[float, float] = (80.0, 120.0), timbres: tuple[str, ...] = tuple(TIMBRES),
                  seed: int = 0, progress: bool = True) -> Path:
    """Render the chorales into ``<root>/music/prepared/`` (``prepared-<digest>/`` for other
    than the default settings; skipped when a cache with the same settings exists); returns that
    directory.

    Every piece (``num_pieces`` of them, ``None`` = all, split by :func:`split_pieces`) gives
    ``clips_per_piece`` excerpts of ``clip_seconds`` in every timbre of ``timbres``, each with
    its own transposition (``-transpose..transpose`` semitones), tempo (uniform in ``tempo``,
    quarter notes per minute) and start. Raises ``ValueError`` for a bad setting.
    """
    paths = chorale_paths()
    _check_settings(num_pieces, clips_per_piece, clip_seconds, test_fraction, transpose, tempo, timbres,
                    len(paths))
    tempo, timbres = list(tempo), list(timbres)
    settings = dict(num_pieces=num_pieces, clips_per_piece=clips_per_piece, clip_seconds=float(clip_seconds),
                    test_fraction=float(test_fraction), transpose=int(transpose),
                    tempo=[float(x) for x in tempo], timbres=timbres, split_seed=seed,
                    sample_rate=SAMPLE_RATE, peak=PEAK, num_available=len(paths))
    if any(gm_program(t) is not None for t in timbres):      # which soundfont rendered the GM timbres
        font = require_soundfont()
        settings["soundfont"] = [font.name, font.stat().st_size]
    # the default settings cache under prepared/, any other under prepared-<digest>/ (so a quick
    # slice and the full set live side by side instead of re-rendering each other)
    defaults = inspect.signature(prepare_music).parameters
    is_default = all(defaults[k].default == v for k, v in dict(
        num_pieces=num_pieces, clips_per_piece=clips_per_piece, clip_seconds=clip_seconds,
        test_fraction=test_fraction, transpose=transpose, tempo=tuple(tempo), timbres=tuple(timbres),
        seed=seed).items())
    digest = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]
    out = Path(root) / "music" / ("prepared" if is_default else f"prepared-{digest}")
    if load_arrays(out, **settings) is not None:
        return out
    names = [p.stem for p in paths]
    train_ids, test_ids = split_pieces(names, test_fraction, seed)
    if num_pieces is not None and num_pieces < len(paths):
        n_test = min(len(test_ids), max(1, int(round(test_fraction * num_pieces))))
        train_ids, test_ids = train_ids[:num_pieces - n_test], test_ids[:n_test]
    plan = sorted([(i, "train") for i in train_ids] + [(i, "test") for i in test_ids])
    waves: dict[str, list] = {"train": [], "test": []}
    meta: dict[str, list] = {"train": [], "test": []}    # (timbre, piece, transpose, tempo, start)
    for piece, split in progress_bar(plan, desc="rendering chorales", enabled=progress):
        notes = chorale_notes(paths[piece])
        rng = np.random.default_rng((seed, piece))         # a piece's clips do not depend on num_pieces
        for label, timbre in enumerate(timbres):
            for _ in range(clips_per_piece):
                shift = int(rng.integers(-transpose, transpose + 1))
                qpm = float(rng.uniform(tempo[0], tempo[1]))
                length = float((notes[:, 1] + notes[:, 2]).max()) * 60.0 / qpm
                start = float(rng.uniform(0.0, max(0.0, length - clip_seconds)))
                waves[split].append(synthesize(notes, timbre, tempo=qpm, transpose=shift, start=start,
                                               seconds=clip_seconds, seed=int(rng.integers(2 ** 31))))
                meta[split].append((label, piece, shift, qpm, start))
    arrays = {}
    for split in ("train", "test"):
        m = np.array(meta[split], dtype=np.float64).reshape(-1, 5)
        clips = pack_clips(waves[split], m[:, 0].astype(np.int64), timbres, SAMPLE_RATE)
        arrays.update({f"{split}_audio": clips.audio, f"{split}_offsets": clips.offsets,
                       f"{split}_labels": clips.labels, f"{split}_pieces": m[:, 1].astype(np.int64),
                       f"{split}_transpose": m[:, 2].astype(np.int64), f"{split}_tempo": m[:, 3],
                       f"{split}_start": m[:, 4]})
    save_arrays(out, arrays, classes=timbres, pieces=names, source="music21 corpus (bach)", **settings)
    return out


def load_music(root: str | Path = "data", progress: bool = True, **settings) -> MusicData:
    """Prepare (if needed) and load the music dataset; ``settings`` as :func:`prepare_music`."""
    out = prepare_music(root, progress=progress, **settings)
    arrays, meta = load_arrays(out)
    classes = list(meta["classes"])

    def clips(split: str) -> AudioClips:
        return split_clips(arrays, split, classes, SAMPLE_RATE)
    return MusicData(clips("train"), clips("test"), arrays["train_pieces"], arrays["test_pieces"],
                     list(meta["pieces"]), classes)


def load_music_dataset(name: str, root: str | Path = "data", progress: bool = True, seed: int = 0,
                       **settings) -> MusicData:
    """``"music"`` (the rendered chorales, :func:`load_music` with ``settings``) or
    ``"folder:/path"``: any audio folder, loaded and split by file exactly as for speech
    (:func:`vqgen.data.speech.load_speech_dataset`; only ``test_fraction`` applies).

    Raises ``ValueError`` for another name or a chorale setting given with a folder,
    ``FileNotFoundError`` for a missing folder.
    """
    if name == "music":
        return load_music(root, progress=progress, seed=seed, **settings)
    if not name.startswith("folder:"):
        raise ValueError(f"expected dataset 'music' or 'folder:/path/to/audio', got {name!r}")
    extra = sorted(set(settings) - {"test_fraction"})
    if extra:
        raise ValueError(f"an audio folder takes only test_fraction, got settings {extra}")
    from .speech import load_speech_dataset
    data = load_speech_dataset(name, root, progress=progress, seed=seed, **settings)
    no_piece = np.full(len(data.train) + len(data.test), -1, dtype=np.int64)   # a folder's clips are files
    return MusicData(data.train, data.test, no_piece[:len(data.train)], no_piece[len(data.train):], [],
                     data.classes, data.sample_rate, data.name)
