"""Music data: the multi-timbre synthesiser, chorale parsing, the split by piece, the cache,
audio folders. Parses three chorales in all (a few seconds)."""
import importlib.util

import numpy as np
import pytest
import soundfile as sf

from vqgen.data.cache import load_arrays
from vqgen.data.music import (PEAK, TIMBRES, chorale_notes, chorale_paths, load_music_dataset,
                              prepare_music, split_pieces, synthesize)
from vqgen.data.soundfont import gm_program, soundfont_available

pytestmark = pytest.mark.skipif(importlib.util.find_spec("music21") is None,
                                reason="music21 is not installed (pip install music21)")
SR = 16000
TINY = dict(num_pieces=2, clips_per_piece=1, clip_seconds=1.0, timbres=("organ", "plucked"))


@pytest.fixture(scope="module")
def names():
    return [p.stem for p in chorale_paths()]


@pytest.fixture(scope="module")
def test_piece(names):
    """(index, notes) of the piece TINY holds out: the first test piece of seed 0."""
    i = split_pieces(names, 0.1, seed=0)[1][0]
    return i, chorale_notes(chorale_paths()[i])


def _features(name: str) -> dict:
    """Harmonic and envelope measures of one A3 (220 Hz) held for 2 s (two quarters at 60 qpm)."""
    w = synthesize(np.array([[57.0, 0.0, 2.0]]), name, tempo=60, seconds=2.5).astype(np.float64)
    seg = w[int(0.4 * SR):int(1.4 * SR)]                                 # 1 s: bin k*220 = harmonic k
    spec = np.abs(np.fft.rfft(seg * np.hanning(len(seg))))
    h = np.array([spec[220 * k] for k in range(1, 21)])
    frames = np.sqrt((w[:2 * SR].reshape(-1, 160) ** 2).mean(1))        # 10 ms RMS frames
    freqs = np.fft.rfftfreq(len(seg), 1 / SR)

    def rms(a, b):
        return np.sqrt((w[int(a * SR):int(b * SR)] ** 2).mean())
    return dict(odd_even=(h[0::2] ** 2).sum() / (h[1::2] ** 2).sum(), centroid=(spec * freqs).sum() / spec.sum(),
                late_early=rms(1.5, 1.9) / rms(0.05, 0.4), rise=np.argmax(frames >= 0.9 * frames.max()) * 0.01,
                peak_hz=freqs[np.argmax(spec)], tail=np.abs(w[int(2.3 * SR):]).max())


def test_note_pitch_tempo_and_transposition_are_exact():
    note = np.array([[69.0, 1.0, 1.0]])          # A4 on beat 2 for one quarter
    for shift, hz in ((0, 440.0), (3, 440.0 * 2 ** (3 / 12))):
        w = synthesize(note, "organ", tempo=120, transpose=shift, seconds=2.0)
        spec = np.abs(np.fft.rfft(w[8000:16000]))                        # 0.5 s: 2 Hz bins
        assert abs(np.fft.rfftfreq(8000, 1 / SR)[np.argmax(spec)] - hz) <= 2.0
        assert np.abs(w[:8000]).max() == 0                               # onset at 0.5 s (120 qpm)
        release_end = int((1.0 + TIMBRES["organ"].release) * SR) + 1
        assert np.abs(w[8000:8200]).max() > 0 and np.abs(w[release_end:]).max() == 0
        assert np.abs(w).max() == pytest.approx(PEAK, abs=1e-6)


def test_chorale_rendering_is_deterministic_finite_and_audible(test_piece):
    _, notes = test_piece
    assert notes.shape[1] == 3 and len(notes) > 50 and (notes[:, 2] > 0).all()
    assert 30 <= notes[:, 0].min() and notes[:, 0].max() <= 90 and np.all(np.diff(notes[:, 1]) >= 0)
    for name in TIMBRES:
        w = synthesize(notes, name, tempo=100, transpose=-2, start=1.0, seconds=2.5, seed=7)
        assert w.dtype == np.float32 and w.shape == (int(2.5 * SR),) and np.isfinite(w).all()
        assert np.array_equal(w, synthesize(notes, name, tempo=100, transpose=-2, start=1.0, seconds=2.5, seed=7))
        assert np.abs(w).max() == pytest.approx(PEAK, abs=1e-6)
        assert np.sqrt((w ** 2).mean()) > 0.05 and (np.abs(w) < 1e-3).mean() < 0.1, name
        other = synthesize(notes, name, tempo=90, transpose=-2, start=1.0, seconds=2.5, seed=7)
        assert not np.allclose(w, other, atol=1e-3)                     # tempo matters
    # the seed sets vibrato phases: it changes strings, not the vibrato-free organ
    strings = [synthesize(notes, "strings", seconds=1.0, seed=s) for s in (0, 1)]
    assert not np.allclose(*strings, atol=1e-3)
    assert np.array_equal(*[synthesize(notes, "organ", seconds=1.0, seed=s) for s in (0, 1)])


def test_timbres_differ_measurably():
    f = {name: _features(name) for name in ("organ", "strings", "plucked", "reed")}
    for name, x in f.items():
        assert abs(x["peak_hz"] - 220) <= 1 and x["tail"] == 0, name
    assert f["reed"]["odd_even"] > 50 > max(f[n]["odd_even"] for n in ("organ", "strings", "plucked"))
    assert f["plucked"]["late_early"] < 0.3 < 0.8 < min(f[n]["late_early"] for n in ("organ", "strings", "reed"))
    assert f["strings"]["rise"] >= 0.1 and f["organ"]["rise"] <= 0.03       # slow bow vs instant pipe
    centroids = sorted(x["centroid"] for x in f.values())
    assert all(b / a > 1.15 for a, b in zip(centroids, centroids[1:])), centroids


def test_split_is_by_piece_seeded_and_keeps_variants_together(names):
    train, test = split_pieces(names, 0.1, seed=0)
    assert len(names) > 350 and sorted(train + test) == list(range(len(names))) and not set(train) & set(test)
    assert 0.07 < len(test) / len(names) < 0.13
    side = {}
    for i in train + test:
        side.setdefault(names[i].split("-")[0], set()).add(i in test)
    assert all(len(s) == 1 for s in side.values())                      # bwv18.5-lz / -w together
    assert (train, test) == split_pieces(names, 0.1, seed=0)
    assert set(test) != set(split_pieces(names, 0.1, seed=1)[1])


def test_prepare_load_round_trip(tmp_path, test_piece, monkeypatch):
    data = load_music_dataset("music", root=tmp_path, progress=False, seed=0, **TINY)
    assert data.classes == ["organ", "plucked"] and len(data.train) == 2 and len(data.test) == 2
    assert not set(data.train_pieces.tolist()) & set(data.test_pieces.tolist())
    piece, notes = test_piece
    assert data.test_pieces.tolist() == [piece, piece] and data.test.labels.tolist() == [0, 1]
    for clips in (data.train, data.test):
        assert clips.audio.dtype == np.int16 and np.diff(clips.offsets).tolist() == [SR] * 2
        assert np.abs(clips.clip(0).numpy()).max() == pytest.approx(PEAK, abs=1e-3)
    # the stored clips are what synthesize gives for the recorded augmentation
    cache = prepare_music(tmp_path, progress=False, seed=0, **TINY)   # non-default: its own folder
    assert cache.parent == tmp_path / "music" and cache.name.startswith("prepared-")
    arrays, meta = load_arrays(cache)
    assert meta["pieces"][piece] in {p.stem for p in chorale_paths()} and meta["classes"] == data.classes
    assert abs(arrays["test_transpose"]).max() <= 3
    assert ((80 <= arrays["test_tempo"]) & (arrays["test_tempo"] <= 120)).all()
    for j, name in enumerate(data.classes):          # organ and plucked have no vibrato: seed-free
        w = synthesize(notes, name, tempo=arrays["test_tempo"][j], transpose=arrays["test_transpose"][j],
                       start=arrays["test_start"][j], seconds=1.0)
        assert np.abs(data.test.clip(j).numpy() - w).max() < 1e-4
    # a second load reads the cache without parsing or rendering anything
    monkeypatch.setattr("vqgen.data.music.chorale_notes", lambda *a: pytest.fail("re-rendered"))
    again = load_music_dataset("music", root=tmp_path, progress=False, seed=0, **TINY)
    assert again.train.audio.tobytes() == data.train.audio.tobytes()
    # other settings render into their own folder (notes stubbed: no third parse); both stay
    monkeypatch.setattr("vqgen.data.music.chorale_notes", lambda *a: notes)
    shorter = load_music_dataset("music", root=tmp_path, progress=False, seed=0, **{**TINY, "clip_seconds": 0.5})
    assert np.diff(shorter.test.offsets).tolist() == [SR // 2] * 2
    assert len(list((tmp_path / "music").glob("prepared-*/manifest.json"))) == 2
    monkeypatch.setattr("vqgen.data.music.chorale_notes", lambda *a: pytest.fail("re-rendered"))
    assert load_music_dataset("music", root=tmp_path, progress=False, seed=0, **TINY).train.audio.tobytes() \
        == data.train.audio.tobytes()


@pytest.mark.parametrize("settings, match", [
    (dict(num_pieces=1), "num_pieces"), (dict(num_pieces=10_000), "num_pieces"),
    (dict(clips_per_piece=0), "clips_per_piece"), (dict(clip_seconds=0), "clip_seconds"),
    (dict(test_fraction=1.0), "test_fraction"), (dict(transpose=-1), "transpose"),
    (dict(tempo=(120, 80)), "tempo"), (dict(tempo=100), "tempo"),
    (dict(timbres=("organ", "violin")), "timbres"), (dict(timbres="organ"), "timbres"),
    (dict(timbres=("organ", "gm:128")), "gm:<0-127>"), (dict(timbres=("organ", "gm:x")), "gm:<0-127>"),
])
def test_bad_settings_raise(tmp_path, settings, match):
    with pytest.raises(ValueError, match=match):
        prepare_music(tmp_path, progress=False, **settings)
    assert not (tmp_path / "music").exists()


def test_bad_names_and_synth_arguments(tmp_path):
    with pytest.raises(ValueError, match="'music' or 'folder:"):
        load_music_dataset("chorales")
    with pytest.raises(ValueError, match="violin"):
        synthesize(np.zeros((1, 3)), "violin")
    with pytest.raises(ValueError, match=r"\(n, 3\)"):
        synthesize(np.zeros(3), "organ")
    with pytest.raises(ValueError, match="tempo"):
        synthesize(np.zeros((1, 3)), "organ", tempo=0)


needs_soundfont = pytest.mark.skipif(not soundfont_available(),
                                     reason="no GM renderer: pip install --no-deps tinysoundfont pretty_midi")


@needs_soundfont
def test_gm_soundfont_timbres_render_chorales(test_piece, tmp_path, monkeypatch):
    """General MIDI programs as timbres: deterministic, finite, audible, the expected length,
    the right pitch, and programs that differ; prepared data caches them under their own digest."""
    _, notes = test_piece
    assert gm_program("gm:19") == 19 and gm_program("organ") is None
    renders = {}
    for name in ("gm:19", "gm:24"):                                    # church organ, nylon guitar
        w = synthesize(notes, name, tempo=100, transpose=-2, start=1.0, seconds=2.5)
        assert w.dtype == np.float32 and w.shape == (int(2.5 * SR),) and np.isfinite(w).all()
        assert np.array_equal(w, synthesize(notes, name, tempo=100, transpose=-2, start=1.0, seconds=2.5))
        assert np.abs(w).max() == pytest.approx(PEAK, abs=1e-6) and np.sqrt((w ** 2).mean()) > 0.03, name
        renders[name] = w
    assert not np.allclose(renders["gm:19"], renders["gm:24"], atol=1e-2)
    note = np.array([[69.0, 1.0, 1.0]])                                # A4 from 0.5 s (120 qpm)
    w = synthesize(note, "gm:19", tempo=120, transpose=3, seconds=1.5)
    spec = np.abs(np.fft.rfft(w[8800:16800]))                          # 0.5 s: 2 Hz bins
    freqs, f0 = np.fft.rfftfreq(8000, 1 / SR), 440.0 * 2 ** (3 / 12)   # C5, 523 Hz
    band = (freqs > 300) & (freqs < 800)                               # one octave around f0
    assert abs(freqs[band][np.argmax(spec[band])] - f0) <= 3.0
    strongest = freqs[np.argmax(spec)] / f0                            # any peak is a harmonic
    assert abs(strongest - round(strongest)) < 0.02
    assert np.abs(w[:7900]).max() == 0                                 # silent before the onset
    monkeypatch.setattr("vqgen.data.music.chorale_notes", lambda *a: notes)
    data = load_music_dataset("music", root=tmp_path, progress=False, seed=0,
                              **{**TINY, "timbres": ("gm:19", "organ")})
    assert data.classes == ["gm:19", "organ"] and len(data.train) == 2
    manifest = next((tmp_path / "music").glob("prepared-*/manifest.json")).read_text()
    assert "TimGM6mb.sf2" in manifest or "soundfont" in manifest


def test_gm_timbre_without_a_soundfont_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("VQGEN_SOUNDFONT", str(tmp_path / "missing.sf2"))
    with pytest.raises(ValueError, match="soundfont"):
        prepare_music(tmp_path, progress=False, **{**TINY, "timbres": ("gm:19", "organ")})
    with pytest.raises(ValueError, match="soundfont"):
        synthesize(np.array([[60.0, 0.0, 1.0]]), "gm:19", seconds=1.0)


def test_audio_folder_as_for_speech(tmp_path):
    for inst, rate in (("cello", 16000), ("flute", 8000), ("flute", 22050)):
        d = tmp_path / "corpus" / inst
        d.mkdir(parents=True, exist_ok=True)
        sf.write(d / f"{rate}.wav", 0.1 * np.random.default_rng(rate).standard_normal(rate // 2), rate)
    data = load_music_dataset(f"folder:{tmp_path / 'corpus'}", test_fraction=0.3, seed=0)
    assert data.classes == ["cello", "flute"] and (len(data.train), len(data.test)) == (2, 1)
    assert data.name == "corpus" and (data.train_pieces == -1).all() and len(data.test_pieces) == 1
    with pytest.raises(ValueError, match="only test_fraction"):
        load_music_dataset(f"folder:{tmp_path / 'corpus'}", num_pieces=3)
    with pytest.raises(FileNotFoundError):
        load_music_dataset(f"folder:{tmp_path / 'missing'}")
