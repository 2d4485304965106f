"""Experience replay for continual multi-task training (FusionFM; Rolnick et al. 2019, "Experience
Replay for Continual Learning"; Chaudhry et al. 2019, "On Tiny Episodic Memories").

The buffer keeps a uniform sample of every training example seen so far by reservoir sampling
(Vitter 1985, Algorithm R): the n-th example seen replaces a random slot with probability
capacity / n. It stores dataset indices (the latent cache is in memory), so it is tiny to checkpoint.
While training task k, a fraction ``ratio`` of each batch is drawn from the buffer, i.e. from tasks
< k. Randomness comes from the caller's per-step generator, so every data-parallel process keeps an
identical buffer and a resumed run continues exactly.
"""

from __future__ import annotations

import torch


class ReservoirBuffer:
    def __init__(self, capacity: int, ratio: float):
        self.capacity = int(capacity)
        self.ratio = float(ratio)
        self.items: list[int] = []
        self.seen = 0

    def __len__(self) -> int:
        return len(self.items)

    @property
    def enabled(self) -> bool:
        return self.capacity > 0 and self.ratio > 0

    def add(self, indices, generator: torch.Generator) -> None:
        """Reservoir-sample every index in ``indices`` (Algorithm R)."""
        if self.capacity <= 0:
            return
        for idx in [int(i) for i in indices]:
            self.seen += 1
            if len(self.items) < self.capacity:
                self.items.append(idx)
            else:
                j = int(torch.randint(self.seen, (1,), generator=generator))
                if j < self.capacity:
                    self.items[j] = idx

    def replay_count(self, batch: int) -> int:
        """How many of ``batch`` items come from the buffer (0 while it is empty)."""
        if not self.enabled or not self.items:
            return 0
        return min(batch - 1, int(round(self.ratio * batch)))

    def draw(self, n: int, generator: torch.Generator) -> torch.Tensor:
        pick = torch.randint(len(self.items), (n,), generator=generator)
        return torch.tensor(self.items, dtype=torch.long)[pick]

    def state_dict(self) -> dict:
        return {"capacity": self.capacity, "ratio": self.ratio, "items": list(self.items), "seen": self.seen}

    def load_state_dict(self, state: dict) -> None:
        self.items = [int(i) for i in state["items"]]
        self.seen = int(state["seen"])
