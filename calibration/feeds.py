"""Graph inputs from the calibration set, produced by the bundle's own FP32 graphs.

Each graph is calibrated on the inputs it receives in deployment, so the upstream graphs produce them
(docs/design.md "Data flow"): the FP32 ``vae_encoder`` encodes the degraded pairs into ``z_a`` / ``z_b``, the
FP32 ``text_encoder`` turns the prompts into ``prompt_embeds``; the flow DiT sees ``z_t = (1-t)·ε + t·z1``
(t = 0 noise, t = 1 data, the convention of docs/design.md "Samplers") at the sample's stratified t, with
``z1`` the mean of the source latents standing in for the fused latent; the decoder sees the source
latents and their mean; the fidelity decoder (``model.fidelity``, where the bundle has it) sees the FP32
decoder's image of that mean with the pair itself as its sources. Running ONNX Runtime on the bundle's graphs (not PyTorch) keeps calibration
self-contained: a bundle is all it needs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from latentfuse.calibration.dataset import CalibrationSample
from latentfuse.model.errors import LatentfuseError
from latentfuse.runtime.backends.onnxruntime_backend import ort_session
from latentfuse.runtime.manifest import GraphEntry, graph_kind

def _feed(name: str, entry: Mapping, values: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Map role -> value onto the graph's input names (by role through the manifest, the runtime's reader),
    checking that every input is fed."""
    return GraphEntry(name, entry).feeds(values)


class _Graph:
    """An ONNX Runtime session (CPU) over one FP32 graph of the bundle."""

    def __init__(self, path: Path):
        self.session = ort_session(path, purpose="calibration")
        self.inputs = {i.name for i in self.session.get_inputs()}

    def __call__(self, feed: Mapping[str, np.ndarray]) -> np.ndarray:
        return self.session.run(None, {k: v for k, v in feed.items() if k in self.inputs})[0]


def load_tokenizer(bundle: Path, manifest: Mapping):
    """The bundle's SentencePiece tokenizer (``manifest["text"]["tokenizer"]``, a file or a folder)."""
    from latentfuse.model.text_encoder import SpieceTokenizer

    entry = (manifest.get("text") or {}).get("tokenizer") or manifest.get("tokenizer") or "spiece.model"
    path = bundle / str(entry)
    if path.is_dir():
        candidates = sorted(path.glob("*.model"))
        path = candidates[0] if candidates else path / "spiece.model"
    if not path.is_file():
        raise LatentfuseError(f"{bundle}: tokenizer {path} not found (the manifest's 'tokenizer' entry)")
    return SpieceTokenizer.from_file(path)


def build_feeds(bundle: str | Path, manifest: Mapping, samples: Sequence[CalibrationSample],
                prompts: Sequence[str], graph_files: Mapping[str, Path], *, seed: int = 0,
                prompt_batch: int = 4) -> dict[str, list[dict[str, np.ndarray]]]:
    """``{graph name: [feed, ...]}`` for every graph of the manifest, from the calibration set."""
    bundle = Path(bundle)
    graphs = manifest["graphs"]
    kinds = {name: graph_kind(name, entry) for name, entry in graphs.items()}
    by_kind = {kind: name for name, kind in kinds.items() if kind != "dit"}
    for needed in ("text_encoder", "vae_encoder"):
        if needed not in by_kind:
            raise LatentfuseError(f"{bundle}: calibration needs the {needed} graph to produce the other graphs' inputs")
    text = manifest.get("text") or {}
    max_length = int(text.get("max_length", 128))
    tokenizer = load_tokenizer(bundle, manifest)
    encoder = _Graph(graph_files[by_kind["text_encoder"]])
    vae = _Graph(graph_files[by_kind["vae_encoder"]])
    te_entry = graphs[by_kind["text_encoder"]]

    def tokenize(batch):
        ids, mask = tokenizer(list(batch), max_length=max_length, truncate=True)
        return ids.numpy().astype(np.int64), mask.numpy().astype(np.int64)

    feeds: dict[str, list] = {name: [] for name in graphs}
    # Text encoder: the canonical prompts and the samples' prompts, a few per batch (padding exercised).
    embeds: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for i in range(0, len(prompts), prompt_batch):
        batch = prompts[i:i + prompt_batch]
        ids, mask = tokenize(batch)
        feed = _feed(by_kind["text_encoder"], te_entry, {"token_ids": ids, "attention_mask": mask})
        feeds[by_kind["text_encoder"]].append(feed)
        out = encoder(feed)
        for row, prompt in enumerate(batch):
            n = int(mask[row].sum())
            embeds[prompt] = (out[row:row + 1, :n], mask[row:row + 1, :n])

    decoder = None
    if "fidelity" in by_kind:
        if "vae_decoder" not in by_kind:
            raise LatentfuseError(f"{bundle}: calibrating the fidelity graph needs the vae_decoder graph for its input")
        decoder = _Graph(graph_files[by_kind["vae_decoder"]])
    rng = np.random.default_rng(seed)
    for sample in samples:
        images = np.stack([sample.image_a, sample.image_b]).astype(np.float32)
        feed = _feed(by_kind["vae_encoder"], graphs[by_kind["vae_encoder"]], {"image": images})
        feeds[by_kind["vae_encoder"]].append(feed)
        latents = vae(feed)
        z_a, z_b = latents[0:1], latents[1:2]
        z1 = 0.5 * (z_a + z_b)
        if sample.prompt not in embeds:
            ids, mask = tokenize([sample.prompt])
            embeds[sample.prompt] = (encoder(_feed(by_kind["text_encoder"], te_entry,
                                                   {"token_ids": ids, "attention_mask": mask})), mask)
        prompt_embeds, prompt_mask = embeds[sample.prompt]
        for name, kind in kinds.items():
            entry = graphs[name]
            if kind == "dit":
                values = {"source_latent_a": z_a, "source_latent_b": z_b,
                          "prompt_embeds": prompt_embeds.astype(np.float32), "prompt_mask": prompt_mask}
                if GraphEntry(name, entry).head == "flow":
                    t = np.float32(sample.t)
                    noise = rng.standard_normal(z_a.shape).astype(np.float32)
                    values.update(noisy_latent=((1 - t) * noise + t * z1).astype(np.float32),
                                  timestep=np.array([t], np.float32))
                feeds[name].append(_feed(name, entry, values))
            elif kind == "vae_decoder":
                feeds[name].append(_feed(name, entry, {"latent": np.concatenate([z_a, z_b, z1]).astype(np.float32)}))
            elif kind == "fidelity":
                decoded = decoder(_feed(by_kind["vae_decoder"], graphs[by_kind["vae_decoder"]],
                                        {"latent": z1.astype(np.float32)}))
                feeds[name].append(_feed(name, entry, {
                    "image": np.asarray(decoded, np.float32), "source_image_a": images[0:1],
                    "source_image_b": images[1:2], "prompt_embeds": prompt_embeds.astype(np.float32),
                    "prompt_mask": prompt_mask}))
    return feeds
