"""PromptEncoder and the shipped sentencepiece tokenizer."""

import hashlib
import json
import re

import pytest
import sentencepiece as spm
import torch

from latentfuse.model.data.prompts import corpus
from latentfuse.model.errors import LatentfuseError
from latentfuse.model.text_encoder import SHIPPED_SPIECE, PromptEncoder, SpieceTokenizer

PROMPTS = ["remove the rain", "please fuse the visible and infrared images, then remove the noise", ""]


@pytest.fixture(scope="module")
def encoder():
    return PromptEncoder.from_preset("tiny", seed=0).eval()


@pytest.fixture(scope="module")
def train_script():
    from latentfuse.model.training import tokenizer

    return tokenizer


def test_tiny_preset(encoder):
    cfg = encoder.config
    assert encoder.hidden_size == 128 and cfg.num_layers == 2 and cfg.num_heads == 4 and cfg.d_ff == 256
    assert cfg.feed_forward_proj == "gated-gelu" and cfg._attn_implementation == "eager"
    assert cfg.vocab_size == encoder.tokenizer.vocab_size
    assert encoder.max_length == 128


def test_batched_encode_masks_padding_and_matches_single_prompts(encoder):
    embeds, mask = encoder.encode(PROMPTS)
    lengths = [len(encoder.tokenizer.ids(p)) for p in PROMPTS]
    assert embeds.shape == (3, max(lengths), 128) and mask.dtype == torch.int64
    assert mask.sum(1).tolist() == lengths
    assert embeds[mask == 0].abs().max() == 0  # padded positions carry nothing
    for i, prompt in enumerate(PROMPTS):
        alone, alone_mask = encoder.encode([prompt])
        assert alone.shape[1] == lengths[i] and bool(alone_mask.all())
        torch.testing.assert_close(embeds[i, : lengths[i]], alone[0], rtol=0, atol=1e-5)


def test_fixed_length_padding(encoder):
    ids, mask = encoder.tokenize(PROMPTS, max_length=32)
    assert ids.shape == mask.shape == (3, 32)
    assert (ids[mask == 0] == 0).all() and (ids[0, mask[0].sum() - 1] == 1)
    embeds, _ = encoder.encode(PROMPTS, max_length=32)
    short, _ = encoder.encode(PROMPTS)
    torch.testing.assert_close(embeds[:, : short.shape[1]], short, rtol=0, atol=1e-5)
    with pytest.raises(LatentfuseError, match="exceeds"):
        encoder.tokenize(PROMPTS, max_length=1000)


def test_ids_equal_raw_sentencepiece_on_whole_corpus(encoder):
    """The C++ host reproduces these ids with libsentencepiece: encode(text) + [eos=1]."""
    raw = spm.SentencePieceProcessor(model_file=str(SHIPPED_SPIECE))
    prompts = corpus()
    assert len(prompts) > 100
    for start in range(0, len(prompts), 256):
        batch = prompts[start:start + 256]
        ids, mask = encoder.tokenize(batch)
        for row, m, prompt in zip(ids.tolist(), mask.tolist(), batch):
            assert row[: sum(m)] == raw.encode(prompt) + [1], prompt
    assert not any(raw.unk_id() in raw.encode(p) for p in prompts)


def test_saved_folder_reads_as_transformers_t5_tokenizer(encoder, tmp_path):
    """transformers' own T5Tokenizer, converted from the saved spiece.model, agrees on the corpus."""
    from transformers import AutoTokenizer

    encoder.save_pretrained(tmp_path / "te")
    hf = AutoTokenizer.from_pretrained(tmp_path / "te")
    assert len(hf) == encoder.tokenizer.vocab_size
    mismatched = [p for p in corpus() if hf(p)["input_ids"] != encoder.tokenizer.ids(p)]
    assert not mismatched, mismatched[:3]


@pytest.mark.parametrize("text", ["héllo wörld", "雨と雪を除去して 🌧", "fuse THE images!!", "a\ttab  and  spaces"])
def test_free_text_tokenizes_without_unknowns(encoder, text):
    ids, mask = encoder.tokenize([text])
    row = ids[0, : mask[0].sum()].tolist()
    assert encoder.tokenizer.unk_id not in row and row[-1] == 1
    assert encoder.tokenizer.decode(row) == " ".join(text.split())  # byte fallback is lossless
    embeds, _ = encoder.encode([text])
    assert torch.isfinite(embeds).all()


def test_too_long_prompt(encoder):
    long = " ".join(["remove the rain"] * 60)
    with pytest.raises(LatentfuseError, match=r"'remove the rain remove.*over the limit of 128"):
        encoder.encode([PROMPTS[0], long])
    ids, mask = encoder.tokenize([PROMPTS[0], long], truncate=True)
    assert ids.shape == (2, 128) and bool(mask[1].all()) and ids[1, -1] == 1
    with pytest.raises(LatentfuseError, match="over the limit of 8"):
        encoder.tokenize([long], max_length=8)


def test_bad_prompts(encoder):
    with pytest.raises(LatentfuseError, match="empty list"):
        encoder.encode([])
    with pytest.raises(LatentfuseError, match="strings"):
        encoder.encode(["ok", 3])
    ids, _ = encoder.tokenize("a single prompt")
    assert ids.shape[0] == 1


def test_save_load_round_trip(encoder, tmp_path):
    out = encoder.save_pretrained(tmp_path / "te")
    assert {p.name for p in out.iterdir()} >= {"config.json", "model.safetensors", "spiece.model", "tokenizer_config.json"}
    assert (out / "spiece.model").read_bytes() == SHIPPED_SPIECE.read_bytes()
    loaded = PromptEncoder.from_pretrained(out).eval()
    assert loaded.max_length == 128 and loaded.config._attn_implementation == "eager"
    a, ma = encoder.encode(PROMPTS)
    b, mb = loaded.encode(PROMPTS)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert torch.equal(ma, mb)
    with pytest.raises(LatentfuseError, match="already exists"):
        encoder.save_pretrained(out)


def test_loads_full_flan_t5_layout(tmp_path):
    """A Flan-T5 folder holds the whole encoder-decoder, spiece.model and a tokenizer_config."""
    from transformers import T5Config, T5ForConditionalGeneration

    vocab = SpieceTokenizer.from_file(SHIPPED_SPIECE).vocab_size
    cfg = T5Config(vocab_size=vocab + 100, d_model=64, d_kv=16, d_ff=128, num_layers=1, num_heads=4,
                   feed_forward_proj="gated-gelu", tie_word_embeddings=False)
    torch.manual_seed(0)
    full = T5ForConditionalGeneration(cfg).eval()
    full.save_pretrained(tmp_path)
    (tmp_path / "spiece.model").write_bytes(SHIPPED_SPIECE.read_bytes())
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 512, "extra_ids": 100}))
    enc = PromptEncoder.from_pretrained(tmp_path).eval()
    assert enc.max_length == 512 and enc.hidden_size == 64
    ids, mask = enc.tokenize(PROMPTS)
    with torch.no_grad():
        ref = full.encoder(input_ids=ids, attention_mask=mask).last_hidden_state * mask[..., None]
    torch.testing.assert_close(enc(ids, mask), ref, rtol=0, atol=1e-6)


def test_from_pretrained_errors(tmp_path):
    with pytest.raises(LatentfuseError, match="no config.json"):
        PromptEncoder.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(LatentfuseError, match="spiece.model"):
        PromptEncoder.from_pretrained(tmp_path)
    (tmp_path / "spiece.model").write_bytes(SHIPPED_SPIECE.read_bytes())
    with pytest.raises(LatentfuseError, match="'bert'"):
        PromptEncoder.from_pretrained(tmp_path)
    with pytest.raises(LatentfuseError, match="not a sentencepiece model"):
        SpieceTokenizer(b"garbage")
    with pytest.raises(LatentfuseError, match="unknown text-encoder preset"):
        PromptEncoder.from_preset("huge")


def test_tokenizer_training_is_deterministic_and_shipped_model_is_current(train_script):
    texts = corpus()
    first = train_script.train(texts)
    assert train_script.train(texts) == first
    readme = (SHIPPED_SPIECE.parent / "README.md").read_text()
    recorded = re.search(r"corpus: \d+ prompts, sha256 ([0-9a-f]{64})", readme).group(1)
    assert recorded == train_script.corpus_sha256(texts), \
        "the prompt corpus changed since the tokenizer was trained: run latentfuse train-tokenizer"
    trained_with = re.search(r"sentencepiece: (\S+),", readme).group(1)
    if trained_with != spm.__version__:
        pytest.skip(f"shipped model was trained with sentencepiece {trained_with}, this is {spm.__version__}")
    assert first == SHIPPED_SPIECE.read_bytes()
    assert hashlib.sha256(first).hexdigest() in readme


def test_shipped_tokenizer_keeps_whole_words():
    """Frequent corpus words are single pieces (the exact-seed workaround in model/training/tokenizer.py)."""
    tok = SpieceTokenizer.from_file(SHIPPED_SPIECE)
    assert tok.pieces("remove the rain and the noise, then fuse")[:4] == ["▁remove", "▁the", "▁rain", "▁and"]
    assert tok.sp.pad_id() == 0 and tok.sp.eos_id() == 1 and tok.sp.unk_id() == 2 and tok.sp.bos_id() == -1


def test_train_tokenizer_command_writes_and_checks(tmp_path, capsys):
    """`latentfuse train-tokenizer --out X` writes the model and its README; `--check` passes on it and fails
    on a file that differs."""
    from latentfuse.runtime.cli import build_parser

    out = tmp_path / "spiece.model"
    args = build_parser().parse_args(["train-tokenizer", "--out", str(out)])
    assert args.func(args) == 0 and out.is_file()
    assert "latentfuse train-tokenizer" in (tmp_path / "README.md").read_text()
    check = build_parser().parse_args(["train-tokenizer", "--out", str(out), "--check"])
    assert check.func(check) == 0 and "up to date" in capsys.readouterr().out
    out.write_bytes(b"other")
    assert check.func(check) == 1 and "STALE" in capsys.readouterr().out
