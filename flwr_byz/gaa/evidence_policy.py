"""The default GAA policy: an additive log-credit recurrence over evidence."""

from __future__ import annotations

import math

import torch
from torch import nn

from .features import FEATURE_NAMES, coordinate_median
from .observation import Observation

#: Inputs of g_ψ, in order: the observation features with ``log-norm`` replaced
#: by two scale-free versions, then the previous log-credit.
INPUT_NAMES: tuple[str, ...] = (
    "qv-gain",
    "cos-qv-descent",
    "cos-mean",
    "cos-median",
    "log-rel-norm",  # log ‖Δ_i‖ − median_j log ‖Δ_j‖
    "excess-norm",  # max(0, log ‖Δ_i‖ − credit-weighted median − log NORM_SLACK)
    "prev-log-credit",  # previous log-credit − the best one, ≥ −PREV_CLIP
)
PREV_CLIP = 50.0
LOG_NORM_CLIP = 10.0
#: Honest updates of heterogeneous clients differ in norm by a few times;
#: only norms beyond NORM_SLACK × the trusted (credit-weighted) median count.
NORM_SLACK = 4.0


def weighted_median(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Smallest value whose cumulative weight (ascending values) reaches half."""
    order = torch.argsort(values, stable=True)
    cum = torch.cumsum(weights[order], 0)
    k = int(torch.searchsorted(cum, 0.5 * cum[-1]).clamp(max=len(values) - 1))
    return values[order[k]]


class EvidencePolicy(nn.Module):
    """``logits_t = logits_{t−1} + g_ψ(x_t) − mean(g_ψ(x_t))``; credits = softmax.

    ``g_ψ`` is one small network shared by all workers (a linear head plus a
    zero-initialised MLP residual) applied to each worker's inputs
    (:data:`INPUT_NAMES`). The parameter count depends on neither the number
    of workers n nor the model size d, and permuting the workers permutes the
    credits: every input is computed row-wise from symmetric statistics of
    the rows and the worker's own previous credit, the head is shared, the
    centring is a mean.

    Evidence accumulates, so one noisy round cannot undo many consistent ones
    (a greedy, per-round credit chases the attackers whenever one honest
    update happens to raise the QV loss). Before any learning, ``g_ψ`` is a
    fixed linear read-out that already separates random faults in the first
    round:

    * ``qv-gain`` (weight ``gain_weight``): the relative QV-loss decrease if
      Δ_i alone were applied — the finite-difference reward of the worker;
    * ``cos-qv-descent`` (weight ``descent_weight``): alignment with
      −∇f_B(θ_t). A huge random update can *lower* the QV loss of a freshly
      initialised model by collapsing it to the label prior, so the realised
      gain alone is fooled in round one; the direction is not;
    * ``excess-norm`` (weight ``-norm_weight``): how far the norm exceeds
      NORM_SLACK × the median norm *weighted by the previous credits* — the
      trusted group sets the scale, so a majority of huge updates cannot
      make itself the reference, and an attacker cannot win credit back by
      neutral-looking directions while its norm would wreck the step.

    Learning ψ refines the weights of every input from the window loss.

    Parameters
    ----------
    gain_weight, descent_weight, norm_weight : float
        Initial weights (nats per unit of the input) of the three read-outs.
    hidden : int
        Width of the residual MLP (0 disables it).
    seed : int
        Seed of the residual MLP's (hidden layer) initialisation.
    """

    needs_features = True

    def __init__(
        self,
        gain_weight: float = 10.0,
        descent_weight: float = 10.0,
        norm_weight: float = 5.0,
        hidden: int = 16,
        seed: int = 0,
    ) -> None:
        super().__init__()
        num_in = len(INPUT_NAMES)
        self.head = nn.Linear(num_in, 1, bias=False)
        with torch.no_grad():
            self.head.weight.zero_()
            self.head.weight[0, INPUT_NAMES.index("qv-gain")] = gain_weight
            self.head.weight[0, INPUT_NAMES.index("cos-qv-descent")] = descent_weight
            self.head.weight[0, INPUT_NAMES.index("excess-norm")] = -norm_weight
        self.residual: nn.Module | None = None
        if hidden > 0:
            self.residual = nn.Sequential(
                nn.Linear(num_in, hidden), nn.Tanh(), nn.Linear(hidden, 1)
            )
            gen = torch.Generator().manual_seed(seed)
            bound = 1.0 / math.sqrt(num_in)
            with torch.no_grad():
                for p in (self.residual[0].weight, self.residual[0].bias):
                    p.uniform_(-bound, bound, generator=gen)
            # Zero output at start: the prior behaviour is the linear head alone.
            nn.init.zeros_(self.residual[2].weight)
            nn.init.zeros_(self.residual[2].bias)

    def inputs(self, obs: Observation, prev_logits: torch.Tensor) -> torch.Tensor:
        """The ``(m, len(INPUT_NAMES))`` inputs of g_ψ."""
        if obs.features is None:
            raise ValueError("EvidencePolicy needs Observation.features")
        feats = obs.features
        log_norm = feats[:, FEATURE_NAMES.index("log-norm")]
        rel = log_norm - coordinate_median(log_norm.unsqueeze(1)).squeeze(0)
        trust = torch.softmax(prev_logits.detach(), 0)
        ref = weighted_median(log_norm, trust)
        excess = torch.relu(log_norm - ref - math.log(NORM_SLACK))
        prev_rel = (prev_logits - prev_logits.max().detach()).clamp(min=-PREV_CLIP)
        keep = [FEATURE_NAMES.index(n) for n in INPUT_NAMES[:4]]
        return torch.cat(
            [
                feats[:, keep],
                rel.clamp(-LOG_NORM_CLIP, LOG_NORM_CLIP).unsqueeze(1),
                excess.clamp(max=LOG_NORM_CLIP).unsqueeze(1),
                prev_rel.unsqueeze(1),
            ],
            dim=1,
        )

    def forward(self, obs: Observation, prev_logits: torch.Tensor) -> torch.Tensor:
        """New (unnormalised) log-credits for the rows of ``obs``."""
        x = self.inputs(obs, prev_logits)
        g = self.head(x).squeeze(1)
        if self.residual is not None:
            g = g + self.residual(x).squeeze(1)
        return prev_logits + (g - g.mean())
