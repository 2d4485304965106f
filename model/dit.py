"""The fusion-adapted MoE Diffusion Transformer of MMAIF (paper 3.3.2, Fig. 3c).

    tokens   = Embed(patchify([Z_t ‖] Z_a ‖ Z_b))                image stream (Z_t for the flow head)
    c        = Embed_c(patchify(Z_a ‖ Z_b)) [+ TimestepEmbed(t)]  per-token condition (Eq. 7)
    P        = Linear(LN(prompt embeddings))                      prompt tokens for joint attention
    each block:  x += pe (Eq. 5) → NAFBlock → AdaLN → joint attention with 2D RoPE and value
                 residual (Eq. 6) → gate α1 → AdaLN → MoE GLU → gate α2
    out      = unpatchify(Linear(AdaLN_final(x)))                 16-channel latent

Two heads share this backbone: ``flow`` predicts the velocity v_θ(Z_t, t, Z_a, Z_b, P) (Eq. 11) and
``regression`` predicts the fused latent f_θ(Z_a, Z_b, P) directly (Eq. 8).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from latentfuse.model.adaln import LoRAAdaLN, NormNoAffine, modulate
from latentfuse.model.atomic import atomic_dir
from latentfuse.model.attention import JointAttention
from latentfuse.model.config import DISPATCHES, DiTConfig
from latentfuse.model.errors import LatentfuseError
from latentfuse.model.moe import MoEGLU
from latentfuse.model.nafblock import NAFBlock
from latentfuse.model.patchify import check_latent, patchify, unpatchify
from latentfuse.model.posembed import BlockPositionalEmbedding
from latentfuse.model.rope import rope_2d_tables
from latentfuse.model.timestep import TimestepEmbedder

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class DiTBlock(nn.Module):
    def __init__(self, cfg: DiTConfig, first: bool = False):
        super().__init__()
        d = cfg.hidden_size
        self.naf = NAFBlock(d, cfg.naf_expand)
        self.adaln = LoRAAdaLN(d, cfg.lora_rank, num_modulations=6)
        self.norm1 = NormNoAffine(d)
        self.attn = JointAttention(d, cfg.num_heads, value_residual=not first)
        self.norm2 = NormNoAffine(d)
        self.moe = MoEGLU(d, cfg.expert_hidden, cfg.num_experts, cfg.top_k, cfg.num_shared_experts, cfg.moe_dispatch)

    def forward(self, x, cond, prompt, pe, rope, key_mask, prev_values, grid_h: int, grid_w: int):
        x = x + pe
        x = self.naf.forward_tokens(x, grid_h, grid_w)
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaln(cond)
        attn_out, values = self.attn(modulate(self.norm1(x), shift1, scale1), prompt, rope, key_mask, prev_values)
        x = x + gate1 * attn_out
        moe_out, balance_loss = self.moe(modulate(self.norm2(x), shift2, scale2))
        x = x + gate2 * moe_out
        return x, values, balance_loss


class FinalLayer(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.norm = NormNoAffine(cfg.hidden_size)
        self.adaln = LoRAAdaLN(cfg.hidden_size, cfg.lora_rank, num_modulations=2)
        self.linear = nn.Linear(cfg.hidden_size, cfg.patch_dim)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x, cond):
        shift, scale = self.adaln(cond)
        return self.linear(modulate(self.norm(x), shift, scale))


class MoEDiT(nn.Module):
    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = cfg = config
        d = cfg.hidden_size
        streams = 3 if cfg.head == "flow" else 2  # [Z_t,] Z_a, Z_b
        self.x_embed = nn.Linear(streams * cfg.patch_dim, d)
        self.cond_embed = nn.Linear(2 * cfg.patch_dim, d)
        self.t_embed = TimestepEmbedder(d, cfg.timestep_freq_dim) if cfg.head == "flow" else None
        self.prompt_norm = nn.LayerNorm(cfg.text_dim, eps=1e-6)
        self.prompt_proj = nn.Linear(cfg.text_dim, d)
        self.pos_embed = BlockPositionalEmbedding(d, cfg.pe_hidden)
        self.blocks = nn.ModuleList(DiTBlock(cfg, first=(i == 0)) for i in range(cfg.depth))
        self.final = FinalLayer(cfg)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        z_a: torch.Tensor,
        z_b: torch.Tensor,
        prompt_embeds: torch.Tensor,
        prompt_mask: torch.Tensor | None = None,
        z_t: torch.Tensor | None = None,
        t: torch.Tensor | None = None,
        return_aux: bool = False,
    ):
        """Predict the velocity (flow head: needs ``z_t`` and ``t`` [B] in [0, 1]) or the fused latent
        (regression head). Latents are [B, z, h, w] with h, w multiples of the patch size; prompt
        embeddings [B, L, text_dim] with an optional mask [B, L] (1 = real token).

        Returns the latent [B, z, h, w], or (latent, load-balancing loss) with ``return_aux``.
        """
        cfg = self.config
        if not torch.compiler.is_compiling():
            self._check_inputs(z_a, z_b, prompt_embeds, prompt_mask, z_t, t)
        p = cfg.patch_size
        b, _, h, w = z_a.shape
        gh, gw = h // p, w // p

        pair = torch.cat([z_a, z_b], dim=1)
        cond = self.cond_embed(patchify(pair, p))
        stream = torch.cat([z_t, pair], dim=1) if cfg.head == "flow" else pair
        x = self.x_embed(patchify(stream, p))
        if self.t_embed is not None:
            cond = cond + self.t_embed(t)[:, None, :]

        prompt = self.prompt_proj(self.prompt_norm(prompt_embeds.to(x.dtype)))
        key_mask = None
        if prompt_mask is not None:
            image_keys = torch.ones(b, gh * gw, dtype=torch.bool, device=x.device)
            key_mask = torch.cat([image_keys, prompt_mask.to(torch.bool)], dim=1)[:, None, None, :]

        pe = self.pos_embed(gh, gw, device=x.device, dtype=x.dtype)
        rope = rope_2d_tables(gh, gw, cfg.head_dim, cfg.rope_base, device=x.device)
        values = None
        balance = x.new_zeros((), dtype=torch.float32)
        for block in self.blocks:
            if cfg.gradient_checkpointing and self.training:
                x, values, loss = checkpoint(block, x, cond, prompt, pe, rope, key_mask, values, gh, gw,
                                             use_reentrant=False)
            else:
                x, values, loss = block(x, cond, prompt, pe, rope, key_mask, values, gh, gw)
            balance = balance + loss
        out = unpatchify(self.final(x, cond), gh, gw, p)
        return (out, balance / cfg.depth) if return_aux else out

    def _check_inputs(self, z_a, z_b, prompt_embeds, prompt_mask, z_t, t) -> None:
        cfg = self.config
        check_latent("z_a", z_a, cfg.latent_channels, cfg.patch_size)
        check_latent("z_b", z_b, cfg.latent_channels, cfg.patch_size)
        if z_a.shape != z_b.shape:
            raise LatentfuseError(f"z_a {tuple(z_a.shape)} and z_b {tuple(z_b.shape)} must have the same shape")
        b = z_a.shape[0]
        if prompt_embeds.dim() != 3 or prompt_embeds.shape[0] != b or prompt_embeds.shape[2] != cfg.text_dim:
            raise LatentfuseError(
                f"prompt_embeds must be [B={b}, L, text_dim={cfg.text_dim}], got {tuple(prompt_embeds.shape)}")
        if prompt_mask is not None and tuple(prompt_mask.shape) != tuple(prompt_embeds.shape[:2]):
            raise LatentfuseError(
                f"prompt_mask must be [B, L] = {tuple(prompt_embeds.shape[:2])}, got {tuple(prompt_mask.shape)}")
        if cfg.head == "flow":
            if z_t is None or t is None:
                raise LatentfuseError("the flow head needs the noisy latent z_t and the timestep t")
            if z_t.shape != z_a.shape:
                raise LatentfuseError(f"z_t {tuple(z_t.shape)} must have the shape of z_a {tuple(z_a.shape)}")
            if t.dim() != 1 or t.shape[0] != b:
                raise LatentfuseError(f"t must be a 1-D tensor of B={b} timesteps, got shape {tuple(t.shape)}")
        elif z_t is not None or t is not None:
            raise LatentfuseError("the regression head takes no z_t / t (it predicts the fused latent directly)")

    # ------------------------------------------------------------ bookkeeping
    def param_counts(self) -> dict[str, int]:
        """Total parameters and parameters active per token (top-k of the routed experts)."""
        cfg = self.config
        total = sum(p.numel() for p in self.parameters())
        per_expert = sum(p.numel() for p in self.blocks[0].moe.experts[0].parameters()) if cfg.depth else 0
        inactive = cfg.depth * (cfg.num_experts - cfg.top_k) * per_expert
        return {"total": total, "active": total - inactive}

    def set_moe_dispatch(self, dispatch: str) -> None:
        """Switch every MoE layer between ``sparse``, ``dense`` and ``grouped`` dispatch (the last two are
        TensorRT-safe; ``model.moe``)."""
        if dispatch not in DISPATCHES:
            raise LatentfuseError(f"moe dispatch must be one of {', '.join(DISPATCHES)}, got {dispatch!r}")
        for block in self.blocks:
            block.moe.dispatch = dispatch

    def save_pretrained(self, directory: str | Path, overwrite: bool = True) -> Path:
        from safetensors.torch import save_file

        directory = Path(directory)
        with atomic_dir(directory, overwrite=overwrite) as tmp:
            (tmp / CONFIG_NAME).write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")
            state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
            save_file(state, str(tmp / WEIGHTS_NAME), metadata={"format": "pt", "model": "latentfuse.MoEDiT"})
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, dtype: torch.dtype | None = None) -> "MoEDiT":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        directory = Path(directory)
        if not (directory / CONFIG_NAME).is_file() or not (directory / WEIGHTS_NAME).is_file():
            raise LatentfuseError(f"{directory} is not a MoEDiT checkpoint (needs {CONFIG_NAME} and {WEIGHTS_NAME})")
        model = cls(DiTConfig.from_json(directory / CONFIG_NAME))
        try:
            state = load_file(str(directory / WEIGHTS_NAME))
        except (SafetensorError, OSError) as err:
            raise LatentfuseError(f"cannot read {directory / WEIGHTS_NAME}: {err}") from None
        expected = model.state_dict()
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        wrong = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
        if missing or unexpected or wrong:
            details = []
            if missing:
                details.append(f"missing {len(missing)} tensors (e.g. {missing[0]})")
            if unexpected:
                details.append(f"unexpected {len(unexpected)} tensors (e.g. {unexpected[0]})")
            if wrong:
                k = wrong[0]
                details.append(f"{len(wrong)} shape mismatches (e.g. {k}: {tuple(state[k].shape)} vs {tuple(expected[k].shape)})")
            raise LatentfuseError(f"{directory / WEIGHTS_NAME} does not match its config: " + "; ".join(details))
        model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})
        if dtype is not None:
            model = model.to(dtype)
        return model
