"""results.json stays strict JSON whatever the numbers (fast)."""

from __future__ import annotations

import json
import math

from flwr_byz.app.results import ResultsFile


def test_non_finite_numbers_are_written_as_strings_not_fatal(tmp_path):
    results = ResultsFile(tmp_path, {"seed": 0}, {"byzantine-partitions": [1]})
    results.add_round(
        {"round": 1, "scores": [1.0, math.inf, -math.inf, math.nan], "loss": math.nan}
    )
    text = (tmp_path / "results.json").read_text()
    data = json.loads(
        text,
        parse_constant=lambda c: (_ for _ in ()).throw(
            ValueError(f"non-strict JSON constant {c}")
        ),
    )
    assert data["rounds"][0]["scores"] == [1.0, "inf", "-inf", "nan"]
    assert data["rounds"][0]["loss"] == "nan"
    assert results.data["rounds"][0]["scores"][1] == math.inf  # in memory unchanged
