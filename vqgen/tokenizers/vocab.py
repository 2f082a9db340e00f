"""Subword vocabularies of the text tokenizer: SentencePiece (trained here) or a pretrained one.

Both give the same small interface: ``encode(texts) -> list[list[int]]`` (no end-of-text),
``decode(ids) -> list[str]``, ``pad_id``, ``eos_id``, ``size`` and ``files()`` (name -> bytes,
saved in the tokenizer directory; no pickle).

:class:`SentencePieceVocab` is lossless: byte fallback covers any character, normalisation is the
identity, whitespace is kept as it is, and the one character SentencePiece cannot express as a
piece (U+2581, its own space marker) is written as its three UTF-8 byte pieces. So
``decode(encode(s)) == s`` for every string ``s``. Ids 0, 1, 2 are ``<pad>``, ``<unk>``, ``<eos>``.

:class:`PretrainedVocab` wraps a local Hugging Face tokenizer (``AutoTokenizer``, no downloads):
its own ids, end-of-text = its ``sep`` token (else ``eos``). It is as lossy as that tokenizer
(an uncased model lowercases).
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Iterable

SPM_FILE = "spm.model"
EMBEDDER_PREFIX = "embedder-"      # a pretrained tokenizer's files in the tokenizer directory
_SPACE_MARK = "\u2581"             # SentencePiece's whitespace symbol
MIN_SPM_VOCAB = 300                # 3 specials + 256 byte pieces + a few characters and pieces


def _check_texts(texts: object, who: str) -> list[str]:
    """``texts`` must be a non-empty list/tuple of non-empty strings."""
    if isinstance(texts, str) or not isinstance(texts, (list, tuple)):
        raise ValueError(f"{who} expects a list of strings, got {type(texts).__name__}")
    if not texts:
        raise ValueError(f"{who} expects at least one string, got an empty list")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise ValueError(f"{who} expects strings, got {type(t).__name__} at index {i}")
        if not t:
            raise ValueError(f"{who} expects non-empty strings, got an empty string at index {i}")
    return list(texts)


class SentencePieceVocab:
    """A lossless SentencePiece unigram vocabulary (see module doc)."""

    pad_id, unk_id, eos_id = 0, 1, 2

    def __init__(self, model_proto: bytes):
        import sentencepiece as spm
        self.proto = bytes(model_proto)
        try:
            self.sp = spm.SentencePieceProcessor(model_proto=self.proto)
        except (RuntimeError, OSError) as e:
            raise ValueError(f"not a SentencePiece model ({e}); the file is corrupt") from None
        self._mark_ids = [self.sp.piece_to_id(f"<0x{b:02X}>") for b in _SPACE_MARK.encode()]
        if self.sp.eos_id() != self.eos_id or self.sp.pad_id() != self.pad_id:
            raise ValueError(f"expected a SentencePiece model with pad=0 and eos=2, got "
                             f"pad={self.sp.pad_id()} eos={self.sp.eos_id()}")

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, seed_sentences: int = 200_000
              ) -> "SentencePieceVocab":
        """Train a unigram model of ``vocab_size`` pieces (>= 300) on ``texts``.

        ``hard_vocab_limit`` is off, so a small corpus may give fewer pieces than asked
        (``size`` says how many). Raises ``ValueError`` for a bad size or an empty corpus.
        """
        import sentencepiece as spm
        if not isinstance(vocab_size, int) or vocab_size < MIN_SPM_VOCAB:
            raise ValueError(f"vocab_size must be an int >= {MIN_SPM_VOCAB} (256 byte pieces "
                             f"plus specials), got {vocab_size!r}")
        texts = _check_texts(list(texts) if not isinstance(texts, (list, tuple)) else texts,
                             "SentencePieceVocab.train")
        out = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(" " + t for t in texts), model_writer=out,
                vocab_size=vocab_size, model_type="unigram", byte_fallback=True,
                normalization_rule_name="identity", remove_extra_whitespaces=False,
                add_dummy_prefix=False,  # done by hand (a leading space) so U+2581 can be escaped
                pad_id=cls.pad_id, unk_id=cls.unk_id, eos_id=cls.eos_id, bos_id=-1,
                character_coverage=0.9995, hard_vocab_limit=False, num_threads=1,
                input_sentence_size=seed_sentences, shuffle_input_sentence=True,
                max_sentence_length=1 << 16, minloglevel=2)
        except RuntimeError as e:  # e.g. fewer pieces than the corpus has distinct characters
            raise ValueError(f"cannot train a {vocab_size}-piece SentencePiece vocabulary on "
                             f"{len(texts)} strings: {str(e).splitlines()[0]}") from None
        return cls(out.getvalue())

    @property
    def size(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, texts: list[str]) -> list[list[int]]:
        out = []
        for text in texts:
            ids: list[int] = []
            for i, part in enumerate((" " + text).split(_SPACE_MARK)):
                if i:
                    ids += self._mark_ids
                ids += self.sp.encode(part)
            out.append(ids)
        return out

    def decode(self, ids: list[list[int]]) -> list[str]:
        out = []
        for row in ids:
            text = self.sp.decode([i for i in row if i >= 3])  # drop pad/unk/eos
            out.append(text[1:] if text.startswith(" ") else text)
        return out

    def files(self) -> dict[str, bytes]:
        return {SPM_FILE: self.proto}

    @classmethod
    def load(cls, directory: Path) -> "SentencePieceVocab":
        path = Path(directory) / SPM_FILE
        if not path.is_file():
            raise FileNotFoundError(f"expected the SentencePiece vocabulary at {path}, found none")
        return cls(path.read_bytes())


class PretrainedVocab:
    """A local Hugging Face tokenizer (``AutoTokenizer.from_pretrained(path)``, offline)."""

    def __init__(self, path: str | Path):
        from transformers import AutoTokenizer
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"expected a local transformers model directory at {path}")
        try:
            self.tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot load a transformers tokenizer from {path}: {e}") from None
        eos = self.tok.sep_token_id if self.tok.sep_token_id is not None else self.tok.eos_token_id
        if eos is None:
            raise ValueError(f"the tokenizer at {path} has neither a sep nor an eos token; "
                             f"one is needed as end-of-text")
        self.eos_id = int(eos)
        pad = self.tok.pad_token_id
        self.pad_id = int(pad) if pad is not None else self.eos_id
        self._special = set(self.tok.all_special_ids)

    @property
    def size(self) -> int:
        return len(self.tok)

    def encode(self, texts: list[str]) -> list[list[int]]:
        return [list(ids) for ids in self.tok(list(texts), add_special_tokens=False)["input_ids"]]

    def decode(self, ids: list[list[int]]) -> list[str]:
        return [self.tok.decode([i for i in row if i not in self._special],
                                clean_up_tokenization_spaces=True) for row in ids]

    def files(self) -> dict[str, bytes]:
        """The tokenizer's files, flat, each name prefixed with ``embedder-``."""
        import tempfile
        with tempfile.TemporaryDirectory() as tmp:
            self.tok.save_pretrained(tmp)
            return {f"{EMBEDDER_PREFIX}{p.name}": p.read_bytes()
                    for p in sorted(Path(tmp).iterdir()) if p.is_file()}

    @classmethod
    def load(cls, directory: Path) -> "PretrainedVocab":
        """Load the files written by :meth:`files` from a tokenizer directory."""
        import tempfile
        files = sorted(Path(directory).glob(f"{EMBEDDER_PREFIX}*"))
        if not files:
            raise FileNotFoundError(f"expected the embedder's tokenizer files "
                                    f"({EMBEDDER_PREFIX}*) in {directory}, found none")
        with tempfile.TemporaryDirectory() as tmp:
            for f in files:
                (Path(tmp) / f.name[len(EMBEDDER_PREFIX):]).write_bytes(f.read_bytes())
            return cls(tmp)
