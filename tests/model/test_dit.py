"""MoE-DiT: shapes, the components of paper 3.3.2 against their definitions, errors, checkpoints."""

import pytest
import torch

from latentfuse.model.attention import JointAttention
from latentfuse.model.config import DiTConfig
from latentfuse.model.dit import MoEDiT
from latentfuse.model.errors import LatentfuseError
from latentfuse.model.moe import MoEGLU, load_balancing_loss
from latentfuse.model.patchify import patchify, unpatchify
from latentfuse.model.rope import apply_rope, rope_2d_tables

torch.manual_seed(0)


def make_model(head="flow", **overrides):
    torch.manual_seed(0)
    return MoEDiT(DiTConfig.from_preset("tiny", head=head, **overrides)).eval()


def randomize_zero_inits(model):
    """adaLN-Zero and zero gates make a fresh model the identity; perturb them like a trained model."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if torch.count_nonzero(param) == 0:
                param.normal_(0, 0.05)
    return model


def inputs(b, h, w, cfg, prompt_len=7):
    z_a = torch.randn(b, cfg.latent_channels, h, w)
    z_b = torch.randn(b, cfg.latent_channels, h, w)
    prompt = torch.randn(b, prompt_len, cfg.text_dim)
    mask = torch.ones(b, prompt_len, dtype=torch.int64)
    mask[0, prompt_len - 2:] = 0
    return z_a, z_b, prompt, mask


@pytest.mark.parametrize("head", ["flow", "regression"])
@pytest.mark.parametrize("b", [1, 3])
@pytest.mark.parametrize("hw", [(16, 16), (18, 32), (32, 18)], ids=["square", "16:9", "portrait"])
def test_output_shape(head, b, hw):
    model = randomize_zero_inits(make_model(head))
    z_a, z_b, prompt, mask = inputs(b, *hw, model.config)
    kwargs = dict(z_t=torch.randn_like(z_a), t=torch.rand(b)) if head == "flow" else {}
    out, aux = model(z_a, z_b, prompt, mask, return_aux=True, **kwargs)
    assert out.shape == z_a.shape
    assert torch.isfinite(out).all()
    assert aux.dim() == 0 and aux.item() >= 1.0 - 1e-5


def test_batch_rows_are_independent():
    model = randomize_zero_inits(make_model("regression"))
    z_a, z_b, prompt, mask = inputs(3, 16, 24, model.config)
    batched = model(z_a, z_b, prompt, mask)
    single = model(z_a[1:2], z_b[1:2], prompt[1:2], mask[1:2])
    torch.testing.assert_close(batched[1:2], single, atol=1e-5, rtol=1e-5)


def test_patchify_round_trip():
    x = torch.randn(2, 16, 6, 10)
    tokens = patchify(x, 2)
    assert tokens.shape == (2, 15, 64)
    torch.testing.assert_close(unpatchify(tokens, 3, 5, 2), x)


def test_rope_scores_depend_only_on_relative_position():
    head_dim, gh, gw = 16, 6, 8
    cos, sin = rope_2d_tables(gh, gw, head_dim, base=2000.0)
    q = torch.randn(1, 1, 1, head_dim)
    k = torch.randn(1, 1, 1, head_dim)

    def score(q_pos, k_pos):
        qi = q_pos[0] * gw + q_pos[1]
        ki = k_pos[0] * gw + k_pos[1]
        qr = apply_rope(q, cos[qi:qi + 1], sin[qi:qi + 1])
        kr = apply_rope(k, cos[ki:ki + 1], sin[ki:ki + 1])
        return (qr * kr).sum()

    base = score((1, 2), (3, 1))
    shifted = score((1 + 2, 2 + 5), (3 + 2, 1 + 5))  # same offset on both axes
    torch.testing.assert_close(base, shifted, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(base, score((1, 2), (4, 1)), atol=1e-3)  # different offset, different score


def test_rope_is_a_rotation():
    cos, sin = rope_2d_tables(4, 4, 16, base=2000.0)
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(apply_rope(x, cos, sin).norm(dim=-1), x.norm(dim=-1), atol=1e-5, rtol=1e-5)


def test_value_residual_with_eta_zero_is_plain_attention():
    attn = JointAttention(32, 4)
    assert attn.eta.item() == 0.0
    x, prompt = torch.randn(2, 12, 32), torch.randn(2, 5, 32)
    rope = rope_2d_tables(3, 4, 8, base=2000.0)
    prev = torch.randn(2, 4, 17, 8)
    plain, _ = attn(x, prompt, rope)
    with_prev, _ = attn(x, prompt, rope, prev_values=prev)
    torch.testing.assert_close(plain, with_prev)
    with torch.no_grad():
        attn.eta.fill_(0.5)
    mixed, values = attn(x, prompt, rope, prev_values=prev)
    assert not torch.allclose(plain, mixed)
    _, own = attn(x, prompt, rope)
    torch.testing.assert_close(values, 0.5 * own + 0.5 * prev)  # Eq. 6


def test_prompt_padding_is_ignored():
    model = randomize_zero_inits(make_model("regression"))
    z_a, z_b, prompt, _ = inputs(1, 8, 8, model.config, prompt_len=5)
    mask = torch.tensor([[1, 1, 1, 0, 0]])
    garbage = prompt.clone()
    garbage[:, 3:] = 100.0
    torch.testing.assert_close(model(z_a, z_b, prompt, mask), model(z_a, z_b, garbage, mask))


def make_moe(dispatch="sparse"):
    torch.manual_seed(1)
    return MoEGLU(32, 48, num_experts=4, top_k=2, num_shared=1, dispatch=dispatch)


def test_moe_routes_exactly_two_experts_per_token():
    moe = make_moe()
    _, top_i, weights = moe.route(torch.randn(100, 32))
    assert ((weights > 0).sum(dim=-1) == 2).all()
    torch.testing.assert_close(weights.sum(dim=-1), torch.ones(100))
    assert top_i.shape == (100, 2)


def test_moe_dense_masked_equals_sparse_dispatch():
    moe = make_moe()
    x = torch.randn(2, 50, 32)
    sparse, loss_s = moe(x, dispatch="sparse")
    dense, loss_d = moe(x, dispatch="dense")
    torch.testing.assert_close(dense, sparse, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(loss_d, loss_s)


def test_whole_model_dense_equals_sparse():
    model = randomize_zero_inits(make_model("flow"))
    z_a, z_b, prompt, mask = inputs(2, 12, 20, model.config)
    z_t, t = torch.randn_like(z_a), torch.rand(2)
    sparse = model(z_a, z_b, prompt, mask, z_t=z_t, t=t)
    model.set_moe_dispatch("dense")
    dense = model(z_a, z_b, prompt, mask, z_t=z_t, t=t)
    torch.testing.assert_close(dense, sparse, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shape", [(1, 1, 32), (1, 7, 32), (2, 50, 32), (3, 37, 32), (1, 513, 32)])
def test_moe_grouped_equals_dense_and_sparse(shape):
    """The selected-experts-only form with static shapes computes what the other two do."""
    moe = make_moe()
    x = torch.randn(*shape)
    dense, loss_d = moe(x, dispatch="dense")
    for dispatch in ("grouped", "sparse"):
        out, loss = moe(x, dispatch=dispatch)
        torch.testing.assert_close(out, dense, atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(loss, loss_d)


@pytest.mark.parametrize("experts", [(0, 1), (2, 3), (3, 0)])
def test_moe_grouped_drops_no_token_under_fully_skewed_routing(experts):
    """Every token routed to the same two experts (n_e = T for both, 0 for the others) is the layout's
    worst case: the form has no capacity, so nothing is dropped."""
    moe = make_moe()
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[experts[0], 0] = 10.0   # x[..., 0] > 0 below: these two always win
        moe.router.weight[experts[1], 0] = 9.0
    x = torch.randn(2, 61, 32)
    x[..., 0] = x[..., 0].abs() + 1
    _, top_i, _ = moe.route(x.reshape(-1, 32))
    assert sorted(top_i.unique().tolist()) == sorted(experts)
    dense, _ = moe(x, dispatch="dense")
    torch.testing.assert_close(moe(x, dispatch="grouped")[0], dense, atol=1e-6, rtol=1e-6)


def test_moe_grouped_layout_has_a_row_for_every_slot():
    """Σ_e ceil(n_e / block) <= blocks for every split of the T·k slots over the experts (exhaustive
    over the compositions of small T), and the padded rows stay below dense's E·T at large T."""
    import itertools
    import math

    moe = make_moe()                                  # E = 4, k = 2, m = 4
    for tokens in range(1, 40):
        blocks, block = moe.grouped_layout(tokens)
        slots = tokens * moe.top_k
        for a, b, c in itertools.product(range(tokens + 1), repeat=3):
            d = slots - a - b - c
            if 0 <= d <= tokens:                      # each expert takes at most one slot per token
                assert sum(math.ceil(n / block) for n in (a, b, c, d)) <= blocks
    blocks, block = moe.grouped_layout(4096)
    assert (blocks, block) == (19, 512) and blocks * block < moe.num_experts * 4096
    with pytest.raises(ValueError, match="dispatch"):
        moe(torch.randn(1, 4, 32), dispatch="capacity")


def test_whole_model_grouped_equals_dense():
    model = randomize_zero_inits(make_model("regression"))
    z_a, z_b, prompt, mask = inputs(2, 12, 20, model.config)
    model.set_moe_dispatch("dense")
    dense = model(z_a, z_b, prompt, mask)
    model.set_moe_dispatch("grouped")
    torch.testing.assert_close(model(z_a, z_b, prompt, mask), dense, atol=1e-5, rtol=1e-5)
    with pytest.raises(LatentfuseError, match="moe dispatch"):
        model.set_moe_dispatch("capacity")


def test_presets_record_their_export_moe_dispatch():
    """Measured on ONNX Runtime CPU (README "Deployment bundle"): dense at the tiny width, grouped at the
    paper's; a config without the field (older checkpoints) exports dense."""
    assert DiTConfig.from_preset("tiny").export_moe_dispatch == "dense"
    assert DiTConfig.from_preset("paper").export_moe_dispatch == "grouped"
    legacy = {k: v for k, v in DiTConfig.from_preset("paper").to_dict().items() if k != "export_moe_dispatch"}
    assert DiTConfig.from_dict(legacy).export_moe_dispatch == "dense"
    assert DiTConfig(moe_dispatch="grouped").moe_dispatch == "grouped"
    with pytest.raises(LatentfuseError, match="export_moe_dispatch must be one of dense, grouped"):
        DiTConfig(export_moe_dispatch="sparse")


def test_load_balancing_loss_is_minimal_for_uniform_router():
    tokens, experts = 64, 4
    uniform = torch.full((tokens, experts), 1 / experts)
    balanced_index = torch.stack([torch.arange(tokens) % 4, (torch.arange(tokens) + 1) % 4], dim=1)
    assert load_balancing_loss(uniform, balanced_index, experts).item() == pytest.approx(1.0)
    moe = make_moe()
    with torch.no_grad():
        moe.router.weight.zero_()  # uniform router probabilities
    _, loss_uniform = moe(torch.randn(1, 64, 32))
    assert loss_uniform.item() == pytest.approx(1.0, abs=1e-6)
    with torch.no_grad():
        moe.router.weight.normal_(0, 1.0)
        moe.router.weight[0] += 3.0  # skew towards expert 0
    x = torch.randn(1, 64, 32).abs()
    _, loss_skewed = moe(x)
    assert loss_skewed.item() > 1.1


@pytest.mark.parametrize("head", ["flow", "regression"])
def test_gradients_reach_every_parameter(head):
    model = randomize_zero_inits(make_model(head)).train()
    z_a, z_b, prompt, mask = inputs(2, 8, 12, model.config)
    kwargs = dict(z_t=torch.randn_like(z_a), t=torch.rand(2)) if head == "flow" else {}
    out, aux = model(z_a, z_b, prompt, mask, return_aux=True, **kwargs)
    (out.square().mean() + 0.01 * aux).backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or torch.count_nonzero(p.grad) == 0]
    assert not dead, f"no gradient reaches: {dead}"


def test_gradient_checkpointing_matches():
    def grads(checkpointing):
        model = randomize_zero_inits(make_model("flow", gradient_checkpointing=checkpointing)).train()
        torch.manual_seed(3)
        z_a, z_b, prompt, mask = inputs(2, 8, 8, model.config)
        model(z_a, z_b, prompt, mask, z_t=torch.randn_like(z_a), t=torch.rand(2)).sum().backward()
        return {n: torch.zeros_like(p) if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}

    plain, ckpt = grads(False), grads(True)
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], atol=1e-5, rtol=1e-4, msg=name)


def test_checkpoint_round_trip(tmp_path):
    model = randomize_zero_inits(make_model("flow"))
    model.save_pretrained(tmp_path / "ckpt")
    loaded = MoEDiT.from_pretrained(tmp_path / "ckpt").eval()
    assert loaded.config == model.config
    z_a, z_b, prompt, mask = inputs(1, 8, 8, model.config)
    kw = dict(z_t=torch.randn_like(z_a), t=torch.tensor([0.3]))
    torch.testing.assert_close(loaded(z_a, z_b, prompt, mask, **kw), model(z_a, z_b, prompt, mask, **kw), atol=0, rtol=0)
    assert not list(tmp_path.glob(".ckpt.tmp-*"))


def test_checkpoint_mismatch_is_a_clear_error(tmp_path):
    make_model("flow").save_pretrained(tmp_path / "flow")
    regression = make_model("regression")
    regression.save_pretrained(tmp_path / "bad")
    (tmp_path / "bad" / "config.json").write_text((tmp_path / "flow" / "config.json").read_text())
    with pytest.raises(LatentfuseError, match="does not match its config"):
        MoEDiT.from_pretrained(tmp_path / "bad")
    (tmp_path / "bad" / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(LatentfuseError, match="cannot read"):
        MoEDiT.from_pretrained(tmp_path / "bad")
    with pytest.raises(LatentfuseError, match="not a MoEDiT checkpoint"):
        MoEDiT.from_pretrained(tmp_path / "missing")


def test_latent_not_multiple_of_patch_is_a_clear_error():
    model = make_model("regression")
    z_a, z_b, prompt, mask = inputs(1, 9, 8, model.config)
    with pytest.raises(LatentfuseError, match=r"9x8 is not a multiple of the patch size 2"):
        model(z_a, z_b, prompt, mask)


def test_channel_mismatch_is_a_clear_error():
    model = make_model("regression")
    z_a, z_b, prompt, mask = inputs(1, 8, 8, model.config)
    with pytest.raises(LatentfuseError, match="has 4 channels but the model expects 16"):
        model(z_a[:, :4], z_b[:, :4], prompt, mask)


def test_flow_head_needs_timestep():
    model = make_model("flow")
    z_a, z_b, prompt, mask = inputs(1, 8, 8, model.config)
    with pytest.raises(LatentfuseError, match="needs the noisy latent"):
        model(z_a, z_b, prompt, mask)


def test_invalid_config_is_a_clear_error():
    with pytest.raises(LatentfuseError, match="not divisible by num_heads"):
        DiTConfig.from_preset("tiny", hidden_size=130)
    with pytest.raises(LatentfuseError, match="unknown preset"):
        DiTConfig.from_preset("huge")
