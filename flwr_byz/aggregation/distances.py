"""Pairwise squared distances of the rows of an update matrix, from one Gram product.

``‖a − b‖² = ‖a‖² + ‖b‖² − 2 a·b`` is fast (one matrix product) but cancels badly when
the rows share a large common component: the error is about ``eps · ‖a‖²`` while the
distance may be far smaller. We therefore

1. centre every row on a *reference row* — distances are translation invariant, and
   after centring the norms are of the order of the distances themselves. The
   reference is the medoid of a small column sample (1/32 of the columns, at most
   8192), so one far-away Byzantine row cannot become the centre. When the rows are
   already about as long around the origin as around the reference (squared-norm
   ratio <= 4, checked on the sample and again on every chunk), the centred Gram is
   obtained from the plain one by n × n algebra, which saves the centring copy;
2. multiply in column chunks in the input precision (float32 stays float32 so the
   product runs at BLAS speed) and accumulate the chunk Grams in float64, so the
   accumulation error does not grow with ``d``;
   on the CPU, once there are a few hundred rows, only the row blocks on and above
   the diagonal are multiplied and mirrored (:func:`_self_product`).

The centred chunk lives in a small buffer, so the extra memory is a few MB, not a copy
of the matrix. The error of a squared distance is then about 1e-6 of the rows' squared
norms *around the centre* (not around the origin): on a float32 matrix with a common
offset 1e5 times the spread (tests/test_aggregation_properties.py) it stays below
1e-3 of every distance — relative 1e-6 for rows near the centre, ~1e-4 for a pair far
from it but close to each other — while a plain float32 Gram is off by more than 100 %.

Adversarial magnitudes. Any finite input gives a finite Gram, the same in every
process: a float32 chunk product that overflows (a value near 1e19 or beyond) or
that may have lost values to underflow (a row's squared norm below 2**-100) is
redone in float64, whose range holds the square of any float32 value summed over
10**9 columns. Float64 inputs beyond ``2**450`` or below ``2**-400`` are first
scaled by a power of two (exact; rows more than ``2**450`` times larger than the
median row are shrunk along their direction, :func:`decision_scaling`), and
:func:`scaled_centred_gram` returns that scale with the Gram, so the rules decide on
finite numbers and report distances in the input's units.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import torch

from flwr_byz.aggregation.sketch import CountSketch
from flwr_byz.aggregation.validation import check_updates

_CPU_CHUNK = 65_536  # the centred chunk (n × 65536 float32) stays in L3
_CUDA_CHUNK = 1 << 20
#: Columns per block of a column sample (:func:`sample_columns`).
SAMPLE_BLOCK = 512
_SAMPLE_FRACTION = 32
_SAMPLE_MAX = 8_192
# An uncentred product is used only where rows are at most this many times longer
# (squared) around the origin than around the reference row: its rounding error is
# then at most this factor times that of the centred product.
_MAX_CONDITIONING = 4.0
# A float32 product in which a row's squared norm is below this may have lost values
# to underflow (products below 2**-126); such a chunk is redone in float64.
_TINY = 2.0**-100
# Float64 inputs whose largest magnitude lies outside [2**-400, 2**450] are scaled
# to peak at 2**450: beyond it a squared norm summed over many columns may overflow
# (2**900 · 1e10 columns · n² stays below 1.8e308) or small values underflow.
_FLOAT64_RANGE = 400
_FLOAT64_TOP = 450
# A Gram product on the CPU multiplies only its blocks on and above the diagonal
# once the rows make blocks of this many (fewer rows: one product is as fast).
_BLOCK_ROWS = 100
_MAX_BLOCKS = 4
# Columns compared before two rows that may be copies are compared in full.
_FINGERPRINT = 64


def _work_dtype(x: torch.Tensor) -> torch.dtype:
    # Half-precision inputs are multiplied in float32; float64 stays float64.
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def sample_starts(
    d: int, most: int = _SAMPLE_MAX, block: int = SAMPLE_BLOCK
) -> list[int] | None:
    """First columns of the blocks :func:`sample_columns` takes (``None``: all)."""
    wanted = min(max(4 * block, d // _SAMPLE_FRACTION), most)
    if wanted >= d:
        return None
    blocks = max(wanted // block, 1)
    step = (d - block) / max(blocks - 1, 1)
    return [round(i * step) for i in range(blocks)]


def sample_columns(
    x: torch.Tensor, most: int = _SAMPLE_MAX, block: int = SAMPLE_BLOCK
) -> torch.Tensor:
    """Evenly spread blocks of ``block`` columns: 1/32 of the columns, at least four
    blocks (2048 columns by default) and at most ``most`` (8192 by default); all of
    them when there are no more than that."""
    starts = sample_starts(x.shape[1], most, block)
    if starts is None:
        return x
    return torch.cat([x[:, s : s + block] for s in starts], dim=1)


def _centre_gram(gram: torch.Tensor, ref: int) -> torch.Tensor:
    """Gram of the rows centred on row ``ref``, from the plain Gram (n × n algebra)."""
    if not _numpy_ok(gram):
        col = gram[:, ref]
        return gram - col[:, None] - col[None, :] + gram[ref, ref]
    # The same operations in numpy, in place (see :func:`_numpy_ok`).
    g = gram.numpy()
    col = g[:, ref].copy()
    out = np.subtract(g, col[:, None])
    out -= col[None, :]
    out += g[ref, ref]
    return torch.from_numpy(out)


def _numpy_ok(t: torch.Tensor) -> bool:
    """Whether an ``(n, n)`` float64 work matrix is on the CPU, where its
    elementwise operations run in numpy, in place: the same IEEE operations in
    the same order (bit-identical), without an ``(n, n)`` temporary per step
    or a thread start per operation (which stalls when the CPU is busy)."""
    return t.device.type == "cpu" and t.dtype == torch.float64 and not t.requires_grad


def _conditioning(gram: torch.Tensor, centred: torch.Tensor, ref: int) -> float:
    """How much rounding the algebraic centring can add, relative to each row's own
    squared distance to the reference row (the worst row counts).

    Judged row by row, so that one far row cannot hide a cluster that cancels: its
    huge norm would otherwise dwarf everybody's error in a maximum over rows.
    """
    size = gram.diagonal() + gram[ref, ref]
    # Rows with nothing to cancel (size 0) and the reference itself count 1.
    ratio = torch.where(size > 0, size / centred.diagonal().clamp(min=1e-300), 1.0)
    ratio[ref] = 1.0
    return float(ratio.max())


def reference_row(x: torch.Tensor) -> tuple[int, float]:
    """The medoid of a column sample (a central row to centre the Gram on), and how
    ill-conditioned an uncentred Gram product would be on that sample.

    The sample is centred on a central row, and the medoid is found by
    :func:`medoid`, whose comparisons are exact to rounding whatever the
    magnitudes. The choice only affects rounding, never which distances are
    computed.
    """
    n = x.shape[0]
    work = _work_dtype(x)
    sample = sample_columns(x)
    raw, work = _gram64(sample, work)
    raw = raw.cpu()
    if n <= 2:
        return 0, _conditioning(raw, _centre_gram(raw, 0), 0)
    # Centred on a central row (a far minority cannot drag it, as it would a mean),
    # the sample's Gram no longer cancels; its medoid is the reference.
    centre = medoid(raw, sq_distances_from_gram(raw).sqrt())
    sample = sample.to(work)
    sample = sample - sample[centre]
    gram, _ = _gram64(sample, work)
    gram = gram.cpu()
    ref = medoid(gram, sq_distances_from_gram(gram).sqrt())
    return ref, _conditioning(raw, _centre_gram(raw, ref), ref)


def medoid(gram: torch.Tensor, dist: torch.Tensor) -> int:
    """Row with the smallest sum of distances to all rows; ties: lowest index.

    Rows are compared by the *difference* of their sums to a pivot ``p`` (the row
    with the smallest sum as computed), term by term as
    ``(D_ih² − D_ph²) / (D_ih + D_ph)`` from Gram entries: a far row's distance
    (1e20 against a cluster of width 1) cancels exactly instead of burying the
    comparison in its rounding. O(n²).

    Parameters
    ----------
    gram : torch.Tensor
        ``(n, n)`` float64 Gram matrix (centred or not) on the CPU.
    dist : torch.Tensor
        ``(n, n)`` distances computed from it.
    """
    p = _argmin_lowest(dist.sum(dim=1))
    if not (_numpy_ok(gram) and _numpy_ok(dist)):
        diag = gram.diagonal()
        num = (diag[:, None] - diag[p]) - 2.0 * (gram - gram[p])
        den = dist + dist[p]
        terms = torch.where(den > 0, num / den.clamp(min=1e-300), 0.0)
        return _argmin_lowest(terms.sum(dim=1))
    # The same float64 operations, elementwise, in numpy and in place: no
    # (n, n) temporaries and no thread start per operation (the row sums stay
    # torch's, so their rounding is unchanged).
    g, dd = gram.numpy(), dist.numpy()
    diag = np.diagonal(g)
    num = np.subtract(g, g[p])
    num *= 2.0
    np.subtract(diag[:, None] - diag[p], num, out=num)
    den = np.add(dd, dd[p])
    positive = den > 0
    np.maximum(den, 1e-300, out=den)
    np.divide(num, den, out=num)
    num[~positive] = 0.0
    return _argmin_lowest(torch.from_numpy(num).sum(dim=1))


def _argmin_lowest(values: torch.Tensor) -> int:
    """:func:`~flwr_byz.aggregation.ordering.argmin_lowest` of a 1-D tensor
    without a Python sort: the first smallest value, NaN counting as largest."""
    vals = values.detach().to("cpu", torch.float64).numpy()
    nan = np.isnan(vals)
    if not nan.any():
        return int(np.argmin(vals))  # the first of equal minima
    if nan.all():
        return 0
    kept = np.flatnonzero(~nan)
    return int(kept[np.argmin(vals[kept])])


def _reliable(product: torch.Tensor, cols: torch.Tensor) -> bool:
    """Whether a Gram product computed in float32 can be trusted (see module doc).

    Judged row by row: a row whose squared norm is below ``_TINY`` may have lost its
    values to underflow, even when another row is large.
    """
    # A float32 product's entries are finite float32 values or ±inf, so their
    # float64 sum is finite iff all of them are (±inf together give NaN).
    total = product.numpy().sum() if _numpy_ok(product) else product.sum()
    if not math.isfinite(float(total)):
        return False
    diag = product.diagonal()
    if float(diag.min()) >= _TINY:
        return True
    if bool(((diag > 0) & (diag < _TINY)).any()):
        return False
    zero = diag == 0
    return not bool(zero.any()) or not bool(cols[zero.to(cols.device)].any())


def _self_product(c: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``c @ c.T``, written into ``out`` when given.

    On the CPU, from :data:`_BLOCK_ROWS` rows per block up, the rows are cut
    into at most :data:`_MAX_BLOCKS` blocks and only the products on and above
    the diagonal are multiplied; the rest is their mirror image (a Gram matrix
    is symmetric). With ``k`` blocks that is ``(k + 1) / 2k`` of the work:
    3/4 for two blocks, 5/8 for four. Each entry is still one BLAS dot
    product of two rows in the input precision.
    """
    n = c.shape[0]
    blocks = min(_MAX_BLOCKS, n // _BLOCK_ROWS) if c.device.type == "cpu" else 1
    if blocks < 2:
        return c @ c.T if out is None else torch.mm(c, c.T, out=out)
    if out is None:
        out = torch.empty(n, n, dtype=c.dtype)
    edges = [n * i // blocks for i in range(blocks + 1)]
    for lo, hi in itertools.pairwise(edges):
        part = c[lo:hi] @ c[lo:].T
        out[lo:hi, lo:] = part
        out[hi:, lo:hi] = part[:, hi - lo :].T
    return out


def _float64(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float64 (numpy's cast on the CPU, as :func:`_numpy_ok` says)."""
    if t.dtype == torch.float64 or t.device.type != "cpu" or t.requires_grad:
        return t.to(torch.float64)
    return torch.from_numpy(t.numpy().astype(np.float64))


def _gram64(cols: torch.Tensor, work: torch.dtype) -> tuple[torch.Tensor, torch.dtype]:
    """``cols @ cols.T`` in float64, multiplied in ``work`` when that is reliable,
    else in float64; also returns the dtype used."""
    c = cols if cols.dtype == work else cols.to(work)
    product = _float64(_self_product(c))
    if work == torch.float64 or _reliable(product, c):
        return product, work
    c = cols.to(torch.float64)
    return _self_product(c), torch.float64


def decision_scaling(x: torch.Tensor) -> tuple[float, torch.Tensor | None]:
    """How float64 input is brought into range before its Gram is formed.

    Returns ``(scale, shrink)``: the rows are used as ``shrink_i · x_i / scale``.
    Both are powers of two, so nothing is rounded. For every dtype but float64 (whose
    squares fit float64 whatever their size) and for float64 rows whose magnitudes
    lie within ``[2**-400, 2**450]``, this is ``(1.0, None)``. Otherwise ``scale``
    brings the median row's largest magnitude to about 1, and a row still larger than
    ``2**450`` after that is shrunk along its own direction to that size: it stays
    as far from the others as any distance a decision needs, and the squares of all
    rows fit float64 together (a float64 range of 2**1000 between rows cannot).
    """
    if x.dtype != torch.float64:
        return 1.0, None
    low, high = torch.aminmax(x, dim=1)
    tops = torch.maximum(-low, high).cpu()
    nonzero = tops[tops > 0]
    if nonzero.numel() == 0:
        return 1.0, None
    if (
        float(nonzero.min()) >= 2.0**-_FLOAT64_RANGE
        and float(nonzero.max()) <= 2.0**_FLOAT64_TOP
    ):
        return 1.0, None
    # The median row's peak -> [1, 2); a scale must itself be a normal float.
    scale_exp = min(max(math.frexp(float(nonzero.median()))[1] - 1, -1022), 1023)
    scale = math.ldexp(1.0, scale_exp)
    exps = [math.frexp(t)[1] - scale_exp if t > 0 else 0 for t in tops.tolist()]
    shrink = torch.tensor(
        [math.ldexp(1.0, min(0, _FLOAT64_TOP - e)) for e in exps],
        dtype=torch.float64,
    )
    return scale, (shrink if bool((shrink < 1).any()) else None)


def _in_range(x: torch.Tensor) -> tuple[torch.Tensor, float]:
    """``x`` as the rules decide on it (:func:`decision_scaling` applied), and
    ``scale``; ``x`` itself unless it is float64 at extreme magnitudes."""
    scale, shrink = decision_scaling(x)
    if shrink is not None:
        # One power of two per row, so no intermediate overflows.
        return x * (shrink / scale).to(x.device)[:, None], scale
    if scale != 1.0:
        return x / scale, scale  # a copy, only for float64 at extreme magnitudes
    return x, scale


def centred_gram(x: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """Float64 Gram matrix of the rows of ``x`` centred on a reference row.

    Entries may be infinite only for float64 input beyond about ``1e150``; rules use
    :func:`scaled_centred_gram`, which stays finite for every finite input.

    Parameters
    ----------
    x : torch.Tensor
        ``(n, d)`` floating tensor on any device.
    chunk : int, optional
        Columns per chunk (default 65536 on CPU, 2**20 on CUDA).

    Returns
    -------
    torch.Tensor
        ``(n, n)`` float64 symmetric tensor on ``x``'s device,
        ``G[i, j] = (x_i − r)·(x_j − r)`` with ``r`` the reference row. Every
        squared distance between rows or convex combinations of rows follows.
    """
    gram, scale = scaled_centred_gram(x, chunk)
    return gram if scale == 1.0 else gram * (scale * scale)


def scaled_centred_gram(
    x: torch.Tensor, chunk: int | None = None, *, sketch: CountSketch | None = None
) -> tuple[torch.Tensor, float]:
    """The centred Gram of ``x / scale`` and ``scale``, a power of two.

    ``scale`` is 1.0 except for float64 input whose magnitudes leave
    ``[2**-400, 2**450]``; the Gram is finite for every finite input. Distances
    between rows are ``scale`` times those computed from this Gram, except that a
    row shrunk by :func:`decision_scaling` (one more than ``2**450`` times larger
    than the median row) is nearer in this Gram than it is: still the farthest.

    With a ``sketch`` (opt-in, :mod:`flwr_byz.aggregation.sketch`), the Gram is
    that of the rows' count sketches, centred on the reference row: it estimates
    the exact one, each squared distance within a relative standard deviation of
    ``√(2/k)``.
    """
    n, d = check_updates(x, "centred_gram")
    x, scale = _in_range(x)
    if sketch is not None and sketch.applies_to(n, d):
        x = sketch.project(x, x[reference_row(x)[0]])
        n, d = x.shape
    if chunk is None:
        chunk = _CUDA_CHUNK if x.device.type == "cuda" else _CPU_CHUNK
    work = _work_dtype(x)
    if d <= chunk and n > 2:
        gram = _one_chunk_centred_gram(x, work)
        if gram is not None:
            return _tie_duplicates(
                x, gram, 1e-5 if work == torch.float32 else 1e-12
            ), scale
    ref_row, conditioning = reference_row(x)
    ref = x[ref_row].to(work)
    # Well-conditioned data (rows about as long as their distances) need no explicit
    # centring: the centred Gram follows from the plain one by n × n algebra, and
    # each chunk is checked; only chunks that cancel are redone centred.
    try_plain = conditioning <= _MAX_CONDITIONING
    width = min(chunk, d)
    buf = torch.empty(n, width if not try_plain else 0, dtype=work, device=x.device)
    part = torch.empty(n, n, dtype=work, device=x.device)
    gram = torch.zeros(n, n, dtype=torch.float64, device=x.device)
    for start in range(0, d, width):
        stop = min(start + width, d)
        if try_plain:
            cols = x[:, start:stop]
            if cols.dtype != work:
                cols = cols.to(work)
            plain = _self_product(cols, out=part).to(torch.float64)
            if work == torch.float64 or _reliable(plain, cols):
                centred = _centre_gram(plain, ref_row)
                cond = _conditioning(plain.cpu(), centred.cpu(), ref_row)
                if cond <= _MAX_CONDITIONING:
                    gram += centred
                    continue
        if buf.shape[1] < stop - start:
            buf = torch.empty(n, width, dtype=work, device=x.device)
        y = buf[:, : stop - start]
        torch.sub(x[:, start:stop], ref[start:stop], out=y)
        product = _self_product(y, out=part).to(torch.float64)
        if work != torch.float64 and not _reliable(product, y):
            ref64 = x[ref_row, start:stop].to(torch.float64)
            y64 = x[:, start:stop].to(torch.float64) - ref64
            product = _self_product(y64)
        gram += product
    # BLAS may round G[i, j] and G[j, i] differently; make it exactly symmetric.
    gram = _symmetric(gram)
    rel = 1e-5 if work == torch.float32 else 1e-12
    return _tie_duplicates(x, gram, rel), scale


def _one_chunk_centred_gram(x: torch.Tensor, work: torch.dtype) -> torch.Tensor | None:
    """The centred Gram of a matrix that fits one chunk, from its plain Gram.

    The plain product is needed anyway; its medoid is the reference row (a far
    minority cannot drag a medoid, as it would the row closest to the mean), and
    when the rows are about as long around the origin as around it (the
    conditioning test of the chunked path) the centred Gram follows by
    ``n × n`` algebra, with no column sample. ``None`` when they are not: the
    caller then centres the columns explicitly on the sample's reference row.
    """
    plain, _ = _gram64(x, work)
    cpu = plain.cpu()
    dist = sq_distances_from_gram(cpu)
    np.sqrt(dist.numpy(), out=dist.numpy())  # in place, in numpy (as _numpy_ok)
    ref = medoid(cpu, dist)
    centred = _centre_gram(cpu, ref)
    if _conditioning(cpu, centred, ref) > _MAX_CONDITIONING:
        return None
    if plain.device != cpu.device:
        centred = _centre_gram(plain, ref)
    # BLAS may round G[i, j] and G[j, i] differently; make it exactly symmetric.
    return _symmetric(centred)


def _symmetric(gram: torch.Tensor) -> torch.Tensor:
    """``(G + Gᵀ) / 2`` (numpy on the CPU, as :func:`_numpy_ok` says)."""
    if not _numpy_ok(gram):
        return (gram + gram.T) / 2
    g = gram.numpy()
    out = np.add(g, g.T)
    out /= 2
    return torch.from_numpy(out)


def _tie_duplicates(x: torch.Tensor, gram: torch.Tensor, rel: float) -> torch.Tensor:
    """Give bit-identical rows bit-identical Gram rows, so their ties stay exact.

    BLAS rounds entries differently depending on where they sit in the output tile,
    so two copies of one update (a classic Byzantine move) could get distances that
    differ in the last bit and break "ties by lowest index". Pairs whose computed
    distance is within rounding of zero are compared exactly (a row only against
    earlier rows that are near it and first of their group; nothing is read when no
    pair is that near), and confirmed copies get the Gram row and column of their
    group's first row.
    """
    n = gram.shape[0]
    if _numpy_ok(gram):
        g = gram.numpy()
        diag = np.diagonal(g)
        size = np.add(diag[:, None], diag[None, :])
        sq = np.multiply(g, 2.0)
        np.subtract(size, sq, out=sq)
        size *= rel
        near = torch.from_numpy(sq <= size)
    else:
        diag = gram.diagonal()
        sq = diag[:, None] + diag[None, :] - 2.0 * gram
        near = (sq <= rel * (diag[:, None] + diag[None, :])).cpu()
    if np.count_nonzero(near.numpy()) == n:  # only the diagonal
        return gram
    # Rows far from the centre but close to each other (a tight Byzantine cluster)
    # are all "near": a fingerprint of a few spread columns rules out almost every
    # pair at once, so only rows that agree there are compared in full.
    d = x.shape[1]
    probe = torch.linspace(0, d - 1, min(d, _FINGERPRINT), device=x.device).long()
    prints = x[:, probe].cpu()
    near &= (prints[:, None, :] == prints[None, :, :]).all(dim=2)
    if np.count_nonzero(near.numpy()) == n:
        return gram
    first = list(range(n))
    for i in range(1, n):
        for r in torch.nonzero(near[i, :i]).flatten().tolist():
            if first[r] == r and torch.equal(x[i], x[r]):
                first[i] = r
                break
    if first == list(range(n)):
        return gram
    gram = gram.clone()
    for i, r in enumerate(first):
        if r != i:
            gram[i, :] = gram[r, :]
            gram[:, i] = gram[:, r]
    return gram


def sq_distances_from_gram(gram: torch.Tensor) -> torch.Tensor:
    """``D[i, j] = G[i, i] + G[j, j] − 2 G[i, j]``, clamped at 0, zero diagonal."""
    if not _numpy_ok(gram):
        diag = gram.diagonal()
        sq = (diag[:, None] + diag[None, :] - 2.0 * gram).clamp_(min=0.0)
        sq.fill_diagonal_(0.0)
        return sq
    g = gram.numpy()
    diag = np.diagonal(g)
    sq = np.add(diag[:, None], diag[None, :])
    sq -= np.multiply(g, 2.0)
    np.maximum(sq, 0.0, out=sq)
    np.fill_diagonal(sq, 0.0)
    return torch.from_numpy(sq)


def pairwise_sq_distances(x: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances between the rows of ``x``.

    Parameters
    ----------
    x : torch.Tensor
        ``(n, d)`` floating tensor on any device.

    Returns
    -------
    torch.Tensor
        ``(n, n)`` float64 tensor on ``x``'s device, symmetric, zero diagonal.
    """
    sq, scale = scaled_pairwise_sq_distances(x)
    return sq if scale == 1.0 else sq * (scale * scale)


def scaled_pairwise_sq_distances(
    x: torch.Tensor, *, sketch: CountSketch | None = None
) -> tuple[torch.Tensor, float]:
    """Squared distances between the rows of ``x / scale``, and ``scale``.

    Finite for every finite input; ``scale`` and ``sketch`` as in
    :func:`scaled_centred_gram`.
    """
    check_updates(x, "pairwise_sq_distances")
    gram, scale = scaled_centred_gram(x, sketch=sketch)
    return sq_distances_from_gram(gram), scale


def scaled_cross_sq_distances(
    x: torch.Tensor, rows: list[int], chunk: int | None = None
) -> tuple[torch.Tensor, float]:
    """Exact squared distances from the rows ``rows`` to every row of ``x / scale``.

    ``len(rows) × n × d`` work instead of the full Gram's ``n² d``: a sketched rule
    (:mod:`flwr_byz.aggregation.sketch`) uses it to decide exactly among the few
    candidates its sketch short-listed. One read of ``x``: the products with the
    candidate rows and every row's squared norm, per column chunk in the input
    precision, accumulated in float64 (a chunk not finite in float32 is redone in
    float64). ``‖a‖² + ‖b‖² − 2 a·b`` cancels where two rows are much closer to
    each other than to the origin: such pairs (squared norms more than 4 times
    their distance) are recomputed as ``‖a − b‖²`` directly, and when most pairs
    are such (a large common offset), everything is computed centred on the
    reference row. ``scale`` as in :func:`scaled_centred_gram`.

    Returns
    -------
    tuple[torch.Tensor, float]
        ``(len(rows), n)`` float64 on the CPU, and ``scale``.
    """
    n, d = check_updates(x, "cross_sq_distances")
    x, scale = _in_range(x)
    if chunk is None:
        chunk = _CUDA_CHUNK if x.device.type == "cuda" else _CPU_CHUNK
    work = _work_dtype(x)
    index = torch.tensor(rows, device=x.device)
    picked = x[index].to(work)
    dots = torch.zeros(n, len(rows), dtype=torch.float64, device=x.device)
    norms = torch.zeros(n, dtype=torch.float64, device=x.device)
    for start in range(0, d, chunk):
        stop = min(start + chunk, d)
        cols = x[:, start:stop].to(work)
        part = (cols @ picked[:, start:stop].T).to(torch.float64)
        # In the input precision: a float64 norm would copy the chunk.
        sq = torch.linalg.vector_norm(cols, dim=1).to(torch.float64).square()
        if not (
            math.isfinite(float(part.abs().sum())) and math.isfinite(float(sq.sum()))
        ):
            cols = cols.to(torch.float64)
            part = cols @ picked[:, start:stop].to(torch.float64).T
            sq = torch.linalg.vector_norm(cols, dim=1).square()
        dots += part
        norms += sq
    size = norms[index][:, None] + norms[None, :]
    out = (size - 2.0 * dots.T).clamp_(min=0.0)
    bad = size > _MAX_CONDITIONING * out
    bad[torch.arange(len(rows)), index] = False
    if int(bad.sum()) > 2 * n:
        out = _centred_cross(x, index, chunk, work)
    else:
        for c, j in torch.nonzero(bad).tolist():
            gap = x[rows[c]].to(torch.float64) - x[j].to(torch.float64)
            out[c, j] = gap.square().sum()
    out[torch.arange(len(rows)), index] = 0.0
    return out.cpu(), scale


def _centred_cross(
    x: torch.Tensor, index: torch.Tensor, chunk: int, work: torch.dtype
) -> torch.Tensor:
    """:func:`scaled_cross_sq_distances` centred on the reference row (rows with
    a large common offset); ``x`` already scaled."""
    n, d = x.shape
    ref = x[reference_row(x)[0]]
    cross = torch.zeros(len(index), n, dtype=torch.float64, device=x.device)
    norms = torch.zeros(n, dtype=torch.float64, device=x.device)
    for start in range(0, d, chunk):
        stop = min(start + chunk, d)
        y = (x[:, start:stop] - ref[start:stop]).to(work)
        part = (y[index] @ y.T).to(torch.float64)
        sq = y.square().sum(dim=1, dtype=torch.float64)
        if not (
            math.isfinite(float(part.abs().sum())) and math.isfinite(float(sq.sum()))
        ):
            y = x[:, start:stop].to(torch.float64) - ref[start:stop].to(torch.float64)
            part = y[index] @ y.T
            sq = y.square().sum(dim=1)
        cross += part
        norms += sq
    return (norms[index][:, None] + norms[None, :] - 2.0 * cross).clamp_(min=0.0)
