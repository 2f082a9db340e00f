# `make demo` and `make test` each bootstrap .venv on a fresh machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP := $(BIN)/pip install --disable-pip-version-check -c constraints.txt

.PHONY: demo test venv bench clean data

venv: $(STAMP)

# The last install is GM soundfont rendering for music (vqgen/data/soundfont.py): tinysoundfont
# renders offline and pretty_midi only supplies its small GM soundfont; --no-deps skips
# tinysoundfont's pyaudio (live playback only, needs portaudio headers to build) and pretty_midi's
# MIDI libraries.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q --upgrade pip
	$(PIP) -q -e '.[dev,data]'
	$(PIP) -q --no-deps tinysoundfont pretty_midi
	touch $(STAMP)

# Fashion-MNIST from Debian (offline-friendly); skipped silently where apt is unavailable.
data:
	@test -d /usr/share/datasets/fashion-mnist || test -d data/fashion-mnist || \
	  { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; } || \
	  echo "note: Fashion-MNIST not installed; the demo falls back to scikit-learn digits"
	@test -d /usr/share/games/fortunes || test -d data/fortunes || \
	  { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q fortunes >/dev/null 2>&1; } || \
	  echo "note: fortunes not installed; the text demo falls back to Python's pydoc topics"


demo: $(STAMP) data
	@if [ -n "$$(ls data/fashion-mnist/train-images-idx3-ubyte* /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte* 2>/dev/null)" ]; then \
	  $(BIN)/python recipes/image.py --preset quick $(DEMO_ARGS); \
	else \
	  echo "Fashion-MNIST not found: running the image demo on scikit-learn digits"; \
	  $(BIN)/python recipes/image.py --preset quick dataset=digits name=image-quick-digits $(DEMO_ARGS); \
	fi
	$(BIN)/python recipes/speech.py --preset quick $(SPEECH_DEMO_ARGS)
	$(BIN)/python recipes/music.py --preset quick $(MUSIC_DEMO_ARGS)
	$(BIN)/python recipes/text.py --preset quick $(TEXT_DEMO_ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest tests

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_quantizer.py
	$(BIN)/python benchmarks/bench_priors.py

clean:
	rm -rf $(VENV) runs *.egg-info
