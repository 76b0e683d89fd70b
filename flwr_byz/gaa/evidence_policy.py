"""The default GAA policy: an additive log-credit recurrence over evidence."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from .features import FEATURE_NAMES, vector_median
from .observation import Observation, sample_cosines

#: Inputs of g_ψ, in order: the observation features with ``log-norm`` replaced
#: by two scale-free versions, the previous log-credit, the capped scaled QV
#: gain, and the alignment with the credit-weighted mean direction (last).
INPUT_NAMES: tuple[str, ...] = (
    "qv-gain",
    "cos-qv-descent",
    "cos-mean",
    "cos-median",
    "log-rel-norm",  # log ‖Δ_i‖ − median_j log ‖Δ_j‖
    "excess-norm",  # max(0, log ‖Δ_i‖ − log ref − log NORM_SLACK), see below
    "prev-log-credit",  # previous log-credit − the best one, ≥ −PREV_CLIP
    "qv-gain-capped",  # min(qv-gain-scaled, 1): help beyond a typical one is equal
    "cos-credit-mean",  # cos(Δ_i, the aggregate the other inputs would make)
)
PREV_CLIP = 50.0
LOG_NORM_CLIP = 10.0
#: Honest updates of heterogeneous clients differ in norm by a few times (up
#: to ≈ 5× the low quantile on the Yelp-style data, ≈ 2× on the Healthcare-style
#: one); only norms beyond NORM_SLACK × the reference norm count. At 10× a
#: scaling attack (10 × an honest update) sat on the boundary and kept credit.
NORM_SLACK = 5.0
#: The reference norm is this credit-weighted quantile of the norms: with
#: uniform credit it stays among honest norms up to 80 % of attackers sending
#: larger updates; once credit has moved, the trusted workers set it.
NORM_QUANTILE = 0.2
#: Only rows whose solo QV gain is at least this share of the trust-weighted
#: median gain of the helpful rows set the norm reference (when any row helps):
#: updates too small to move the QV loss cannot make every honest norm look
#: excessive.
REFERENCE_GAIN_SHARE = 0.25
#: The QV lean reads alignments with −∇f_B in units of a typical worker's
#: |alignment| (never below DESCENT_FLOOR), each capped at LEAN_CLIP units.
DESCENT_FLOOR = 0.01
LEAN_CLIP = 3.0
#: Cosine from which updates count as copies of one another in the round's
#: aggregate, where they share one voice's weight. Stricter than the
#: references' collusion threshold: from a fresh model honest updates of
#: different regions all follow the label prior and align at up to about
#: 0.995 in round 1 (Yelp-style task), and merging them there would hand their
#: weight to whichever update differs, an attacker's included.
COPY_COSINE = 0.999


def weighted_quantile(
    values: torch.Tensor, weights: torch.Tensor, q: float
) -> torch.Tensor:
    """Smallest value whose cumulative weight (ascending values) reaches ``q``."""
    order = torch.argsort(values, stable=True)
    cum = torch.cumsum(weights[order], 0)
    k = int(torch.searchsorted(cum, q * cum[-1]).clamp(max=len(values) - 1))
    return values[order[k]]


def helpful_gain_capped(
    gain: torch.Tensor, scaled: torch.Tensor, trust: torch.Tensor
) -> torch.Tensor:
    """``gain`` capped at the trust-weighted median gain of the helpful rows.

    A row helps when its solo step lowers the QV loss (``scaled > 0``, the
    uncentred gain's sign). Among helpers, helping *more* than a typical
    trusted one earns nothing: late in training honest regions differ in how
    much they help a QV set from another region, and rewarding that ranks them
    against each other until the credit sits on the few the QV set likes (and
    a scaled update, a longer step along an honest direction, would out-help
    them all). Harm (a gain below the cap) still counts in full.
    """
    helps = scaled > 0
    if not bool(helps.any()):
        return gain
    return gain.clamp(max=_helpers_median(gain, helps, trust))


def _helpers_median(
    values: torch.Tensor, helps: torch.Tensor, trust: torch.Tensor
) -> torch.Tensor:
    """The trust-weighted median of ``values`` over the helpful rows (equal
    weights when their trust sums to 0)."""
    w = trust[helps]
    if not float(w.sum()) > 0:
        w = torch.ones_like(w)
    return weighted_quantile(values[helps], w, 0.5)


def norm_reference_rows(scaled: torch.Tensor, trust: torch.Tensor) -> torch.Tensor:
    """Which rows may set the norm reference: a bool ``(m,)`` mask.

    The rows whose solo step lowers the QV loss by at least
    :data:`REFERENCE_GAIN_SHARE` of the trust-weighted median decrease among
    the rows that lower it at all; every row when none does. The reference is a
    low quantile of the norms so that a majority of huge updates cannot set it;
    without this mask a minority of tiny updates could (Fang et al.'s attack on
    Krum sends ``−λ·sign(mean)`` with λ near zero): every honest norm would then
    read as tens of nats of excess, and the tiny updates would take all credit
    and stall the model. An update too small to move the QV loss is no
    evidence of what an honest norm is.
    """
    helps = scaled > 0
    if not bool(helps.any()):
        return torch.ones_like(helps)
    return scaled >= REFERENCE_GAIN_SHARE * _helpers_median(scaled, helps, trust)


def collusion_voices(updates: torch.Tensor, threshold: float) -> torch.Tensor:
    """Each row's share of one voice: ``1 / Σ_j k(cos(Δ_i, Δ_j))``.

    ``k(c) = clamp((c − threshold) / (1 − threshold), 0, 1)``, with ``k = 1`` on
    the diagonal: rows that point the same way (cosine above ``threshold``)
    share one voice, so ``m`` identical updates count as one worker wherever
    agreement earns credit, and rows that merely agree a little (honest
    clients of different regions, cosines well below the threshold) keep a
    voice each. The cosines are read on the aggregation's column sample
    (:func:`~flwr_byz.aggregation.distances.sample_columns`, 2,048 to 8,192
    columns: a standard error of at most about 0.02), in float64 after each
    row is scaled by its largest magnitude, so no update can overflow them.
    ``threshold >= 1`` gives every row a whole voice.
    """
    return _voices(updates, threshold, lambda: sample_cosines(updates))


def _voices(
    updates: torch.Tensor, threshold: float, cosines: Callable[[], torch.Tensor]
) -> torch.Tensor:
    """:func:`collusion_voices` from the rows' cosines (asked for only when
    the threshold is below 1 and there are two rows or more)."""
    m = updates.shape[0]
    if threshold >= 1.0 or m < 2:
        return torch.ones(m, dtype=updates.dtype, device=updates.device)
    share = ((cosines() - threshold) / (1.0 - threshold)).clamp(0.0, 1.0)
    share.fill_diagonal_(1.0)
    return (1.0 / share.sum(dim=1)).to(updates.dtype)


class EvidencePolicy(nn.Module):
    """``logits_t = ρ·logits_{t−1} − relu(max_j s_j − s_i − slack) + φ·(s_i − s̄)``.

    Credits are the softmax of the logits.

    The score ``s_i = g_ψ(x_i)`` comes from one small network shared by all
    workers (a linear head plus a zero-initialised MLP residual) applied to
    each worker's inputs
    (:data:`INPUT_NAMES`). The parameter count depends on neither the number
    of workers n nor the model size d, and permuting the workers permutes the
    credits: every input is computed row-wise from symmetric statistics of
    the rows and the worker's own previous credit, the head is shared, the
    reference is a maximum.

    Evidence accumulates, so one noisy round cannot undo many consistent ones
    (a greedy, per-round credit chases the attackers whenever one honest
    update happens to raise the QV loss), and only a shortfall of more than
    ``slack`` nats behind the best-scoring worker costs credit, so honest
    workers from different regions are not ranked against each other on a
    10-sample QV set. Before any learning ``g_ψ`` is a fixed linear read-out
    that already removes random faults in the first round:

    * ``excess-norm`` (weight ``-norm_weight``): how far log ‖Δ_i‖ exceeds
      log(NORM_SLACK × reference), the reference being the NORM_QUANTILE
      quantile of the norms *weighted by the previous credits*. With uniform
      credit it is an honest norm even when most workers send huge updates;
      afterwards the trusted workers set it, so a huge update cannot win
      credit back with a neutral-looking direction. Random faults are 10²–10³
      times an honest norm: tens of nats in round one.
    * ``qv-gain`` (weight ``gain_weight``, 10): the QV-loss decrease if Δ_i
      alone were applied, relative to ``f_B(θ_t)`` — the finite-difference
      reward — capped at the trust-weighted median of the helpful rows
      (:func:`helpful_gain_capped`): helping more than a typical trusted
      worker earns nothing, harm counts in full. Honest updates move a
      10-sample QV loss by a few per cent of it (a fraction of a nat, inside
      the slack); an update that alone would
      raise the QV loss by half of it or more (the paper's adaptive fault,
      whose QV-descent term makes its direction look harmless) loses credit
      in the round it appears, before its step can wreck the model;
    * ``cos-qv-descent`` (weight ``descent_weight``): alignment with
      −∇f_B(θ_t). A huge random update can *lower* the QV loss of a freshly
      initialised model by collapsing it to the label prior, so the realised
      gain alone is fooled in round one; the direction is not.
    * ``cos-credit-mean`` (weight ``consensus_weight``): alignment of Δ_i's
      direction with the *credit-weighted* mean direction — the unit updates
      weighted by the softmax of the previous log-credits plus this round's
      gated read-out of the other inputs (so a random fault is out of the
      reference in the round it appears). Honest-norm attacks (sign flip,
      IPM) point against it: cos ≈ −0.9 against ≈ +0.9 for honest workers,
      ``consensus_weight·1.8 − slack`` nats per round; honest workers within
      ``slack/consensus_weight`` of the best alignment lose nothing. Unit
      directions keep one large update from making the reference alone.
      Unlike the plain mean or coordinate median (features ``cos-mean`` and
      ``cos-median``, weight 0), the reference follows the credit, so once
      the evidence has removed attackers they no longer shape it. Previous
      log-credits within ``slack`` of the best count alike in it: otherwise
      the reference narrows onto the few best-credited honest workers, the
      others' alignment with it falls, they lose credit, and it narrows
      further (on the Healthcare-style data with five local steps, the
      credit of 15 honest workers ended on 2). With
      uniform credit it is a majority direction: this term alone does not
      stop a majority of honest-norm attackers.
    * ``qv-gain-capped`` (weight ``scaled_weight``, 0 at start): the solo QV
      gain divided by the median |gain| across workers, capped at 1. Strong
      in principle, but with a tiny QV set from another region (or one of a
      single class) it also ranks honest regions against each other and the
      model drifts onto the QV favourite; learning may raise it.

    Agreement is counted per voice, not per worker (``collusion_threshold``,
    default 0.95): wherever the credit weighs the workers to make a reference (the
    consensus direction, the norm reference, the cap on QV help), near-identical
    updates share one voice (:func:`collusion_voices`). Colluders who send one
    identical update (or copies with a little noise) would otherwise own the
    consensus: identical unit directions add up, honest updates of different
    regions do not (cosines ≈ 0.05–0.35 with each other), so three colluders of
    ten made a reference that named the honest workers as the outliers. The
    credits stay per worker. The round's aggregate weighs each row by its
    credit times its voice share among *copies* (cosine above
    :data:`COPY_COSINE`, :meth:`aggregate_log_voices`), so ``m`` copies of one
    update move the model as one credited worker would, not ``m``: colluders
    who send one update inside the honest spread (Shejwalkar and Houmansadr's
    min-max) keep their credit but not its weight. Colluders who add
    independent noise until their cosines fall below that level keep a
    weight each; their noise then averages out in the aggregate.

    The QV read-outs are weak at the start on purpose: with a tiny QV set
    from another region they also punish honest heterogeneity (the model
    over-fits the QV set through the worker closest to it); learning decides
    how much they should count.

    The QV verdict on the consensus (``reference_gain``, default 3.3): the
    alignments with −∇f_B are read in units of the round's typical |alignment|
    (their median, at least ``DESCENT_FLOOR``), because only their signs and
    sizes relative to each other carry the verdict: an honest update aligns at
    ≈ +0.4 on the Yelp-style task but at ≈ +0.08 on the 10-class
    Healthcare-style one with a 10-sample QV set from another region, where
    a fixed cosine threshold never fires. When the credit-weighted reference
    itself, or the step the credits would take (each worker counted, not each
    voice: seven similar updates of Fang et al.'s trimmed-mean attack share
    about two voices and balance the reference, yet own the step), goes uphill
    on the QV set — its cosine with −∇f_B below
    ``−uphill_margin`` typical alignments — the reference leans towards the
    workers aligned with −∇f_B: their logits in it rise by ``reference_gain
    ×`` that excess × their relative alignment (capped at ``LEAN_CLIP``).
    A majority pulling against the QV set (sign flip, IPM, label flip at
    β = 0.7) then makes a reference that the honest minority agrees with, so
    ``cos-credit-mean`` takes credit from the majority round after round, and
    the recurrence accumulates it per node. An honest consensus that goes
    downhill on the QV set leaves the lean off. Its cost: when an honest
    consensus itself goes uphill on a QV set from another region (large
    steps that overshoot the QV set's minimum), the lean favours the honest
    workers closest to the QV region (``reference_gain=0`` turns it off).

    Learning ψ refines the weights of every input from the episode loss.

    Parameters
    ----------
    gain_weight, descent_weight, norm_weight : float
        Initial weights (nats per unit of the input) of the three read-outs.
    hidden : int
        Width of the residual MLP (0 disables it).
    slack : float
        Score shortfall (nats) behind the best worker that costs nothing.
    decay : float
        Factor on the previous log-credits (< 1: old evidence fades, so a
        worker that turns honest can earn trust back; 1: pure accumulation).
    fine_weight : float
        Initial weight (a learnt parameter) of the plain centred score
        ``s_i − mean(s)`` added to the evidence: how much differences inside
        the slack count. It also keeps the episode loss differentiable in ψ
        when every worker is within the slack.
    seed : int
        Seed of the residual MLP's (hidden layer) initialisation.
    consensus_weight, scaled_weight : float
        Initial weights of ``cos-credit-mean`` and ``qv-gain-capped``.
    reference_gain, uphill_margin : float
        The QV lean of the reference (see above; the margin in typical
        alignments); fixed, not learnt.
    collusion_threshold : float
        Cosine above which two updates start to share a voice; 1 turns the
        discount off.
    """

    needs_features = True

    def __init__(
        self,
        gain_weight: float = 10.0,
        descent_weight: float = 0.2,
        norm_weight: float = 10.0,
        hidden: int = 16,
        slack: float = 5.0,
        decay: float = 0.9,
        fine_weight: float = 0.05,
        seed: int = 0,
        consensus_weight: float = 8.0,
        scaled_weight: float = 0.0,
        reference_gain: float = 3.3,
        uphill_margin: float = 0.25,
        collusion_threshold: float = 0.95,
    ) -> None:
        super().__init__()
        if slack < 0 or not 0.0 < decay <= 1.0:
            raise ValueError(
                f"EvidencePolicy: need slack >= 0 and 0 < decay <= 1, got "
                f"slack={slack}, decay={decay}"
            )
        self.slack, self.decay = slack, decay
        self.reference_gain, self.uphill_margin = reference_gain, uphill_margin
        if not 0.0 <= collusion_threshold <= 1.0:
            raise ValueError(
                f"EvidencePolicy: collusion_threshold={collusion_threshold!r}: "
                "allowed values are numbers in [0, 1] (1: no discount)"
            )
        self.collusion_threshold = collusion_threshold
        self.fine = nn.Parameter(torch.tensor(float(fine_weight)))
        num_in = len(INPUT_NAMES)
        self.head = nn.Linear(num_in, 1, bias=False)
        with torch.no_grad():
            self.head.weight.zero_()
            self.head.weight[0, INPUT_NAMES.index("qv-gain")] = gain_weight
            self.head.weight[0, INPUT_NAMES.index("cos-qv-descent")] = descent_weight
            self.head.weight[0, INPUT_NAMES.index("excess-norm")] = -norm_weight
            self.head.weight[0, INPUT_NAMES.index("qv-gain-capped")] = scaled_weight
            self.head.weight[0, INPUT_NAMES.index("cos-credit-mean")] = consensus_weight
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

    def log_voices(self, obs: Observation) -> torch.Tensor:
        """``log`` of each row's voice share in the credit-weighted references
        (:func:`collusion_voices` at ``collusion_threshold``), detached."""
        return self._log_voices(obs, self.collusion_threshold)

    def aggregate_log_voices(self, obs: Observation) -> torch.Tensor:
        """``log`` of each row's voice share in the round's aggregate, detached:
        :func:`collusion_voices` at :data:`COPY_COSINE` (or
        ``collusion_threshold`` when that is stricter; 1 turns both off). The
        agent adds it to the logits of the aggregation weights."""
        return self._log_voices(obs, max(self.collusion_threshold, COPY_COSINE))

    @staticmethod
    def _log_voices(obs: Observation, threshold: float) -> torch.Tensor:
        # The cosines are the observation's, computed once for both discounts.
        voices = _voices(obs.updates, threshold, lambda: obs.update_cosines)
        return torch.log(voices).detach()

    def _shortfall(self, scores: torch.Tensor) -> torch.Tensor:
        """``−relu(max − s − slack)``: within ``slack`` of the best counts as 0."""
        return -torch.relu(scores.max() - scores - self.slack)

    def inputs(self, obs: Observation, prev_logits: torch.Tensor) -> torch.Tensor:
        """The ``(m, len(INPUT_NAMES))`` inputs of g_ψ.

        The last one, ``cos-credit-mean``, depends on the head's weights of
        the others (the reference is the aggregate they would make).
        """
        if obs.features is None:
            raise ValueError("EvidencePolicy needs Observation.features")
        feats = obs.features
        log_norm = feats[:, FEATURE_NAMES.index("log-norm")]
        rel = log_norm - vector_median(log_norm)
        # Near-identical updates share one voice in every credit-weighted
        # reference below (log-voices added to the weights' logits).
        log_voice = self.log_voices(obs)
        trust = torch.softmax(prev_logits.detach() + log_voice, 0)
        scaled = feats[:, FEATURE_NAMES.index("qv-gain-scaled")]
        setters = norm_reference_rows(scaled.detach(), trust)
        ref = weighted_quantile(log_norm, trust * setters, NORM_QUANTILE)
        excess = torch.relu(log_norm - ref - math.log(NORM_SLACK))
        prev_rel = (prev_logits - prev_logits.max().detach()).clamp(min=-PREV_CLIP)
        keep = [FEATURE_NAMES.index(n) for n in INPUT_NAMES[:4]]
        capped = scaled.clamp(max=1.0)
        x = torch.cat(
            [
                helpful_gain_capped(feats[:, keep[0]], scaled, trust).unsqueeze(1),
                feats[:, keep[1:]],
                rel.clamp(-LOG_NORM_CLIP, LOG_NORM_CLIP).unsqueeze(1),
                excess.clamp(max=LOG_NORM_CLIP).unsqueeze(1),
                prev_rel.unsqueeze(1),
                capped.unsqueeze(1),
            ],
            dim=1,
        )
        # The reference direction is the aggregate that the previous credit
        # and this round's other evidence (norm, QV) would make, both gated
        # like the evidence: workers within `slack` of the best count alike,
        # so the reference does not collapse onto the QV favourite.
        pre = x @ self.head.weight[0, :-1]
        pre = self._shortfall(pre)
        # Unit directions: one large update must not make the reference alone.
        # (w / ‖Δ‖) @ Δ is w @ (Δ / ‖Δ‖) without a normalised copy of the matrix.
        updates = obs.updates
        inv_norm = 1.0 / (updates.norm(dim=1) + 1e-12)
        prev_gated = self._shortfall(prev_logits)
        w = torch.softmax(prev_gated + pre + log_voice, 0)
        ref = (w * inv_norm) @ updates
        # If that consensus itself goes uphill on the QV set (a majority
        # pulling the wrong way), lean the reference towards QV descent.
        # Alignments in units of the typical one among the workers that make
        # the reference (a huge fault can align better than any honest update).
        descent = x[:, INPUT_NAMES.index("cos-qv-descent")]
        typical = weighted_quantile(descent.detach().abs(), w.detach(), 0.5)
        typical = typical.clamp(min=DESCENT_FLOOR)
        cos_ref = (w @ descent) / (ref.norm() + 1e-12)
        # The step these weights would take counts each worker, not each voice:
        # many similar (not identical) updates that go uphill together can
        # balance the reference and still own the step.
        alpha = torch.softmax(prev_gated + pre, 0)
        alpha = torch.where(inv_norm > 0, alpha, torch.zeros_like(alpha))
        along = (alpha * descent / inv_norm.clamp(min=1e-30)).sum()
        cos_step = along / ((alpha @ updates).norm() + 1e-12)
        worst = torch.minimum(cos_ref, cos_step)
        uphill = torch.relu(-worst / typical - self.uphill_margin)
        lean = (
            self.reference_gain
            * uphill
            * (descent / typical).clamp(-LEAN_CLIP, LEAN_CLIP)
        )
        w = torch.softmax(prev_gated + pre + lean + log_voice, 0)
        ref = (w * inv_norm) @ updates
        # A row whose float32 norm overflows (inv_norm 0) reads as no direction,
        # as its normalised copy did: its dot product may be inf, and inf · 0 NaN.
        dots = updates @ ref
        dots = torch.where(inv_norm > 0, dots, torch.zeros_like(dots))
        cos = dots * inv_norm / (ref.norm() + 1e-12)
        return torch.cat([x, cos.unsqueeze(1)], dim=1)

    def forward(self, obs: Observation, prev_logits: torch.Tensor) -> torch.Tensor:
        """New (unnormalised) log-credits for the rows of ``obs``."""
        x = self.inputs(obs, prev_logits)
        g = self.head(x).squeeze(1)
        if self.residual is not None:
            g = g + self.residual(x).squeeze(1)
        # Only a shortfall beyond `slack` nats behind the best worker counts:
        # honest workers that differ a little on a tiny QV set keep equal
        # credit instead of collapsing onto the one the QV set likes best.
        # `fine` (learnt, small at start) is how much finer differences count.
        evidence = self._shortfall(g) + self.fine * (g - g.mean())
        return self.decay * prev_logits + evidence
