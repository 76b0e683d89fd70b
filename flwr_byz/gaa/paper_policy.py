"""GAA's policy as Justinian's GAAvernor (§5.1.4) builds it: linear + softmax."""

from __future__ import annotations

import torch
from torch import nn

from .observation import Observation


class PaperPolicy(nn.Module):
    """``α_t = softmax(W [vec(Δ_1..Δ_n); θ_t; f_B(θ_t); α_{t−1}] + b)``.

    No hidden layer; the input is the concatenated state and previous credit
    (size ``n·d + d + 1 + n``), the output one logit per worker. ``n`` is
    fixed at first use: node ids take slots in order of first appearance, an
    absent node's slot sees a zero update and zero previous credit and is
    masked out of the softmax, and ids beyond the ``n`` slots are refused
    (the agent gives them no credit). The parameter count
    ``(n·d + d + 1 + n + 1)·n`` grows with n·d, so construction refuses past
    ``max_params``.

    Parameters
    ----------
    max_params : int
        Largest parameter count accepted.
    seed : int
        Seed of the random initialisation (PyTorch's Linear default).
    """

    needs_features = False

    def __init__(self, max_params: int = 20_000_000, seed: int = 0) -> None:
        super().__init__()
        self.max_params = max_params
        self.seed = seed
        self.num_slots = 0
        self.dim = 0
        self.slots: dict[int, int] = {}
        self.linear: nn.Linear | None = None

    @staticmethod
    def param_count(n: int, d: int) -> int:
        """Parameters of the policy for n workers and d model parameters."""
        return (n * d + d + 1 + n + 1) * n

    def build(self, n: int, d: int) -> None:
        """Create the layer for n slots and d parameters (first use, or load)."""
        count = self.param_count(n, d)
        if count > self.max_params:
            raise ValueError(
                f"policy='paper' needs {count:,} parameters for n={n} workers and "
                f"d={d:,} model parameters, above max_paper_policy_params="
                f"{self.max_params:,}; raise max_paper_policy_params or use "
                "policy='evidence'"
            )
        self.num_slots, self.dim = n, d
        self.linear = nn.Linear(n * d + d + 1 + n, n)
        gen = torch.Generator().manual_seed(self.seed)
        bound = 1.0 / (n * d + d + 1 + n) ** 0.5
        with torch.no_grad():
            self.linear.weight.uniform_(-bound, bound, generator=gen)
            self.linear.bias.uniform_(-bound, bound, generator=gen)

    def accept(self, node_ids: list[int], d: int) -> list[bool]:
        """Give new ids free slots; say which rows the policy can score."""
        if self.linear is None:
            self.build(len(node_ids), d)
        ok = []
        for nid in node_ids:
            if nid not in self.slots and len(self.slots) < self.num_slots:
                self.slots[nid] = len(self.slots)
            ok.append(nid in self.slots)
        return ok

    def forward(self, obs: Observation, prev_logits: torch.Tensor) -> torch.Tensor:
        """Log-credits (log-softmax over the present rows) for the rows of ``obs``."""
        assert self.linear is not None
        idx = torch.tensor([self.slots[i] for i in obs.node_ids], dtype=torch.long)
        idx = idx.to(obs.updates.device)
        u = obs.updates.new_zeros(self.num_slots, self.dim).index_copy(
            0, idx, obs.updates
        )
        prev = torch.softmax(prev_logits, dim=0)
        a_prev = prev.new_zeros(self.num_slots).index_copy(0, idx, prev)
        x = torch.cat([u.reshape(-1), obs.theta, obs.qv_loss.reshape(1), a_prev])
        out = self.linear(x)[idx]
        return torch.log_softmax(out, dim=0)

    def layout(self) -> dict:
        """What :meth:`restore_layout` needs to rebuild the layer before loading."""
        return {"n": self.num_slots, "d": self.dim, "slots": dict(self.slots)}

    def restore_layout(self, layout: dict) -> None:
        """Rebuild the layer and the slot table saved by :meth:`layout`."""
        if layout["n"]:
            self.build(layout["n"], layout["d"])
        self.slots = dict(layout["slots"])
