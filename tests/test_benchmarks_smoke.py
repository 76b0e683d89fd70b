"""Every documented benchmark runs, at its smallest size, and prints what it promises.

Each test runs ``python -m benchmarks.<module>`` from the repository root as a
process of its own session (:func:`~flwr_byz.deploy.processes.spawn`), with the
smallest arguments its parser allows, and reads its output: the tables' rows with
numbers in their cells, the JSON files it writes with their keys. Nothing here
times anything: the numbers are checked for being numbers (and ratios and
accuracies for their range), not for their size. Whatever a benchmark started is
stopped by PID when its test ends, and one that outlives the benchmark fails it.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flwr_byz.deploy.processes import log_tail, related, spawn, stop_processes

REPO = Path(__file__).resolve().parents[1]
NUMBER = r"-?\d[\d,]*(?:\.\d+)?"


def run_benchmark(tmp_path: Path, line: str, timeout: float = 240.0) -> str:
    """Run ``python -m benchmarks.<line>`` (a module and its arguments, shell
    words) in the repository root; return its output (stdout and stderr). Fails
    when it exits non-zero, runs past ``timeout`` or leaves a process running."""
    module, *args = shlex.split(line)
    log = tmp_path / f"{module}.log"
    command = [sys.executable, "-m", f"benchmarks.{module}", *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # its lines in the order written
    process = spawn(command, env=env, cwd=REPO, log_file=log)
    try:
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{module} ran past {timeout:g} s{log_tail(log, 40)}")
        deadline = time.monotonic() + 15
        while (left := related(process.pid)) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        stop_processes([process])
    out = log.read_text(encoding="utf-8", errors="replace")
    assert code == 0, f"{module} exited {code}:\n{out[-6000:]}"
    assert not left, f"{module} left processes running: {sorted(left)}"
    return out


def table_rows(out: str, header: str) -> list[list[str]]:
    """The cells of each row of the Markdown table whose header line starts with
    ``header`` (the separator row skipped)."""
    lines = out.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith(header)]
    assert starts, f"no table with header {header!r} in:\n{out[-3000:]}"
    rows = []
    for line in lines[starts[-1] + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def number(cell: str) -> float:
    """The number a table cell shows (``1,024``, ``2.80×``, ``50.0 %``)."""
    match = re.fullmatch(rf"({NUMBER})\s*[×%]?", cell)
    assert match, f"not a number: {cell!r}"
    return float(match.group(1).replace(",", ""))


def test_bench_aggregation_prints_every_matched_rule_with_its_time_and_memory(
    tmp_path: Path,
) -> None:
    out = run_benchmark(
        tmp_path,
        "bench_aggregation --dims 64 --n 7 --f 2 --repeat 1 --threads 1 "
        "--rules faba,bulyan",
    )
    assert re.search(r"^n = 7, d = 64 \(matrix", out, re.M), out
    rows = {row[0]: row[1:] for row in table_rows(out, "| rule | time (s) |")}
    assert list(rows) == [
        "floor: one read (x.sum())",
        "floor: float32 Gram (x @ x.T)",
        "faba (f=2)",
        "bulyan (f=2)",
        "bulyan (f=1)",
    ]
    # Bulyan needs n >= 4f + 3: refused at f = 2, timed at its largest f.
    assert rows["bulyan (f=2)"][0].startswith("refused: ")
    for case, cells in rows.items():
        if case == "bulyan (f=2)":
            continue
        seconds, over_gram, extra_mib, over_matrix = map(number, cells)
        assert seconds >= 0 and over_gram >= 0, case
        # Measured by the memory worker (a failed one shows "n/a (...)").
        assert extra_mib >= 0 and over_matrix >= 0, case
    assert number(rows["floor: float32 Gram (x @ x.T)"][1]) == 1.0


def test_bench_aggregation_memory_worker_builds_the_matrix_it_is_given(
    tmp_path: Path,
) -> None:
    """The worker that measures one rule's memory runs with the seed, thread count
    and offset of the table's timing run."""
    out = run_benchmark(
        tmp_path,
        "bench_aggregation --worker 'faba (f=1)' --n 4 --f 1 --dims 16 "
        "--seed 5 --threads 1 --offset 2",
    )
    report = json.loads(out.strip().splitlines()[-1])
    assert report["case"] == "faba (f=1)"
    assert (report["seed"], report["threads"], report["offset"]) == (5, 1, 2.0)
    assert report["matrix"] == 4 * 16 * 4 and report["extra"] >= 0


def test_bench_strategies_writes_one_row_per_rule_against_flowers(
    tmp_path: Path,
) -> None:
    rows_file = tmp_path / "rows.json"
    out = run_benchmark(
        tmp_path,
        "bench_strategies --dims 1024 --n 7 --f 1 --repeats 1 --threads 1 "
        f"--json {rows_file}",
    )
    rows = json.loads(rows_file.read_text())
    rules = ["Krum", "MultiKrum", "FABA(f=1)", "Bulyan", "Median", "TrimmedMean"]
    assert [r["rule"] for r in rows] == rules
    for r in rows:
        assert (r["d"], r["n"], r["runs"]) == (1024, 7, 1)
        assert r["ours_s"] > 0 and r["floor_s"] > 0 and r["ours_peak_mb"] >= 0
        flower = r["rule"] != "FABA(f=1)"  # FABA has no counterpart in Flower
        assert math.isfinite(r["flower_s"]) == flower, r
        assert math.isfinite(r["speedup"]) == flower, r
    table = table_rows(out, "| d | rule | runs |")
    assert [row[1] for row in table] == rules
    assert number(table[0][7]) == 1.0  # Krum over our Krum
    for row in table:
        assert number(row[0]) == 1024 and number(row[3]) > 0


def test_bench_gaa_reports_time_detection_and_accuracy(tmp_path: Path) -> None:
    rows_file = tmp_path / "gaa.json"
    out = run_benchmark(
        tmp_path,
        "bench_gaa --rounds 2 --cases yelp --betas 0.3 --policies evidence "
        f"--attacks random-fault,alie --out {rows_file}",
    )
    rows = json.loads(rows_file.read_text())
    assert [r["attack"] for r in rows] == ["random-fault", "alie"]
    for r in rows:
        assert (r["case"], r["n"], r["beta"], r["policy"]) == (
            "yelp",
            10,
            0.3,
            "evidence",
        )
        assert r["gaa_ms_median"] > 0 and r["fedavg_ms_median"] > 0
        assert len(r["honest_credit_trace"]) == 2
        assert 0 <= r["final_accuracy"] <= 1
        assert r["detection"], r  # 3 Byzantine of 10: K = 1, βn/3 and βn
        for scores in r["detection"].values():
            assert 0 <= scores["precision"] <= 1 and 0 <= scores["recall"] <= 1
    (reference,) = [
        json.loads(line)
        for line in out.splitlines()
        if line.startswith("{") and "fedavg_no_attack_accuracy" in line
    ]
    assert 0 <= reference["fedavg_no_attack_accuracy"] <= 1
    table = table_rows(out, "| case | attack | β |")
    assert [row[:5] for row in table] == [
        ["yelp", attack, "0.3", "evidence", "0"] for attack in ("random-fault", "alie")
    ]
    for row in table:
        assert number(row[7]) > 0  # GAA ÷ FedAvg
        assert 0 <= number(row[12]) <= 1  # final accuracy


@pytest.mark.slow
def test_bench_scale_writes_rows_for_every_rule_and_draws_the_plot(
    tmp_path: Path,
) -> None:
    from benchmarks.bench_scale import pairs

    rows_file, plot_file = tmp_path / "scale.json", tmp_path / "scale.png"
    out = run_benchmark(
        tmp_path,
        "bench_scale --ns 7 --dims 256 --k 64 --repeats 1 "
        f"--json {rows_file} --plot {plot_file}",
    )
    rows = json.loads(rows_file.read_text())
    names = [name for name, _, _ in pairs(7, 1, 64)] + ["GAA"]
    assert [r["rule"] for r in rows] == names
    for r in rows:
        assert r["n"] == 7 and r["d"] == (33130 if r["rule"] == "GAA" else 256)
        assert r["ours_s"] > 0 and r["floor_s"] > 0 and r["fedavg_s"] > 0
    by_rule = {r["rule"]: r for r in rows}
    assert by_rule["Krum"]["flower_s"] > 0 and by_rule["FABA"]["flower_s"] is None
    assert by_rule["Krum sketch k=64"]["flower_s"] == by_rule["Krum"]["flower_s"]
    assert by_rule["FABA"]["over_krum"] > 0
    table = table_rows(out, "| n | d | rule |")
    assert [row[2] for row in table] == names
    assert all(number(row[6]) > 0 for row in table)  # ours ÷ floor
    assert plot_file.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_honest_only_prints_an_accuracy_per_seed(tmp_path: Path) -> None:
    out = run_benchmark(
        tmp_path, "bench_honest_only --supernodes 2 --rounds 1 --seeds 0,1"
    )
    found = re.findall(
        rf"^seed (\d+): honest only ({NUMBER}) % \(worst class ({NUMBER}) %\)$",
        out,
        re.M,
    )
    assert [seed for seed, _, _ in found] == ["0", "1"], out
    assert all(0 <= float(worst) <= float(acc) <= 100 for _, acc, worst in found)


def test_bench_oversize_reply_refuses_the_extra_array(tmp_path: Path) -> None:
    out = run_benchmark(tmp_path, "bench_oversize_reply --dims 1000 --n 4 --extra-mb 1")
    assert "n=4, d=1,000" in out
    assert re.search(
        rf"without {NUMBER} MB, with {NUMBER} MB; replies rejected: 0 -> 1$",
        out,
        re.M,
    ), out


@pytest.mark.slow
def test_bench_round_time_prints_each_strategys_ratio_to_fedavg(
    tmp_path: Path,
) -> None:
    out = run_benchmark(
        tmp_path,
        "bench_round_time --strategies faba --supernodes 2 --rounds 2 --jobs 2",
        timeout=600,
    )
    assert "yelp-style, 2 clients, 2 rounds, attack random-fault at 0.3" in out
    rows = table_rows(out, "| strategy | round time (s) |")
    assert [row[0] for row in rows] == ["fedavg", "faba"]
    assert rows[0][2] == "1.00×"
    for _, seconds, ratio, accuracy in rows:
        assert number(seconds) > 0 and number(ratio) > 0
        assert 0 <= number(accuracy) <= 100


@pytest.mark.slow
def test_bench_gateway_flood_answers_an_oversize_flood_with_413(
    tmp_path: Path,
) -> None:
    out = run_benchmark(
        tmp_path,
        "bench_gateway_flood --requests 1 --mb 8 --nodes 2",
        timeout=600,
    )
    # 8 MiB is above the gateway's body limit for this app's model.
    match = re.search(
        rf"body limit ({NUMBER}) bytes: answers \['413'\] in {NUMBER} s", out
    )
    assert match and number(match.group(1)) < 8 * 2**20, out
    for name in ("gateway", "superlink"):
        assert re.search(
            rf"^{name} +RSS: {NUMBER} MB before, {NUMBER} MB peak", out, re.M
        ), name
    match = re.search(
        rf"honest round \(FedAvg, 2 SuperNodes\): ({NUMBER}) s alone, "
        rf"({NUMBER}) s beside the flood",
        out,
    )
    assert match and float(match.group(1)) > 0 and float(match.group(2)) > 0, out
