"""Memory of a round with one oversize reply, next to the same round without it.

One of ``n`` replies carries an extra array of ``--extra-mb`` MB (the attack of the
issue: a node that sends far more than the model). The reply Message, with its
bytes, exists before aggregation (Flower has received it); what this measures is
what the strategy adds on top: the peak resident memory during
``aggregate_train``, with and without the extra array, on the same replies
otherwise. The extra array must be refused (``extra-keys``) without being decoded.

    python -m benchmarks.bench_oversize_reply --dims 1000000 --n 10 --extra-mb 411
"""

from __future__ import annotations

import argparse
import gc

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from benchmarks.bench_strategies import _PeakRss, build_fixture
from flwr_byz.strategy import FABA


def _replies(fx, extra: np.ndarray | None) -> list[Message]:
    out = []
    for i, (node, arrays) in enumerate(zip(fx.node_ids, fx.reply_arrays, strict=True)):
        record = dict(arrays)
        if extra is not None and i == 0:
            record["payload"] = Array(extra)
        instruction = Message(RecordDict(), dst_node_id=node, message_type="train")
        content = RecordDict(
            {
                "arrays": ArrayRecord(record),
                "metrics": MetricRecord({"num-examples": 100}),
            }
        )
        out.append(Message(content, reply_to=instruction))
    return out


def measure(d: int, n: int, extra_mb: float) -> dict[str, float]:
    """Peak extra RSS (MB) of aggregate_train without and with the oversize reply."""
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 0
    fx = build_fixture(d, n, f=1)
    extra = np.ones(int(extra_mb * 2**20) // 4, dtype=np.float32)
    result = {"update-matrix-mb": n * d * 4 / 2**20}
    for label, payload in (("without", None), ("with", extra)):
        strategy = FABA(num_malicious_nodes=1)
        strategy.remember_sent(1, fx.theta, dict.fromkeys(fx.node_ids, "train"))
        replies = _replies(fx, payload)
        gc.collect()
        with _PeakRss() as mem:
            _, metrics = strategy.aggregate_train(1, replies)
        assert metrics is not None
        result[f"peak-extra-mb-{label}"] = mem.extra_mb
        result[f"rejected-{label}"] = float(metrics["num-rejected"])
        del replies
        gc.collect()
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, default=1_000_000)
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--extra-mb", type=float, default=411.0)
    args = parser.parse_args(argv)
    r = measure(args.dims, args.n, args.extra_mb)
    print(
        f"n={args.n}, d={args.dims:,} (update matrix {r['update-matrix-mb']:.0f} MB), "
        f"one reply with an extra {args.extra_mb:.0f} MB array"
    )
    print(
        f"peak extra RSS in aggregate_train: without {r['peak-extra-mb-without']:.0f}"
        f" MB, with {r['peak-extra-mb-with']:.0f} MB; replies rejected: "
        f"{r['rejected-without']:.0f} -> {r['rejected-with']:.0f}"
    )


if __name__ == "__main__":
    main()
