"""The fidelity decoder (model.fidelity) and its training (model.training.fidelity)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from latentfuse.model.errors import LatentfuseError
from latentfuse.model.fidelity import FidelityConfig, FidelityDecoder, receptive_halo
from latentfuse.model.training.fidelity import (FidelityTrainConfig, fidelity_loss, split_validation,
                                                train_fidelity, validate)

SMALL = FidelityConfig(text_dim=8, widths=(8, 8, 8), enc_blocks=(1, 1, 1), dec_blocks=(1, 1))
COARSE = FidelityConfig(text_dim=8, widths=(8, 8, 8), enc_blocks=(1, 1, 1), dec_blocks=(1, 1), select_coarse=True)


def _inputs(h=32, w=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    imgs = [torch.rand(1, 3, h, w, generator=g) * 2 - 1 for _ in range(3)]
    return imgs + [torch.randn(1, 5, 8, generator=g), torch.tensor([[1, 1, 1, 0, 0]])]


def _perturbed(config=SMALL, seed=0):
    torch.manual_seed(seed)
    model = FidelityDecoder(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("config", [SMALL, COARSE])
def test_untrained_decoder_returns_about_its_input(config):
    x = _inputs()
    with torch.no_grad():
        out = FidelityDecoder(config)(*x)
    assert (out - x[0]).abs().mean() < 0.1 * (x[1] - x[0]).abs().mean()


def test_decoder_picks_a_sources_detail():
    """Logits that choose A in every band give A's detail over F's coarse band."""
    model = FidelityDecoder(SMALL)
    with torch.no_grad():
        model.head.bias.view(-1, 4)[[0, 3]] = 50.0  # logit of A in both bands (pixel-shuffle groups of 4)
    image, a, b, embeds, mask = _inputs(32, 32)
    image = torch.zeros_like(image)  # F flat: the fused image is A's detail alone
    with torch.no_grad():
        out = model(image, a, b, embeds, mask)
    from latentfuse.model.fidelity import lowpass
    assert torch.allclose(out, a - lowpass(a, 16), atol=1e-4)


def test_decoder_with_coarse_selection_picks_a_sources_coarse_luma():
    """With select_coarse, logits that choose B's coarse luma and A's coarse colour give those over F's."""
    from latentfuse.model.fidelity import lowpass, luma

    model = FidelityDecoder(COARSE)
    assert model.selections == 4
    with torch.no_grad():
        model.head.bias.view(-1, 4)[[0, 3]] = 50.0  # A's detail in both finer bands
        model.head.bias.view(-1, 4)[7] = 50.0  # B's coarse luma (logits 6, 7, 8: A, B, F)
        model.head.bias.view(-1, 4)[9] = 50.0  # A's coarse colour (logits 9, 10, 11)
        image, a, b, embeds, mask = _inputs(32, 32)
        out = model(image, a, b, embeds, mask)
    coarse = luma(lowpass(b, 16)) + lowpass(a, 16) - luma(lowpass(a, 16))
    assert torch.allclose(out, a - lowpass(a, 16) + coarse, atol=1e-4)


def test_prompt_mask_hides_padding_tokens():
    model = _perturbed()
    image, a, b, embeds, mask = _inputs()
    changed = embeds.clone()
    changed[:, 3:] += 5.0  # only the masked-out tokens
    with torch.no_grad():
        assert torch.allclose(model(image, a, b, embeds, mask), model(image, a, b, changed, mask))
        assert not torch.allclose(model(image, a, b, embeds, mask), model(image, a, b, embeds + 1.0, mask))


@pytest.mark.parametrize("config", [SMALL, COARSE, FidelityConfig(text_dim=8, widths=(4, 4, 4))])
def test_receptive_halo_bounds_the_reach(config):
    """A strip with ``receptive_halo`` rows of context gives its rows as the whole image does."""
    model = _perturbed(config).double()
    halo = receptive_halo(config)
    h = 2 * halo + 64
    image, a, b, embeds, mask = (t.double() if t.is_floating_point() else t for t in _inputs(h, 16, seed=1))
    image.requires_grad_(True)
    model(image, a, b, embeds, mask)[0, :, h // 2, 8].sum().backward()
    rows = image.grad[0].abs().sum((0, 2)).nonzero().flatten()
    assert h // 2 - rows.min() <= halo and rows.max() - h // 2 <= halo
    with torch.no_grad():
        whole = model(image, a, b, embeds, mask)
        top = 64  # a strip of rows [64, 64 + 32) with its halo, cut on the 8-pixel grid
        lo, hi = top - halo, top + 32 + halo
        strip = model(image[..., lo:hi, :], a[..., lo:hi, :], b[..., lo:hi, :], embeds, mask)
    assert torch.allclose(strip[..., halo:halo + 32, :], whole[..., top:top + 32, :], atol=1e-10)


@pytest.mark.parametrize("config", [SMALL, COARSE])
def test_save_and_load_round_trip(tmp_path, config):
    model = _perturbed(config)
    model.save_pretrained(tmp_path / "fidelity")
    loaded = FidelityDecoder.from_pretrained(tmp_path / "fidelity")
    assert loaded.config == config
    x = _inputs()
    with torch.no_grad():
        assert torch.equal(model(*x), loaded(*x))


def test_a_config_without_select_coarse_loads_as_before(tmp_path):
    """Decoders saved before the option read as coarse band = F's."""
    import json

    FidelityDecoder(SMALL).save_pretrained(tmp_path / "f")
    path = tmp_path / "f" / "config.json"
    path.write_text(json.dumps({k: v for k, v in json.loads(path.read_text()).items() if k != "select_coarse"}))
    assert FidelityDecoder.from_pretrained(tmp_path / "f").config.select_coarse is False


def test_load_errors_name_the_problem(tmp_path):
    with pytest.raises(LatentfuseError, match="not a fidelity decoder"):
        FidelityDecoder.from_pretrained(tmp_path)
    FidelityDecoder(SMALL).save_pretrained(tmp_path / "f")
    other = tmp_path / "g"
    FidelityDecoder(FidelityConfig(text_dim=8)).save_pretrained(other)
    (tmp_path / "f" / "model.safetensors").write_bytes((other / "model.safetensors").read_bytes())
    with pytest.raises(LatentfuseError, match="does not match its config"):
        FidelityDecoder.from_pretrained(tmp_path / "f")
    with pytest.raises(LatentfuseError, match="widths"):
        FidelityConfig(widths=(8, 8))
    with pytest.raises(LatentfuseError, match="bands"):
        FidelityConfig(bands=(16, 4))
    with pytest.raises(LatentfuseError, match="select_coarse is true or false, got 'yes'"):
        FidelityConfig.from_dict({"select_coarse": "yes"})


def test_train_fidelity_offers_the_edge_sources_the_trainer_knows():
    """The command line keeps its own list (its module does not import torch for --help): it must be EDGE_SOURCES."""
    import argparse

    from latentfuse.model.training.cli import register
    from latentfuse.model.training.fidelity import EDGE_SOURCES

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    sub = parser._subparsers._group_actions[0].choices["train-fidelity"]
    action = next(a for a in sub._actions if a.dest == "edge_sources")
    assert tuple(action.choices) == EDGE_SOURCES


def test_loss_counts_edges():
    flat = torch.zeros(1, 3, 8, 8)
    edge = flat.clone()
    edge[..., 4:] = 1.0
    assert fidelity_loss(flat, edge, 0.0) == pytest.approx(0.5)
    assert fidelity_loss(flat, edge, 1.0) > fidelity_loss(flat, edge, 0.0)


def test_source_edge_term_pulls_towards_the_stronger_source_on_clean_rows_only():
    flat = torch.zeros(2, 3, 8, 8)
    edge = flat.clone()
    edge[..., 4:] = 1.0
    clean = torch.tensor([True, False])
    base = fidelity_loss(flat, flat, 0.0)
    # the label is flat, but source B has an edge: on the clean row the flat output is penalised for losing it
    assert fidelity_loss(flat, flat, 0.0, flat, edge, clean, 1.0) > base
    assert fidelity_loss(flat, flat, 0.0, flat, edge, torch.tensor([False, False]), 1.0) == base
    # an output with B's edge meets the term (the stronger source's magnitude), whichever source holds it
    assert fidelity_loss(edge, flat, 0.0, edge, flat, clean, 1.0) - fidelity_loss(edge, flat, 0.0) < 1e-3
    with pytest.raises(LatentfuseError, match="source_grad_weight -1"):
        FidelityTrainConfig(source_grad_weight=-1)


class _Prompts(torch.nn.Module):
    hidden_size = 8

    def encode(self, prompts):
        g = torch.Generator().manual_seed(len(prompts[0]))
        return torch.randn(len(prompts), 4, 8, generator=g), torch.ones(len(prompts), 4, dtype=torch.long)


def _records(n=12, size=48):
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        a, b = (rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(2))
        gt = ((a.astype(np.int32) + b) // 2).astype(np.uint8)
        blur = np.full_like(gt, int(gt.mean()))
        out.append({"a": a, "b": b, "gt": gt, "regression": blur, "flow": blur, "prompt": f"p{i % 2}",
                    "task": "vif", "pair": f"scene{i}", "id": f"scene{i}_0"})
    return out


def test_training_learns_resumes_and_validates(tmp_path):
    records = _records()
    # label losses only: the edge term would pull towards these random sources' noise
    cfg = FidelityTrainConfig(steps=30, batch_size=4, crop=32, lr=1e-2, warmup_steps=2, save_every=15,
                              source_grad_weight=0.0)
    model = FidelityDecoder(SMALL)
    report = train_fidelity(model, records, _Prompts(), cfg, tmp_path, progress=False)
    assert report["steps"] == 30 and (tmp_path / "checkpoint.pt").is_file()
    val = validate(model, records[:3], _Prompts())["vif"]
    assert val["n"] == 3 and val["psnr_output"] > val["psnr_input"]  # it learned the average of the sources
    # a second run with the same config resumes at the end: no step runs, the weights are the checkpoint's
    again = FidelityDecoder(SMALL)
    resumed = train_fidelity(again, records, _Prompts(), cfg, tmp_path, progress=False)
    assert resumed["steps"] == 30 and resumed["seconds"] < report["seconds"]
    for p, q in zip(model.parameters(), again.parameters()):
        assert torch.equal(p, q)


def test_edge_term_on_every_tuple_reads_the_clean_sources(monkeypatch, tmp_path):
    """edge_sources 'all': every row is under the edge term, against the sources before degradation (the cache's
    clean_a / clean_b), not the degraded pair the decoder reads; a cache without them is a one-line error."""
    import latentfuse.model.training.fidelity as fid

    records = _records(n=4)
    for rec in records:
        rec["clean_a"], rec["clean_b"] = np.full_like(rec["a"], 7), np.full_like(rec["b"], 9)
        rec["degradations"] = '["rain"]'
    seen = []
    real_loss = fid.fidelity_loss
    monkeypatch.setattr(fid, "fidelity_loss", lambda out, target, gw, a, b, on, sw: seen.append((a, b, on))
                        or real_loss(out, target, gw, a, b, on, sw))
    cfg = FidelityTrainConfig(steps=2, batch_size=2, crop=32, warmup_steps=1, edge_sources="all")
    train_fidelity(FidelityDecoder(SMALL), records, _Prompts(), cfg, tmp_path / "all", progress=False)
    a, b, on = seen[-1]
    assert bool(on.all()) and torch.allclose(a, torch.full_like(a, 7 / 127.5 - 1)) and torch.allclose(
        b, torch.full_like(b, 9 / 127.5 - 1))
    seen.clear()
    train_fidelity(FidelityDecoder(SMALL), records, _Prompts(), FidelityTrainConfig(steps=2, batch_size=2, crop=32,
                   warmup_steps=1), tmp_path / "clean", progress=False)
    assert not bool(seen[-1][2].any())  # 'clean': degraded rows are not under the term
    for rec in records:
        del rec["clean_a"]
    with pytest.raises(LatentfuseError, match="'all' needs the clean sources in the fidelity cache.*rebuild"):
        train_fidelity(FidelityDecoder(SMALL), records, _Prompts(), cfg, tmp_path / "old", progress=False)
    with pytest.raises(LatentfuseError, match="edge_sources must be one of clean, all, corruptions"):
        FidelityTrainConfig(edge_sources="degraded")


def test_edge_term_on_corruptions_skips_tuples_that_lost_detail():
    """'corruptions': the clean tuples and those only rained / snowed / striped / JPEG'd / noised are under the term
    (at their clean sources); a tuple with any detail-losing degradation (blur, downsampling, haze) is not."""
    from latentfuse.model.training.fidelity import _Batches

    records = _records(n=4)
    for rec, degr in zip(records, ('[]', '["rain", "jpeg"]', '["gaussian_blur"]', '["noise", "haze"]')):
        rec["clean_a"], rec["clean_b"], rec["degradations"] = rec["a"], rec["b"], degr
    batches = _Batches(records, ["p0", "p1"], FidelityTrainConfig(edge_sources="corruptions"))
    assert batches.edge_rows == [True, True, False, False] and batches.edges == ("clean_a", "clean_b")
    assert _Batches(records, ["p0", "p1"], FidelityTrainConfig()).edge_rows == [True, False, False, False]


def test_validation_split_is_by_scene():
    records = [{"pair": f"scene{i // 3}", "prompt": "p"} for i in range(300)]
    train, val = split_validation(records)
    assert val and train and len(train) + len(val) == 300
    assert not {r["pair"] for r in train} & {r["pair"] for r in val}


def test_training_config_errors_name_the_setting():
    with pytest.raises(LatentfuseError, match="crop 8"):
        FidelityTrainConfig(crop=8)
    with pytest.raises(LatentfuseError, match="steps 0.*lr -1"):
        FidelityTrainConfig(steps=0, lr=-1)
