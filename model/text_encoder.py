"""The prompt encoder: a T5 encoder (Flan-T5 in the paper) and its sentencepiece tokenizer.

MMAIF section 3.3: the prompt embedding ``P`` "encoded by Flan-T5" joins the image tokens in every
self-attention. :class:`PromptEncoder` maps a batch of prompts to ``P`` ``[B, L, d_t]`` and the
attention mask ``[B, L]`` (1 = token, 0 = padding) the DiT's joint attention needs.

Tokenization is sentencepiece itself (:class:`SpieceTokenizer`), the library the C++ host links, so
both sides produce the same ids by construction: ``ids = sp.encode(text) + [eos=1]``, padded with 0.
transformers 5's ``T5Tokenizer`` (a ``tokenizers`` Unigram converted from ``spiece.model``) agrees on
ordinary prompts but drops sentencepiece's ``byte_fallback`` (unseen characters become ``<unk>``) and
parses ``"</s>"`` typed in a prompt as a control token, so it is not used here.

Presets are data (:data:`T5_PRESETS`): ``tiny`` (a 2-layer gated-GELU T5, d=128, with the tokenizer
trained on the prompt corpus and shipped in ``model/assets/tokenizer``; see
``latentfuse train-tokenizer``) and ``paper`` (the Flan-T5-base architecture, d=768 = the DiT's
``text_dim``, random weights, for sizing and export). Real Flan-T5 weights load from a local folder with
:meth:`PromptEncoder.from_pretrained` (``config.json``, ``model.safetensors``, ``spiece.model``).
The model uses eager attention: the attention implementation ``torch.onnx.export(dynamo=True)`` handles.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from latentfuse.model.atomic import atomic_dir
from latentfuse.model.errors import LatentfuseError

TOKENIZER_DIR = Path(__file__).with_name("assets") / "tokenizer"
SHIPPED_SPIECE = TOKENIZER_DIR / "spiece.model"
SPIECE_NAME = "spiece.model"
TOKENIZER_CONFIG_NAME = "tokenizer_config.json"
PAD_ID, EOS_ID = 0, 1                    # T5 conventions (Raffel et al. 2020; Flan-T5's spiece.model)
DEFAULT_PRETRAINED_MAX_LENGTH = 512      # Flan-T5's declared model_max_length

#: ``transformers.T5Config`` fields per preset; ``vocab_size: None`` = the shipped tokenizer's size.
#: ``max_length`` is the declared prompt limit in tokens (EOS included), not a T5 config field.
T5_PRESETS: dict[str, dict] = {
    "tiny": {
        "d_model": 128, "d_kv": 32, "d_ff": 256, "num_layers": 2, "num_heads": 4,
        "feed_forward_proj": "gated-gelu",           # Flan-T5 (T5 v1.1) FFN
        "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
        "dropout_rate": 0.0, "vocab_size": None, "max_length": 128,
    },
    "paper": {  # google/flan-t5-base
        "d_model": 768, "d_kv": 64, "d_ff": 2048, "num_layers": 12, "num_heads": 12,
        "feed_forward_proj": "gated-gelu",
        "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
        "dropout_rate": 0.1, "vocab_size": 32128, "max_length": 512,
    },
}


def available_text_presets() -> list[str]:
    return sorted(T5_PRESETS)


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


class SpieceTokenizer:
    """T5 tokenization with sentencepiece: ``ids = encode(text) + [eos]``, padding id 0, mask 1/0."""

    def __init__(self, model_proto: bytes, source: str = "<bytes>"):
        import sentencepiece as spm

        self.source = source
        self.model_proto = bytes(model_proto)
        try:
            self.sp = spm.SentencePieceProcessor(model_proto=self.model_proto)
        except (RuntimeError, OSError) as err:
            raise LatentfuseError(f"{source} is not a sentencepiece model: {err}") from None
        if self.sp.pad_id() != PAD_ID or self.sp.eos_id() != EOS_ID:
            raise LatentfuseError(f"{source}: a T5 tokenizer needs pad id {PAD_ID} and eos id {EOS_ID}, "
                                  f"this model has pad {self.sp.pad_id()} and eos {self.sp.eos_id()}")

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> "SpieceTokenizer":
        path = Path(path)
        if not path.is_file():
            raise LatentfuseError(f"sentencepiece model not found: {path}")
        return cls(path.read_bytes(), str(path))

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    @property
    def pad_id(self) -> int:
        return PAD_ID

    @property
    def eos_id(self) -> int:
        return EOS_ID

    @property
    def unk_id(self) -> int:
        return self.sp.unk_id()

    def ids(self, prompt: str) -> list[int]:
        """Token ids of one prompt, EOS appended (what the C++ host computes with libsentencepiece)."""
        return self.sp.encode(prompt) + [EOS_ID]

    def pieces(self, prompt: str) -> list[str]:
        return self.sp.encode(prompt, out_type=str) + [self.sp.id_to_piece(EOS_ID)]

    def decode(self, ids: Sequence[int]) -> str:
        return self.sp.decode([int(i) for i in ids if i not in (PAD_ID, EOS_ID)])

    def __call__(self, prompts: Sequence[str] | str, max_length: int, pad_to: int | None = None,
                 truncate: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch of prompts -> ``(input_ids, attention_mask)``, both int64 ``[B, L]``.

        ``L`` is the longest prompt, or ``pad_to`` when given. A prompt longer than ``max_length``
        tokens is an error unless ``truncate`` (then it keeps its first ``max_length - 1`` tokens + EOS).
        """
        prompts = _check_prompts(prompts)
        rows = []
        for prompt in prompts:
            ids = self.ids(prompt)
            if len(ids) > max_length:
                if not truncate:
                    raise LatentfuseError(f"prompt {_short(prompt)!r} is {len(ids)} tokens (with EOS), over the "
                                          f"limit of {max_length}; shorten it or pass truncate=True")
                ids = ids[: max_length - 1] + [EOS_ID]
            rows.append(ids)
        length = max(len(r) for r in rows) if pad_to is None else pad_to
        input_ids = torch.full((len(rows), length), PAD_ID, dtype=torch.int64)
        mask = torch.zeros((len(rows), length), dtype=torch.int64)
        for i, ids in enumerate(rows):
            input_ids[i, : len(ids)] = torch.tensor(ids, dtype=torch.int64)
            mask[i, : len(ids)] = 1
        return input_ids, mask

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_bytes(self.model_proto)


def _check_prompts(prompts: Sequence[str] | str) -> list[str]:
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts:
        raise LatentfuseError("no prompts given (an empty prompt '' is allowed, an empty list is not)")
    bad = [type(p).__name__ for p in prompts if not isinstance(p, str)]
    if bad:
        raise LatentfuseError(f"prompts must be strings, got {', '.join(sorted(set(bad)))}")
    return prompts


class PromptEncoder(nn.Module):
    """Flan-T5-style encoder + sentencepiece tokenizer: prompts -> (embeddings, mask)."""

    def __init__(self, model, tokenizer: SpieceTokenizer, max_length: int, tokenizer_config: dict | None = None):
        super().__init__()
        from transformers import T5EncoderModel

        if not isinstance(model, T5EncoderModel):
            raise LatentfuseError(f"PromptEncoder holds a transformers T5EncoderModel, got {type(model).__name__}")
        if tokenizer.vocab_size > model.config.vocab_size:
            raise LatentfuseError(f"tokenizer {tokenizer.source} has {tokenizer.vocab_size} pieces but the T5 "
                                  f"embedding has only {model.config.vocab_size} rows")
        if max_length < 2:
            raise LatentfuseError(f"max_length must be at least 2 (one token + EOS), got {max_length}")
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self._tokenizer_config = dict(tokenizer_config or {})

    # ----------------------------------------------------------------- construction and storage
    @classmethod
    def from_preset(cls, name: str = "tiny", seed: int | None = None,
                    tokenizer: str | os.PathLike = SHIPPED_SPIECE, **overrides) -> "PromptEncoder":
        """Randomly initialised encoder of a preset with the shipped (or given) tokenizer; ``seed``
        makes the weights reproducible without touching the global RNG."""
        from transformers import T5Config, T5EncoderModel

        if name not in T5_PRESETS:
            raise LatentfuseError(f"unknown text-encoder preset {name!r}; "
                                  f"available: {', '.join(available_text_presets())}")
        params = {**copy.deepcopy(T5_PRESETS[name]), **overrides}
        max_length = params.pop("max_length")
        tok = SpieceTokenizer.from_file(tokenizer)
        if params.get("vocab_size") is None:
            params["vocab_size"] = tok.vocab_size
        try:
            config = T5Config(**params, pad_token_id=PAD_ID, eos_token_id=EOS_ID, is_encoder_decoder=False,
                              use_cache=False, attn_implementation="eager")
        except (TypeError, ValueError) as err:
            raise LatentfuseError(f"invalid T5 config for preset {name!r}: {err}") from None
        if seed is None:
            model = T5EncoderModel(config)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = T5EncoderModel(config)
        return cls(model, tok, max_length)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, dtype: torch.dtype = torch.float32,
                        max_length: int | None = None) -> "PromptEncoder":
        """Load a transformers T5 folder: ``config.json``, ``model.safetensors`` (a full Flan-T5
        checkpoint is fine: the decoder weights are skipped) and ``spiece.model``."""
        from transformers import T5EncoderModel

        directory = Path(directory)
        if not (directory / "config.json").is_file() and (directory / "text_encoder" / "config.json").is_file():
            directory = directory / "text_encoder"
        if not (directory / "config.json").is_file():
            raise LatentfuseError(f"{directory} is not a transformers T5 folder (no config.json)")
        spiece = directory / SPIECE_NAME
        if not spiece.is_file():
            raise LatentfuseError(f"{directory} has no {SPIECE_NAME}; the prompt tokenizer must be a sentencepiece "
                                  f"model (the C++ host tokenizes with libsentencepiece)")
        try:
            model_type = json.loads((directory / "config.json").read_text()).get("model_type")
        except json.JSONDecodeError as err:
            raise LatentfuseError(f"{directory / 'config.json'} is not valid JSON: {err}") from None
        if model_type != "t5":
            raise LatentfuseError(f"{directory} holds a {model_type!r} model, expected a T5 (Flan-T5) encoder")
        tok_config = {}
        if (directory / TOKENIZER_CONFIG_NAME).is_file():
            try:
                tok_config = json.loads((directory / TOKENIZER_CONFIG_NAME).read_text())
            except json.JSONDecodeError as err:
                raise LatentfuseError(f"{directory / TOKENIZER_CONFIG_NAME} is not valid JSON: {err}") from None
        if max_length is None:
            declared = tok_config.get("model_max_length")
            # transformers writes a huge sentinel (1e30) when a tokenizer declares no limit.
            max_length = int(declared) if isinstance(declared, int) and 1 < declared <= 1 << 20 \
                else DEFAULT_PRETRAINED_MAX_LENGTH
        try:
            model = T5EncoderModel.from_pretrained(directory, attn_implementation="eager", dtype=dtype,
                                                   local_files_only=True)
        except (OSError, ValueError, KeyError, RuntimeError) as err:
            raise LatentfuseError(f"cannot load the T5 encoder from {directory}: {err}") from None
        return cls(model, SpieceTokenizer.from_file(spiece), max_length, tok_config)

    def save_pretrained(self, directory: str | os.PathLike, overwrite: bool = False) -> Path:
        """Write ``config.json``, ``model.safetensors``, ``spiece.model`` and ``tokenizer_config.json``
        atomically (a folder transformers' ``T5EncoderModel`` / ``T5Tokenizer`` also read)."""
        directory = Path(directory)
        if directory.exists() and not overwrite:
            raise LatentfuseError(f"{directory} already exists (pass overwrite=True to replace it)")
        tok_config = {
            "tokenizer_class": "T5Tokenizer", "extra_ids": 0,
            "pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>",
            **self._tokenizer_config, "model_max_length": self.max_length,
        }
        with atomic_dir(directory, overwrite=overwrite) as tmp:
            self.model.save_pretrained(tmp, safe_serialization=True)
            self.tokenizer.save(tmp / SPIECE_NAME)
            (tmp / TOKENIZER_CONFIG_NAME).write_text(json.dumps(tok_config, indent=2) + "\n")
        return directory

    # ----------------------------------------------------------------- properties
    @property
    def config(self):
        return self.model.config

    @property
    def hidden_size(self) -> int:
        """``d_t``: width of the prompt embeddings (the DiT's ``text_dim``)."""
        return int(self.model.config.d_model)

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    # ----------------------------------------------------------------- tokenize / encode
    def tokenize(self, prompts: Sequence[str] | str, max_length: int | None = None,
                 truncate: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """``(input_ids, attention_mask)`` int64 ``[B, L]``: padded to the longest prompt, or to
        ``max_length`` when given (a fixed length, e.g. for an engine profile or the embedding cache)."""
        limit = self._limit(max_length)
        return self.tokenizer(prompts, max_length=limit, pad_to=max_length, truncate=truncate)

    @torch.no_grad()
    def encode(self, prompts: Sequence[str] | str, max_length: int | None = None,
               truncate: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts -> ``(embeddings [B, L, d_t], attention_mask [B, L] int64)`` on the model's device.

        Embeddings at padded positions are zero, so a prompt's embedding does not depend on how much
        padding its batch had (a cached embedding can be zero-padded to any length).
        """
        input_ids, mask = self.tokenize(prompts, max_length=max_length, truncate=truncate)
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        return self.forward(input_ids, mask), mask

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``[B, L]`` ids and mask -> ``[B, L, d_t]`` embeddings, zero where the mask is 0.
        The ``text_encoder`` graph body."""
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return hidden * attention_mask.unsqueeze(-1).to(hidden.dtype)

    encode_graph = forward

    def _limit(self, max_length: int | None) -> int:
        if max_length is None:
            return self.max_length
        if not isinstance(max_length, int) or max_length < 2:
            raise LatentfuseError(f"max_length must be an integer >= 2, got {max_length!r}")
        if max_length > self.max_length:
            raise LatentfuseError(f"max_length {max_length} exceeds this text encoder's limit of {self.max_length} tokens")
        return max_length
