"""Pairs fused together as one batch: :class:`GatheringBackend` merges the graph calls of pairs fused in
lockstep threads (VAE encode, each DiT step, VAE decode, the fidelity decoder) into one batched backend call
and hands each pair its rows; the serving path's dynamic batching (:mod:`latentfuse.runtime.serve`) runs on it.
Each pair keeps its own seeded noise, sampler and detail stage, so a batched pair is the pair fused alone.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Sequence

import numpy as np

from latentfuse.model.geometry import LATENT_FACTOR
from latentfuse.runtime.backends.base import Backend, WrappedBackend
from latentfuse.runtime.memory import VAE_MAX_SIDE

VAE_MERGE_PIXELS = 2 * VAE_MAX_SIDE ** 2  # most pixels in one merged VAE call: one pair at the VAE's whole-image limit
GROUP_TIMEOUT_S = 600.0  # one graph call of a batched group; a wedged group gives up instead of hanging


class _Diverged(RuntimeError):
    """The pairs of a group asked for different graph calls: they are fused one by one instead."""


class _Group:
    """N pairs fused in lockstep: each graph call waits for all N, then one batched call serves them."""

    def __init__(self, n: int, run: Callable[[str, list[tuple]], list]):
        self.calls: list[tuple[str, tuple] | None] = [None] * n
        self.out: list[Any] = [None] * n
        self.error: BaseException | None = None
        self._run = run
        self.barrier = threading.Barrier(n, action=self._merged)

    def _merged(self) -> None:
        # runs in the last thread to arrive, before any is released
        try:
            methods = {c[0] for c in self.calls}
            if len(methods) != 1:
                raise _Diverged(f"graph calls differ within a group: {sorted(methods)}")
            self.out = self._run(methods.pop(), [c[1] for c in self.calls])
            self.error = None
        except BaseException as err:  # noqa: BLE001 - handed to every waiting thread
            self.error = err

    def call(self, slot: int, method: str, args: tuple):
        self.calls[slot] = (method, args)
        self.barrier.wait(timeout=GROUP_TIMEOUT_S)
        if self.error is not None:
            raise self.error
        return self.out[slot]


class GatheringBackend(WrappedBackend):
    """A view of ``inner`` that, for threads fused as one group (:meth:`run_group`), merges their graph
    calls along the batch axis into one call and hands each thread its rows. Outside a group (one pair)
    every call goes straight through."""

    GATHERED = ("encode_images", "velocity", "regress", "decode", "fidelity")

    def __init__(self, inner: Backend):
        super().__init__(inner)
        self._local = threading.local()
        self._lock = threading.Lock()  # one call into the inner backend at a time (TensorRT: one context)
        self.merged_calls = 0  # batched graph calls made for groups (a test reads it)

    # ------------------------------------------------------------------ graph calls
    def _dispatch(self, method: str, *args):
        group = getattr(self._local, "group", None)
        if group is None:
            with self._lock:
                return getattr(self.inner, method)(*args)
        return group.call(self._local.slot, method, args)

    def encode_images(self, images):
        return self._dispatch("encode_images", images)

    def velocity(self, z_t, t, z_a, z_b, embeds, mask):
        return self._dispatch("velocity", z_t, t, z_a, z_b, embeds, mask)

    def regress(self, z_a, z_b, embeds, mask):
        return self._dispatch("regress", z_a, z_b, embeds, mask)

    def decode(self, latents):
        return self._dispatch("decode", latents)

    def fidelity(self, image, source_a, source_b, embeds, mask):
        return self._dispatch("fidelity", image, source_a, source_b, embeds, mask)

    def encode_prompts(self, prompts):
        with self._lock:
            return self.inner.encode_prompts(prompts)

    # ------------------------------------------------------------------ merging
    def _row_cap(self, method: str) -> int | None:
        """Most rows one call of ``method`` takes: the DiT's profile batch; on TensorRT the VAE profile's."""
        if method in ("velocity", "regress"):
            return self.inner.max_batch_size()
        if self.inner.name != "tensorrt":
            return None
        graph = {"encode_images": "vae_encoder", "fidelity": "fidelity"}.get(method, "vae_decoder")
        try:
            return int(next(iter(self.inner.bundle.profile(graph)["max"].values()))[0])
        except Exception:  # noqa: BLE001 - no profile to read: do not merge VAE calls
            return 1

    def _merged_call(self, method: str, per_item: list[tuple]) -> list:
        rows = [int(np.asarray(args[0]).shape[0]) for args in per_item]
        cap = self._row_cap(method)
        if method in ("encode_images", "decode", "fidelity"):
            # the VAE's memory grows with its pixels (mid-block attention: quadratic): a merged call holds at
            # most the pixels of one pair at the pipeline's whole-image limit, so batching never needs more
            # memory than one large request already may
            h, w = np.asarray(per_item[0][0]).shape[-2:]
            per_row = int(h) * int(w) * (LATENT_FACTOR ** 2 if method == "decode" else 1)
            budget = max(1, VAE_MERGE_PIXELS // per_row)
            cap = budget if cap is None else min(cap, budget)
        chunks: list[list[int]] = [[]]
        for i, r in enumerate(rows):  # whole pairs per chunk, at most `cap` rows (a pair alone may be over)
            if chunks[-1] and cap is not None and sum(rows[j] for j in chunks[-1]) + r > cap:
                chunks.append([])
            chunks[-1].append(i)
        out: list[Any] = [None] * len(per_item)
        for chunk in chunks:
            merged = []
            for k in range(len(per_item[0])):
                parts = [per_item[i][k] for i in chunk]
                if any(p is None for p in parts):
                    if not all(p is None for p in parts):
                        raise _Diverged(f"{method}: argument {k} is missing for some pairs")
                    merged.append(None)
                else:
                    merged.append(np.concatenate([np.asarray(p) for p in parts]))
            with self._lock:
                result = getattr(self.inner, method)(*merged)
                self.merged_calls += 1
            start = 0
            for i in chunk:
                out[i] = result[start:start + rows[i]]
                start += rows[i]
        return out

    def run_group(self, jobs: Sequence[Callable[[], Any]]) -> list[tuple[Any, BaseException | None]]:
        """Run ``jobs`` (each one pipeline call) in lockstep threads with merged graph calls; returns
        (result, error) per job. A job whose group broke (another pair failed, or the calls diverged)
        is run again alone, so each pair gets its own result or its own error."""
        n = len(jobs)
        if n == 1:
            return [attempt(jobs[0])]
        group = _Group(n, self._merged_call)
        results: list[tuple[Any, BaseException | None]] = [(None, None)] * n

        def worker(slot: int) -> None:
            self._local.group, self._local.slot = group, slot
            try:
                results[slot] = (jobs[slot](), None)
            except BaseException as err:  # noqa: BLE001 - returned per pair
                results[slot] = (None, err)
                group.barrier.abort()  # the others stop waiting for this pair
            finally:
                self._local.group = None

        threads = [threading.Thread(target=worker, args=(i,), name=f"latentfuse-pair-{i}", daemon=True)
                   for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return [attempt(job) if isinstance(err, (threading.BrokenBarrierError, _Diverged)) else (res, err)
                for job, (res, err) in zip(jobs, results)]


def attempt(job: Callable[[], Any]) -> tuple[Any, BaseException | None]:
    try:
        return job(), None
    except BaseException as err:  # noqa: BLE001 - returned per pair
        return None, err


__all__ = ["GatheringBackend", "attempt"]
