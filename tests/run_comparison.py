"""What makes a resumed run equal to the uninterrupted one: its final checkpoint
and its results.json, compared bit for bit where node ids cannot differ."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from flwr_byz.app.checkpoint import CHECKPOINT_FILE, load_checkpoint
from flwr_byz.app.results import without_timings


def comparable(results: dict[str, Any]) -> dict[str, Any]:
    """Rounds and summary without timings and node ids; credits by partition (the
    lists run in node-id order, and node ids differ between the runs)."""
    out = without_timings({k: results[k] for k in ("rounds", "summary")})
    for entry in out["rounds"]:
        if "credits" in entry:
            entry["credits"] = dict(
                zip(entry.pop("credit-partitions"), entry["credits"], strict=True)
            )
    return out


def final_state(run_dir: Path) -> dict[str, Any]:
    """The final checkpoint: model arrays, and the GAA log-credits by partition."""
    payload = load_checkpoint(run_dir / CHECKPOINT_FILE)
    partition = {int(n): p for n, p in payload["nodes"].items()}
    agent = next((s["agent"] for s in payload["strategy"] if "agent" in s), None)
    logits = (
        {}
        if agent is None
        else {partition.get(n, n): v for n, v in agent["logits"].items()}
    )
    return {"arrays": payload["arrays"], "logits": logits, "payload": payload}


def assert_bit_equal(a: dict[str, Any], b: dict[str, Any]) -> None:
    """Two :func:`final_state` results hold the same model and log-credits."""
    assert list(a["arrays"]) == list(b["arrays"])
    for key in a["arrays"]:
        x, y = a["arrays"][key], b["arrays"][key]
        assert x.dtype == y.dtype and torch.equal(x, y), key
    assert set(a["logits"]) == set(b["logits"])
    for p in a["logits"]:
        assert torch.equal(a["logits"][p], b["logits"][p]), p
