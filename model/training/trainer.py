"""The DiT trainer: regression (Eq. 8) or flow matching (Eq. 11) with the auxiliary fusion loss (Eq. 9-10),
the MoE load-balancing loss, cautious AdamW + cosine warmup (MMAIF 4.2), gradient accumulation, bf16
autocast, gradient checkpointing, EMA, continual VIF → MEF → MFF training with EWC and replay
(FusionFM), exact resume, and DistributedDataParallel.

Randomness is a pure function of (seed, optimizer step, micro-step): every micro-step draws its
*global* batch (indices, noise, timesteps) from a fresh ``torch.Generator`` seeded from those numbers,
and process r of W trains on slice r of it. Hence

* a resumed run continues bit-for-bit (nothing but the step number is needed to continue the stream);
* W processes with batch B/W each compute the same mean loss as one process with batch B: every loss
  term is a batch mean and DDP averages the gradients of equal shards. The exception is the MoE
  load-balancing loss (Switch Transformer), a product of two batch statistics E·Σ f_e·P_e: like
  Megatron / DeepSpeed, each process computes it on its own shard, so a run with
  ``load_balance_weight > 0`` is equivalent to the single-process one only up to that term.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from latentfuse.model import flow as fm
from latentfuse.model.errors import LatentfuseError
from latentfuse.model.training import checkpoint as ckpt
from latentfuse.model.training.config import TrainConfig
from latentfuse.model.training.data import LatentDataset
from latentfuse.model.training.ema import EMA
from latentfuse.model.training.ewc import EWC, accumulate_squared_grads, fisher_accumulator
from latentfuse.model.training.losses import aux_fusion_loss, flow_inputs, label_loss, mse
from latentfuse.model.training.optim import build_optimizer, build_scheduler
from latentfuse.model.training.replay import ReservoirBuffer

LOG_COLUMNS = ("step", "task", "lr", "loss", "main", "aux", "label", "balance", "ewc", "grad_norm", "samples_per_s")
_MIX = 0x9E3779B97F4A7C15  # golden-ratio constant: decorrelates neighbouring seeds


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> DistInfo:
    """Join the process group ``torchrun`` describes in the environment (NCCL on GPUs, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def current_dist() -> DistInfo:
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))
    return DistInfo()


def resolve_device(name: str, info: DistInfo) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise LatentfuseError(f"run.device = {name!r} but CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    return device


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu"  # CPU autocast supports bf16 (slow without AVX512-BF16 / AMX)


def step_generator(seed: int, *keys: int) -> torch.Generator:
    """A CPU generator seeded by (seed, keys): the whole randomness of one micro-step."""
    value = seed & 0xFFFFFFFF
    for k in keys:
        value = (value * _MIX + int(k) + 1) & 0xFFFFFFFFFFFFFFFF
    return torch.Generator().manual_seed(value & 0x7FFFFFFFFFFFFFFF)


def decode_unclamped(vae, latents: torch.Tensor) -> torch.Tensor:
    """VAE decode without the output clamp, so the aux loss still has gradients outside [-1, 1]."""
    z = latents / vae.scaling_factor + vae.shift_factor
    inner = vae.vae
    if getattr(inner, "post_quant_conv", None) is not None:
        z = inner.post_quant_conv(z)
    return inner.decoder(z)


class Trainer:
    def __init__(self, cfg: TrainConfig, dit: nn.Module, dataset: LatentDataset, vae: nn.Module | None = None,
                 device: torch.device | str = "cpu", dist_info: DistInfo | None = None):
        self.cfg = cfg
        self.dist = dist_info or current_dist()
        self.device = torch.device(device)
        self.dataset = dataset
        if cfg.optim.batch_size % self.dist.world_size:
            raise LatentfuseError(f"optim.batch_size={cfg.optim.batch_size} (global) is not divisible by the "
                                  f"{self.dist.world_size} processes")
        self.local_batch = cfg.optim.batch_size // self.dist.world_size
        if dit.config.head != cfg.model.head:
            raise LatentfuseError(f"the DiT has a {dit.config.head!r} head but model.head = {cfg.model.head!r}")
        if cfg.model.head == "flow":  # the saved DiT declares the prior its velocity field starts from
            prior, sigma = fm.check_prior(cfg.flow.prior, cfg.flow.prior_sigma)
            dit.config = dit.config.replace(prior=prior, prior_sigma=sigma)
        self.raw = dit.to(self.device).train()
        if self.dist.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            # sparse MoE dispatch may leave an expert without tokens on one process
            self.model = DDP(self.raw, device_ids=ids, find_unused_parameters=True)
        else:
            self.model = self.raw
        self.use_aux = cfg.loss.aux_weight > 0 or cfg.loss.label_weight > 0  # both decode Z̃
        self.vae = None
        if self.use_aux:
            if vae is None:
                raise LatentfuseError("loss.aux_weight / label_weight > 0 need the VAE decoder (Eq. 9); none was given")
            if not dataset.has_images:
                raise LatentfuseError("loss.aux_weight / label_weight > 0 need images in the latent cache")
            if cfg.loss.label_weight > 0 and dataset.x_gt is None:
                raise LatentfuseError("loss.label_weight > 0 needs the label images in the latent cache; "
                                      "delete the cache to rebuild it")
            self.vae = vae.to(self.device).eval()
            self.vae.requires_grad_(False)  # frozen (paper 3.4.1); gradients still reach Z̃ through it
        self.params = [p for p in self.raw.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(self.params, cfg.optim)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim)
        self.ema = EMA(self.raw, cfg.ema.decay) if cfg.ema.decay > 0 else None
        self.ewc = EWC(cfg.continual.ewc_lambda)
        self.replay = ReservoirBuffer(cfg.continual.replay_size, cfg.continual.replay_ratio)
        self.step = 0
        self.phases = cfg.task_phases()
        self.consolidated = 0  # phases whose end-of-task EWC consolidation has run
        self.bf16 = cfg.run.precision == "bf16" and bf16_supported(self.device)
        if self.bf16 and self.device.type == "cpu" and self.dist.is_main:
            warnings.warn("bf16 autocast on a CPU without native bf16 units is emulated and can be ~10x slower "
                          "than fp32 (measured: paper preset 248 s vs 24.5 s per step); set run.precision = 'fp32'",
                          stacklevel=2)
        self.output_dir = Path(cfg.run.output_dir)
        self.log_path = self.output_dir / "train_log.csv"
        self.history: list[dict] = []

    # ------------------------------------------------------------------ schedule of tasks
    def phase_at(self, step: int) -> tuple[int, str | None, int]:
        """(phase index, task, end of the phase: first step after it) of optimizer step ``step`` (0-based)."""
        end = 0
        for i, (task, steps) in enumerate(self.phases):
            end += steps
            if step < end:
                return i, task, end
        return len(self.phases) - 1, self.phases[-1][0], end

    # ------------------------------------------------------------------ batches
    def _global_indices(self, task: str | None, gen: torch.Generator, batch: int,
                        replay_gen: torch.Generator | None) -> torch.Tensor:
        pool = self.dataset.indices_for(task)
        n_replay = 0
        others = None
        if task is not None and self.replay.enabled and len(self.replay):
            items = torch.tensor(self.replay.items, dtype=torch.long)
            others = items[self.dataset.task_ids[items] != self.dataset.tasks.index(task)]
            if others.numel():
                n_replay = self.replay.replay_count(batch)
        current = pool[torch.randint(pool.numel(), (batch - n_replay,), generator=gen)]
        parts = [current]
        if n_replay:
            parts.append(others[torch.randint(others.numel(), (n_replay,), generator=gen)])
        if replay_gen is not None and self.replay.enabled:
            self.replay.add(current, replay_gen)  # own stream: replay on/off leaves the batches alike
        idx = torch.cat(parts)
        return idx[torch.randperm(idx.numel(), generator=gen)]

    def _local(self, x: torch.Tensor) -> torch.Tensor:
        r, b = self.dist.rank, self.local_batch
        return x[r * b:(r + 1) * b]

    def _draw(self, task: str | None, gen: torch.Generator, batch: int, replay_gen: torch.Generator | None = None):
        """This process's shard of one global micro-batch: (row indices, noise ε, timesteps t)."""
        cfg = self.cfg
        idx = self._global_indices(task, gen, batch, replay_gen)
        shape = (batch,) + tuple(self.dataset.z_a.shape[1:])
        eps = torch.randn(shape, generator=gen)  # always drawn: the stream does not depend on the head
        t = fm.sample_timesteps(batch, cfg.flow.timesteps, generator=gen, loc=cfg.flow.logit_loc,
                                scale=cfg.flow.logit_scale)
        return self._local(idx), self._local(eps), self._local(t)

    def _forward_losses(self, task: str | None, gen: torch.Generator, batch: int,
                        replay_gen: torch.Generator | None, with_aux: bool) -> dict:
        """Loss terms of one micro-batch on this process (means over its shard)."""
        return self._losses(*self._draw(task, gen, batch, replay_gen), with_aux, self.model)

    def _losses(self, idx, eps, t, with_aux: bool, model) -> dict:
        cfg = self.cfg
        data = self.dataset.batch(idx, self.device, with_images=with_aux)
        eps, t = eps.to(self.device), t.to(self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            if cfg.model.head == "flow":
                z_t, target = flow_inputs(data["z_gt"], data["z_a"], data["z_b"], t, eps,
                                          cfg.flow.prior, cfg.flow.prior_sigma)
                pred, balance = model(data["z_a"], data["z_b"], data["prompt_embeds"], data["prompt_mask"],
                                      z_t=z_t, t=t, return_aux=True)
                main = mse(pred, target)
                z_tilde = fm.predicted_data(z_t, pred.float(), t) if with_aux else None
            else:
                pred, balance = model(data["z_a"], data["z_b"], data["prompt_embeds"], data["prompt_mask"],
                                      return_aux=True)
                main = mse(pred, data["z_gt"])
                z_tilde = pred
            aux = label = main.new_zeros(())
            if with_aux:
                k = cfg.loss.aux_samples or z_tilde.shape[0]  # decoding is the costly part: maybe a subset
                fused = decode_unclamped(self.vae, z_tilde[:k])
                weights = None
                if cfg.model.head == "flow" and cfg.loss.aux_min_t > 0:
                    weights = (t[:k] >= cfg.loss.aux_min_t).float()
                if cfg.loss.aux_weight > 0:
                    aux = aux_fusion_loss(fused, [data["x_a"][:k], data["x_b"][:k]], weights)
                if cfg.loss.label_weight > 0:
                    label = label_loss(fused, data["x_gt"][:k], weights)
        return {"main": main, "aux": aux, "label": label, "balance": balance.float()}

    def _weighted(self, terms: dict):
        """Eq. 10 (+ the optional label term): the objective from its parts."""
        w = self.cfg.loss
        return (terms["main"] + w.aux_weight * terms["aux"] + w.label_weight * terms["label"]
                + w.load_balance_weight * terms["balance"])

    # ------------------------------------------------------------------ one optimizer step
    def train_step(self) -> dict:
        cfg = self.cfg
        phase, task, _ = self.phase_at(self.step)
        accum = cfg.optim.grad_accum
        totals = {"main": 0.0, "aux": 0.0, "label": 0.0, "balance": 0.0}
        for micro in range(accum):
            gen = step_generator(cfg.run.seed, 0, self.step, micro)
            sync = micro == accum - 1 or self.dist.world_size == 1
            ctx = self.model.no_sync() if not sync else contextlib.nullcontext()
            with ctx:
                terms = self._forward_losses(task, gen, cfg.optim.batch_size,
                                             step_generator(cfg.run.seed, 3, self.step, micro), self.use_aux)
                loss = self._weighted(terms)
                (loss / accum).backward()
            for k in totals:
                totals[k] += float(terms[k].detach()) / accum
        ewc_value = 0.0
        if self.ewc.active:
            penalty = self.ewc.penalty(self.raw)  # identical on every process: no all-reduce needed
            penalty.backward()
            ewc_value = float(penalty.detach())
        for p in self.params:  # unused experts: zero gradients, so AdamW treats every process alike
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        if cfg.optim.grad_clip > 0:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, cfg.optim.grad_clip))
        else:
            grad_norm = float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in self.params])))
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.raw)
        totals = self._mean_over_processes(totals)
        total = self._weighted(totals) + ewc_value
        self.step += 1
        return {"step": self.step, "task": task or "all", "lr": lr, "loss": total, **totals, "ewc": ewc_value,
                "grad_norm": grad_norm}

    def _mean_over_processes(self, values: dict) -> dict:
        if self.dist.world_size == 1:
            return values
        keys = sorted(values)
        t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return {k: float(v) / self.dist.world_size for k, v in zip(keys, t.tolist())}

    # ------------------------------------------------------------------ continual learning
    def consolidate(self, task: str, phase: int) -> None:
        """End of a task: diagonal Fisher on ``fisher_batches`` batches of it, then re-anchor EWC.

        F_i = mean over samples of (∂L_n/∂θ_i)² with per-sample gradients (the empirical Fisher of
        Kirkpatrick et al.; the square of a batch-mean gradient would vanish at a minimum). Each
        process handles its shard through the unwrapped module, then the sums are all-reduced.
        """
        if self.ewc.lam <= 0:
            return
        acc = fisher_accumulator(self.raw)
        n = self.cfg.continual.fisher_batches
        self.optimizer.zero_grad(set_to_none=True)
        for i in range(n):
            gen = step_generator(self.cfg.run.seed, 1, phase, i)
            idx, eps, t = self._draw(task, gen, self.cfg.optim.batch_size)
            for j in range(idx.numel()):
                terms = self._losses(idx[j:j + 1], eps[j:j + 1], t[j:j + 1], False, self.raw)
                terms["main"].backward()
                accumulate_squared_grads(self.raw, acc)
                self.optimizer.zero_grad(set_to_none=True)
        if self.dist.world_size > 1:
            for value in acc.values():
                dist.all_reduce(value)
        self.ewc.consolidate(self.raw, acc, n * self.cfg.optim.batch_size)

    # ------------------------------------------------------------------ evaluation helper
    @torch.no_grad()
    def evaluate(self, task: str | None, batches: int = 4, seed: int = 12345) -> float:
        """Mean main loss (Eq. 8 or 11) over fixed batches of ``task``: the forgetting measurement."""
        was = self.raw.training
        self.raw.eval()
        values = []
        for i in range(batches):
            gen = step_generator(seed, 2, i)
            terms = self._forward_losses(task, gen, self.cfg.optim.batch_size, None, False)
            values.append(float(terms["main"]))
        self.raw.train(was)
        return float(sum(values) / len(values))

    # ------------------------------------------------------------------ the loop
    def fit(self, stop_at: int | None = None) -> list[dict]:
        """Train until ``optim.steps`` (or ``stop_at``, to simulate an interruption); returns the log rows."""
        from tqdm import tqdm

        cfg = self.cfg
        end = cfg.optim.steps if stop_at is None else min(stop_at, cfg.optim.steps)
        if self.dist.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            self._prepare_log()
        bar = tqdm(total=cfg.optim.steps, initial=self.step, disable=not (cfg.run.progress and self.dist.is_main),
                   desc=f"train {cfg.model.head}", unit="step", dynamic_ncols=True)
        samples = cfg.optim.batch_size * cfg.optim.grad_accum
        while self.step < end:
            start = time.perf_counter()
            row = self.train_step()
            row["samples_per_s"] = samples / max(1e-9, time.perf_counter() - start)
            phase, task, phase_end = self.phase_at(self.step - 1)
            if task is not None and self.step == phase_end and phase < len(self.phases) - 1 and phase >= self.consolidated:
                self.consolidate(task, phase)
                self.consolidated = phase + 1
            self.history.append(row)
            if self.dist.is_main and (self.step % cfg.run.log_every == 0 or self.step == end):
                self._write_log(row)
            if not all(math.isfinite(row[k]) for k in ("main", "aux", "label", "balance")):
                raise LatentfuseError(f"training diverged at step {self.step}: losses {row}")
            bar.update(1)
            bar.set_postfix(loss=f"{row['loss']:.4f}", task=row["task"])
            if cfg.run.checkpoint_every and self.step % cfg.run.checkpoint_every == 0 and self.step < end:
                self.save_checkpoint()
        bar.close()
        self.save_checkpoint()
        if self.dist.is_main and cfg.run.plot and self.step >= cfg.optim.steps:
            from latentfuse.model.training.plot import plot_log

            plot_log(self.log_path, self.output_dir / "loss_curves.png")
        return self.history

    # ------------------------------------------------------------------ logging
    def _prepare_log(self) -> None:
        """Start the CSV, or on resume keep the rows up to the resumed step (drop any later ones)."""
        rows = []
        if self.log_path.is_file() and self.step > 0:
            with self.log_path.open(newline="") as fh:
                rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= self.step]
        with self.log_path.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=LOG_COLUMNS)
            writer.writeheader()
            writer.writerows(rows)

    def _write_log(self, row: dict) -> None:
        with self.log_path.open("a", newline="") as fh:
            csv.DictWriter(fh, fieldnames=LOG_COLUMNS).writerow(
                {k: (f"{row[k]:.8g}" if isinstance(row[k], float) else row[k]) for k in LOG_COLUMNS})

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {
            "step": self.step, "consolidated": self.consolidated, "world_size": self.dist.world_size,
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(), "rng": rng,
            "ema": self.ema.state_dict() if self.ema else None, "ewc": self.ewc.state_dict(),
            "replay": self.replay.state_dict(), "config": self.cfg.to_dict(),
            "dit_config": self.raw.config.to_dict(),
        }

    def save_checkpoint(self) -> Path | None:
        path = ckpt.step_dir(self.output_dir, self.step)
        if self.dist.is_main:
            extra = {"dit_ema": self.ema.copy_to(self.raw)} if self.ema is not None else None
            ckpt.save_checkpoint(path, self.raw, self.state_dict(), keep=self.cfg.run.keep_checkpoints,
                                 extra_models=extra)
        if self.dist.world_size > 1:
            dist.barrier()
        return path

    def load_checkpoint(self, path: str | Path) -> Path:
        """Restore weights, optimizer, scheduler, RNG, EMA, EWC and replay; continue exactly."""
        directory, dit, state = ckpt.load_checkpoint(path)
        if dit.config.to_dict() != self.raw.config.to_dict():
            diffs = [f"{k}: {v!r} vs {self.raw.config.to_dict().get(k)!r}" for k, v in dit.config.to_dict().items()
                     if self.raw.config.to_dict().get(k) != v]
            raise LatentfuseError(f"checkpoint {directory} holds a different DiT ({'; '.join(diffs)})")
        diffs = ckpt.config_differences(state["config"], self.cfg.to_dict())
        if diffs:
            raise LatentfuseError(f"checkpoint {directory} was trained with another config; differing keys: "
                                  + "; ".join(diffs))
        try:
            self.raw.load_state_dict(dit.state_dict())
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            if self.ema is not None:
                if state.get("ema") is None:
                    raise LatentfuseError(f"checkpoint {directory} has no EMA state but ema.decay > 0")
                self.ema.load_state_dict(state["ema"], self.device)
            self.ewc.load_state_dict(state["ewc"], self.device)
            self.replay.load_state_dict(state["replay"])
        except (KeyError, ValueError, RuntimeError) as err:
            if isinstance(err, LatentfuseError):
                raise
            raise LatentfuseError(f"checkpoint {directory} does not match this trainer: {err}") from None
        torch.set_rng_state(state["rng"]["torch"])
        if "cuda" in state["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)
        self.step = int(state["step"])
        self.consolidated = int(state["consolidated"])
        return directory

