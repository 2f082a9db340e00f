"""General MIDI soundfont rendering of note lists (optional: the ``tinysoundfont`` package).

A *GM timbre* is named ``"gm:<program>"`` (``program`` 0-127, General MIDI numbering from 0:
``gm:19`` church organ, ``gm:48`` string ensemble, ``gm:24`` nylon guitar, ``gm:68`` oboe).
:func:`render_gm` plays notes ``(pitch, onset, duration)`` in quarter lengths through that
program of a soundfont and returns mono float32 audio, the same contract as
:func:`vqgen.data.music.synthesize`, so the music data can use GM programs as timbres.

The soundfont is ``$VQGEN_SOUNDFONT`` when set, else the small GM soundfont that the
``pretty_midi`` package ships (``TimGM6mb.sf2``; only the file is used, pretty_midi is never
imported). Install both without their audio-playback dependencies (``make venv`` does)::

    pip install --no-deps tinysoundfont pretty_midi

Rendering is offline and deterministic (a fresh synthesiser per clip; no randomness).
"""
from __future__ import annotations

import importlib.util
import os
from functools import lru_cache
from pathlib import Path

import numpy as np

__all__ = ["GM_PREFIX", "gm_program", "find_soundfont", "soundfont_available", "require_soundfont", "render_gm"]

GM_PREFIX = "gm:"
VELOCITY = 90


def gm_program(timbre: str) -> int | None:
    """``"gm:19"`` -> 19; ``None`` for a name without the ``gm:`` prefix. Raises ``ValueError``
    for a ``gm:`` name whose program is not an int in 0-127."""
    if not isinstance(timbre, str) or not timbre.startswith(GM_PREFIX):
        return None
    text = timbre[len(GM_PREFIX):]
    if not text.isdigit() or not 0 <= int(text) <= 127:
        raise ValueError(f"expected a General MIDI timbre 'gm:<0-127>', got {timbre!r}")
    return int(text)


def find_soundfont() -> Path | None:
    """The soundfont file to use (``$VQGEN_SOUNDFONT``, else pretty_midi's), or ``None``."""
    env = os.environ.get("VQGEN_SOUNDFONT")
    if env:
        return Path(env)
    spec = importlib.util.find_spec("pretty_midi")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "TimGM6mb.sf2"
    return path if path.is_file() else None


def soundfont_available() -> bool:
    """True when GM timbres can be rendered here (tinysoundfont and a soundfont file)."""
    try:
        require_soundfont()
    except ValueError:
        return False
    return True


@lru_cache(maxsize=2)
def _soundfont_bytes(path: str) -> bytes:
    return Path(path).read_bytes()


def require_soundfont() -> Path:
    """The soundfont path; ``ValueError`` naming what to install when GM timbres cannot render."""
    if importlib.util.find_spec("tinysoundfont") is None:
        raise ValueError("GM timbres ('gm:<program>') need the tinysoundfont package: "
                         "pip install --no-deps tinysoundfont pretty_midi")
    path = find_soundfont()
    if path is None or not path.is_file():
        raise ValueError(f"GM timbres need a soundfont file: set VQGEN_SOUNDFONT or install pretty_midi "
                         f"(pip install --no-deps pretty_midi); got {path or 'none found'}")
    return path


def render_gm(notes: np.ndarray, program: int, *, tempo: float, transpose: float, start: float,
              seconds: float, sample_rate: int, peak: float) -> np.ndarray:
    """Render ``notes`` (``(n, 3)`` pitch, onset, duration in quarter lengths; validated by the
    caller) through GM ``program`` at ``tempo`` quarter notes per minute, ``transpose``
    semitones up; returns float32 ``(round(seconds * sample_rate),)`` from ``start`` seconds,
    stereo averaged to mono, peak-normalised to ``peak`` (silence stays zeros)."""
    import tinysoundfont

    path = require_soundfont()
    synth = tinysoundfont.Synth(samplerate=sample_rate)
    sfid = synth.sfload(_soundfont_bytes(str(path)))
    synth.program_select(0, sfid, 0, int(program))
    sec_per_q = 60.0 / tempo
    end = start + seconds
    events = []                                           # (sample, order, key): note-offs first
    for pitch, onset, dur in np.asarray(notes, dtype=np.float64):
        on, off = onset * sec_per_q, (onset + dur) * sec_per_q
        if on >= end:
            continue
        key = int(np.clip(round(pitch + transpose), 0, 127))
        events.append((int(round(on * sample_rate)), 1, key))
        events.append((int(round(off * sample_rate)), 0, key))
    events.sort()
    total = int(round(end * sample_rate))
    chunks, pos = [], 0
    for at, is_on, key in events:
        at = min(at, total)
        if at > pos:
            chunks.append(np.frombuffer(synth.generate(at - pos), dtype=np.float32))
            pos = at
        if is_on:
            synth.noteon(0, key, VELOCITY)
        else:
            synth.noteoff(0, key)
    if total > pos:
        chunks.append(np.frombuffer(synth.generate(total - pos), dtype=np.float32))
    stereo = np.concatenate(chunks) if chunks else np.zeros(2 * total, dtype=np.float32)
    mono = stereo.reshape(-1, 2).mean(1, dtype=np.float64)
    first = int(round(start * sample_rate))
    out = np.zeros(int(round(seconds * sample_rate)), dtype=np.float64)
    piece = mono[first:first + len(out)]
    out[:len(piece)] = piece
    top = np.abs(out).max()
    if top > 0:
        out *= peak / top
    return out.astype(np.float32)
