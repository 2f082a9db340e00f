"""TextTokenizer: vocabulary round trip, shapes, end-of-text, save/load, embedder path, errors."""
from __future__ import annotations

import json

import pytest
import torch

from vqgen.data.text import load_text_dataset
from vqgen.tokenizers.text import TextCodes, TextTokenizer, text_tokenizer_debug
from vqgen.tokenizers.vocab import SentencePieceVocab

UNICODE = ["héllo wörld, ça va?", "日本語のテキストと中文", "emoji 😀👍🏽 🇫🇷", "ctrl\x00\x01\x7f\t\n\r end",
           "  spaces   kept  ", "a\u2581b \u2581", "e\u0301 \ufb01 \u200b\ufeff", "x"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[str]:
    data = load_text_dataset("pydoc", root=tmp_path_factory.mktemp("data"))
    return data.train_texts[:400]


@pytest.fixture(scope="module")
def tokenizer(corpus) -> TextTokenizer:
    torch.manual_seed(0)
    tok = text_tokenizer_debug(corpus, max_tokens=24)
    opt = torch.optim.AdamW(tok.parameters(), 3e-3)
    ids, _ = tok.tokenize([t[:40] for t in corpus[:32]])
    tok.train()
    for _ in range(5):  # a few steps so the codebook is initialised (k-means)
        out = tok(ids)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    return tok.eval()


def test_sentencepiece_round_trips_arbitrary_unicode(tokenizer):
    vocab = tokenizer.vocab
    ids = vocab.encode(UNICODE)
    assert all(0 <= i < vocab.size for row in ids for i in row)
    assert vocab.decode(ids) == UNICODE
    # the stored model reproduces the same ids
    again = SentencePieceVocab(vocab.files()["spm.model"])
    assert again.encode(UNICODE) == ids


def test_tokenize_appends_end_of_text_and_pads(tokenizer):
    ids, lengths = tokenizer.tokenize(["hello world", "a"])
    rows = tokenizer.vocab.encode(["hello world", "a"])
    assert lengths.tolist() == [len(rows[0]) + 1, len(rows[1]) + 1]
    assert ids.shape[1] % tokenizer.shorten == 0
    assert ids[0, lengths[0] - 1] == tokenizer.eos_id
    assert ids[1, :lengths[1] - 1].tolist() == rows[1]
    assert (ids[1, lengths[1]:] == tokenizer.pad_id).all()


def test_encode_decode_shapes_and_lengths(tokenizer):
    texts = ["short", "a longer line"]
    codes = tokenizer.encode(texts)
    assert isinstance(codes, TextCodes)
    _, lengths = tokenizer.tokenize(texts)
    frames = (lengths + tokenizer.shorten - 1) // tokenizer.shorten
    assert codes.codes.shape == (2, tokenizer.num_codebooks, int(frames.max()))
    assert codes.lengths.tolist() == frames.tolist()
    assert codes.codes.dtype == torch.long
    assert 0 <= int(codes.codes.min()) and int(codes.codes.max()) < tokenizer.codebook_size
    padded = tokenizer.encode(texts, frames=tokenizer.max_frames)
    assert padded.codes.shape[-1] == tokenizer.max_frames
    one = tokenizer.encode(texts, num_codebooks=1)
    assert one.codes.shape == (2, 1, int(frames.max()))
    assert torch.equal(one.codes[:, 0], codes.codes[:, 0])  # leading levels agree
    out = tokenizer.decode(codes)
    assert isinstance(out, list) and len(out) == 2 and all(isinstance(s, str) for s in out)
    assert tokenizer.bits_per_token(1) == pytest.approx(4 / 2)  # log2(16) / shorten 2


def test_decode_without_lengths_stops_at_end_of_text(tokenizer, monkeypatch):
    eos, vocab = tokenizer.eos_id, tokenizer.vocab
    word = vocab.encode(["in"])[0]
    t = tokenizer.max_frames * tokenizer.shorten
    pred = torch.full((1, t), word[-1])
    pred[0, :len(word)] = torch.tensor(word)
    pred[0, len(word)] = eos  # everything after the first end-of-text is dropped
    monkeypatch.setattr(tokenizer, "decode_ids", lambda codes: pred)
    codes = torch.zeros(1, tokenizer.num_codebooks, tokenizer.max_frames, dtype=torch.long)
    assert tokenizer.decode(codes) == ["in"]
    # with lengths, a string also ends after its frames
    assert tokenizer.decode(codes, lengths=torch.tensor([1]))[0] == vocab.decode([pred[0, :2].tolist()])[0]


def test_forward_trains_towards_reconstruction(corpus):
    torch.manual_seed(0)
    tok = text_tokenizer_debug(corpus, max_tokens=16, codebook_size=64, num_codebooks=2,
                               quantizer_dropout=0.0)
    texts = [t for t in corpus if len(tok.vocab.encode([t])[0]) <= 16][:8]
    ids, _ = tok.tokenize(texts)
    opt = torch.optim.AdamW(tok.parameters(), 3e-3)
    tok.train()
    first = None
    for _ in range(60):
        out = tok(ids)
        first = first if first is not None else float(out.metrics["recon_loss"])
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    assert out.recon.shape == (*ids.shape, tok.config.vocab_size)
    assert out.codes.shape == (len(texts), 2, ids.shape[1] // tok.shorten)
    assert float(out.metrics["recon_loss"]) < 0.5 * first


def test_save_load_round_trip_with_vocabulary(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path / "tok")
    assert (tmp_path / "tok" / "spm.model").is_file()
    loaded = TextTokenizer.from_pretrained(tmp_path / "tok")
    assert loaded.vocab.encode(UNICODE) == tokenizer.vocab.encode(UNICODE)
    texts = ["round trip", "of the vocabulary"]
    a, b = tokenizer.encode(texts), loaded.encode(texts)
    assert torch.equal(a.codes, b.codes)
    assert tokenizer.decode(a) == loaded.decode(b)
    (tmp_path / "tok" / "spm.model").unlink()
    with pytest.raises(FileNotFoundError, match="spm.model"):
        TextTokenizer.from_pretrained(tmp_path / "tok")


@pytest.mark.parametrize("bad, match", [
    ([""], "empty string"), ([], "at least one"), ("a string", "list of strings"),
    ([3], "got int"), (["ok", None], "NoneType"),
])
def test_bad_text_raises(tokenizer, bad, match):
    with pytest.raises(ValueError, match=match):
        tokenizer.encode(bad)


def test_bad_codes_raise(tokenizer):
    good = tokenizer.encode(["fine"]).codes
    with pytest.raises(ValueError, match="out of range"):
        tokenizer.decode(good + tokenizer.codebook_size)
    with pytest.raises(ValueError, match="integer"):
        tokenizer.decode(good.float())
    with pytest.raises(ValueError, match="levels"):
        tokenizer.decode(torch.zeros(1, tokenizer.num_codebooks + 1, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="num_codebooks"):
        tokenizer.encode(["x"], num_codebooks=tokenizer.num_codebooks + 1)


def test_long_input_is_truncated_with_warning(tokenizer):
    long = " ".join(["word"] * 200)
    with pytest.warns(UserWarning, match="truncated"):
        codes = tokenizer.encode([long])
    assert codes.codes.shape[-1] == tokenizer.max_frames


def test_pretrained_embedder_path(tmp_path, corpus):
    """A tiny random BERT + its WordPiece tokenizer saved to a temp dir stand in for MiniLM."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast
    words = sorted({w for t in corpus[:200] for w in t.lower().split()})[:300]
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]",
                                     cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    path = tmp_path / "tiny-bert"
    hf_tok.save_pretrained(path)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=32)).save_pretrained(path)

    tok = TextTokenizer.from_corpus(corpus[:50], None, embedder=str(path), max_tokens=16,
                                    shorten=2, dim=32, frame_dim=32, heads=2, frame_layers=1,
                                    latent_dim=8, codebook_size=8, num_codebooks=2)
    assert tok.config.vocab_size == len(vocab)
    assert not any(p.requires_grad for p in tok.embedder.parameters())
    frozen = {k: v.clone() for k, v in tok.embedder.state_dict().items()}
    ids, _ = tok.tokenize(["the object", "a class"])
    assert int(ids[0, 2]) == tok.eos_id == vocab["[SEP]"] or int(ids[0, 1]) == tok.eos_id
    out = tok(ids)
    out.loss.backward()
    assert tok.embed_in.weight.grad is not None
    assert all(torch.equal(v, tok.embedder.state_dict()[k]) for k, v in frozen.items())
    tok.eval()
    codes = tok.encode(["the object"])
    tok.save_pretrained(tmp_path / "tok")
    loaded = TextTokenizer.from_pretrained(tmp_path / "tok")
    assert json.loads((tmp_path / "tok" / "config.json").read_text())["config"]["embedder_config"]
    assert torch.equal(loaded.encode(["the object"]).codes, codes.codes)
    assert loaded.decode(codes) == tok.decode(codes)
    with pytest.raises(ValueError, match="vocab_size"):
        TextTokenizer.from_corpus(corpus[:5], 999, embedder=str(path))
    with pytest.raises(FileNotFoundError):
        TextTokenizer.from_corpus(corpus[:5], None, embedder=str(tmp_path / "missing"))
