"""Train the shipped prompt tokenizer: a sentencepiece unigram model on the prompt corpus.

The model follows the Flan-T5 ``spiece.model`` conventions (Kudo 2018 unigram LM; pad=0, eos=1,
unk=2, no bos; nmt_nfkc normalisation, dummy ``▁`` prefix) so the same ``PromptEncoder`` code and the
C++ host's libsentencepiece read it exactly like a real Flan-T5 vocabulary. ``byte_fallback`` makes any
free text tokenizable: characters outside the corpus become ``<0xNN>`` byte pieces instead of ``<unk>``.

Seeding: sentencepiece's own seed extraction (suffix-array nodes) only proposes substrings seen with
more than one right context, so on a small, repetitive corpus it misses whole words that are always
followed by a space: with sentencepiece 0.2.3 "remove" and "please" came out as "▁re m ove" and
"▁p lea se" (the symptom of google/sentencepiece#967). The corpus here is tiny, so the seeds are
computed exactly instead — every substring (≤ 16 characters) of every whitespace-separated word,
with its corpus frequency, the initialisation Kudo (2018, section 3.2) describes — and passed through
``seed_sentencepieces_file``. EM and pruning are sentencepiece's own.

Deterministic: fixed random seed, one thread, no input shuffling, seeds in a fixed order; the temporary
seed-file path is cleared from the stored trainer spec, so re-running writes a byte-identical file
(``--check`` verifies that against the shipped one).

    latentfuse train-tokenizer            # rewrite model/assets/tokenizer/spiece.model (and its README.md)
    latentfuse train-tokenizer --check    # exit 1 if retraining would change it
"""

from __future__ import annotations

import collections
import hashlib
import io
import tempfile
from pathlib import Path
from typing import Iterable, Sequence

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "assets" / "tokenizer" / "spiece.model"
DEFAULT_VOCAB_SIZE = 1000       # an upper bound: hard_vocab_limit=False keeps what the corpus supports
MAX_PIECE_LENGTH = 16           # sentencepiece's default max_sentencepiece_length
RANDOM_SEED = 0
WS = "\u2581"                   # sentencepiece's whitespace marker "▁"


def corpus_sha256(texts: Iterable[str]) -> str:
    """Hash of the training text (one prompt per line), recorded next to the shipped model."""
    return hashlib.sha256("\n".join(texts).encode("utf-8")).hexdigest()


def seed_pieces(texts: Sequence[str], max_length: int = MAX_PIECE_LENGTH) -> list[tuple[str, int]]:
    """Every substring of every ``▁word`` (length 2..max_length) with its corpus frequency.

    Single characters are added by sentencepiece itself. Ordered by the initial unigram score
    (frequency × length, as sentencepiece scores its own seeds), ties by the piece, so the file is
    reproducible.
    """
    words = collections.Counter(w for text in texts for w in text.split())
    counts: collections.Counter[str] = collections.Counter()
    for word, n in words.items():
        word = WS + word
        for i in range(len(word)):
            for j in range(i + 2, min(len(word), i + max_length) + 1):
                counts[word[i:j]] += n
    return sorted(counts.items(), key=lambda kv: (-kv[1] * len(kv[0]), kv[0]))


def train(texts: Sequence[str], vocab_size: int = DEFAULT_VOCAB_SIZE, seed: int = RANDOM_SEED) -> bytes:
    """Train the unigram model on ``texts`` and return the serialized ``ModelProto``."""
    import sentencepiece as spm
    from sentencepiece import sentencepiece_model_pb2

    texts = list(texts)
    with tempfile.TemporaryDirectory(prefix="spm-seeds-") as tmp:
        seed_file = Path(tmp) / "seeds.tsv"
        seed_file.write_text("".join(f"{piece}\t{n}\n" for piece, n in seed_pieces(texts)), encoding="utf-8")
        spm.set_random_generator_seed(seed)
        buf = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts),
            model_writer=buf,
            model_type="unigram",
            vocab_size=vocab_size,
            hard_vocab_limit=False,
            seed_sentencepieces_file=str(seed_file),
            character_coverage=1.0,
            byte_fallback=True,
            pad_id=0, eos_id=1, unk_id=2, bos_id=-1,     # T5: <pad>=0, </s>=1, <unk>=2, no <s>
            max_sentencepiece_length=MAX_PIECE_LENGTH,
            num_threads=1,
            shuffle_input_sentence=False,
            input_sentence_size=0,
            minloglevel=2,
        )
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(buf.getvalue())
    # the seed file's temp path would break reproducibility; sentencepiece < 0.2.3's Python proto lacks the
    # field (its C++ trainer writes it all the same), so there it is one of the spec's unknown fields
    if "seed_sentencepieces_file" in proto.trainer_spec.DESCRIPTOR.fields_by_name:
        proto.trainer_spec.ClearField("seed_sentencepieces_file")
    else:
        proto.trainer_spec.DiscardUnknownFields()
    return proto.SerializeToString(deterministic=True)


def readme_text(model_bytes: bytes, texts: Sequence[str], vocab_size_arg: int) -> str:
    import sentencepiece as spm

    size = spm.SentencePieceProcessor(model_proto=model_bytes).get_piece_size()
    return (
        "# Prompt tokenizer\n\n"
        "`spiece.model`: sentencepiece unigram model (T5 conventions: pad=0, eos=1, unk=2, no bos; byte fallback),\n"
        "trained by `latentfuse train-tokenizer` on `model.data.prompts.corpus()`.\n\n"
        f"- corpus: {len(texts)} prompts, sha256 {corpus_sha256(texts)}\n"
        f"- vocab size: {size} (requested upper bound {vocab_size_arg}, hard_vocab_limit=false)\n"
        f"- sentencepiece: {spm.__version__}, random seed {RANDOM_SEED}, 1 thread\n"
        f"- spiece.model sha256 {hashlib.sha256(model_bytes).hexdigest()}\n\n"
        "Retrain whenever the prompt corpus changes (tests compare the corpus hash above).\n"
    )


def train_tokenizer(out: Path = DEFAULT_OUT, vocab_size: int = DEFAULT_VOCAB_SIZE, check: bool = False) -> int:
    """Train on the prompt corpus and write ``out`` and the README beside it; with ``check``, only compare
    with ``out``. Returns the exit status (1: ``out`` is stale)."""
    from latentfuse.model.atomic import atomic_file
    from latentfuse.model.data.prompts import corpus

    out = Path(out)
    texts = corpus()
    model_bytes = train(texts, vocab_size)
    if check:
        same = out.is_file() and out.read_bytes() == model_bytes
        print(f"{out}: {'up to date' if same else 'STALE: rerun latentfuse train-tokenizer'}")
        return 0 if same else 1
    readme = out.with_name("README.md")
    with atomic_file(out) as tmp:
        tmp.write_bytes(model_bytes)
        tmp.chmod(0o644)  # mkstemp creates 0600; a shipped asset must be world-readable
    with atomic_file(readme) as tmp:
        tmp.write_text(readme_text(model_bytes, texts, vocab_size))
        tmp.chmod(0o644)
    print(f"wrote {out} ({len(model_bytes)} bytes) and {readme}")
    return 0
