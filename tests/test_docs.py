"""The documentation: the site builds in strict mode, and every command it shows is
known to a test.

``mkdocs build --strict`` fails on a broken link, a missing anchor, a page left out
of the navigation and an API reference (``::: module``) that does not resolve. Every
shell command in a code block of ``README.md`` or ``docs/*.md`` that starts with
``flwr-byz``, ``python -m``, ``flwr run`` or ``mkdocs`` (and every such command written
inline with its flags) must match an entry of :data:`COMMANDS`, whose tests must
exist; and each one's arguments are parsed by the real command-line parser (a grid
with ``--dry-run``, a run config by the app's own check), so a documented flag or
key that the code does not accept fails here.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

# One worker builds the site once for the whole module.
pytestmark = pytest.mark.xdist_group("docs")

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
PAGES = [REPO / "README.md", *sorted(DOCS.glob("*.md"))]

#: Each documented command, by its leading words, and the tests that run it. A
#: command no end-to-end test runs is at least parsed here
#: (``test_every_documented_command_is_accepted_by_its_parser``).
PARSED = "tests/test_docs.py::test_every_documented_command_is_accepted_by_its_parser"
COMMANDS: dict[str, list[str]] = {
    "flwr run": [
        "tests/test_app.py::test_three_rounds_write_every_field",
        "tests/test_app.py::test_a_run_whose_superlink_is_killed_resumes_bit_for_bit",
        "tests/test_deployment.py::"
        "test_tls_deployment_faba_removes_the_attacker_and_a_sleeper_never_stalls",
        PARSED,
    ],
    "flwr-byz run": [
        "tests/test_run_status.py::"
        "test_flwr_byz_run_exits_zero_for_a_healthy_run_and_refuses_a_resubmission",
        PARSED,
    ],
    "flwr-byz status": [
        "tests/test_run_status.py::"
        "test_finish_records_the_verdict_and_the_status_command_exits_by_it",
        PARSED,
    ],
    "flwr-byz grid": [
        "tests/test_grid_file.py::test_smoke_grid_dry_run_lists_its_cells",
        "tests/test_grid_jobs.py::"
        "test_two_cells_at_once_match_one_by_one_and_a_failure_names_its_error",
        "tests/test_grid_ray_cluster.py::"
        "test_a_grid_runs_its_clientapps_on_every_node_of_a_ray_cluster",
        PARSED,
    ],
    "flwr-byz report": [
        "tests/test_grid_cells.py::test_report_writes_tables_curves_and_gaa_credit_traces",
        PARSED,
    ],
    "python -m flwr_byz.deploy.deployment --nodes": [
        "tests/test_deployment.py::"
        "test_the_readme_command_runs_the_app_and_leaves_nothing_running",
        PARSED,
    ],
    "python -m flwr_byz.deploy.deployment --make-certificates": [
        "tests/test_deploy_commands.py::test_make_certificates_as_the_docs_show",
        PARSED,
    ],
    "python -m flwr_byz.deploy.deployment --make-supernode-keys": [
        "tests/test_deploy_commands.py::"
        "test_make_and_register_supernode_keys_as_the_docs_show",
        PARSED,
    ],
    "python -m flwr_byz.deploy.fleet_gateway": [
        "tests/test_deploy_commands.py::test_fleet_gateway_help",
        "tests/test_fleet_gateway_limits.py::"
        "test_the_gateway_process_refuses_a_body_over_its_command_line_limit",
        "tests/test_deployment_security.py::"
        "test_gateway_forwards_the_fleet_api_and_nothing_else",
        PARSED,
    ],
    "python -m flwr_byz.aggregation.registry": [
        "tests/test_docs.py::test_the_registry_module_prints_the_rule_table",
    ],
    "python -m benchmarks.bench_aggregation": [
        "tests/test_benchmarks_smoke.py::"
        "test_bench_aggregation_prints_every_matched_rule_with_its_time_and_memory",
        "tests/test_benchmarks_smoke.py::"
        "test_bench_aggregation_memory_worker_builds_the_matrix_it_is_given",
        PARSED,
    ],
    "python -m benchmarks.bench_strategies": [
        "tests/test_benchmarks_smoke.py::"
        "test_bench_strategies_writes_one_row_per_rule_against_flowers",
        PARSED,
    ],
    "python -m benchmarks.bench_gaa": [
        "tests/test_benchmarks_smoke.py::"
        "test_bench_gaa_reports_time_detection_and_accuracy",
        PARSED,
    ],
    "python -m benchmarks.bench_round_time": [
        "tests/test_benchmarks_smoke.py::"
        "test_bench_round_time_prints_each_strategys_ratio_to_fedavg",
        PARSED,
    ],
    "python -m benchmarks.bench_scale": [
        "tests/test_benchmarks_smoke.py::"
        "test_bench_scale_writes_rows_for_every_rule_and_draws_the_plot",
        PARSED,
    ],
    "python -m benchmarks.bench_honest_only": [
        "tests/test_benchmarks_smoke.py::"
        "test_bench_honest_only_prints_an_accuracy_per_seed",
        PARSED,
    ],
    "python -m benchmarks.bench_oversize_reply": [
        "tests/test_benchmarks_smoke.py::"
        "test_bench_oversize_reply_refuses_the_extra_array",
        PARSED,
    ],
    "python -m benchmarks.bench_gateway_flood": [
        "tests/test_benchmarks_smoke.py::"
        "test_bench_gateway_flood_answers_an_oversize_flood_with_413",
        PARSED,
    ],
    "mkdocs build": ["tests/test_docs.py::test_the_site_builds_in_strict_mode"],
    "mkdocs serve": ["tests/test_docs.py::test_the_site_builds_in_strict_mode"],
}

REGISTRY_MODULE = "flwr_byz.aggregation.registry"
_PREFIXES = ("flwr-byz", "python -m", "flwr run", "mkdocs")
_SEPARATORS = set(";&|\n()")


def _shell_commands(block: str) -> list[list[str]]:
    """The simple commands of a shell code block, each as its words."""
    lexer = shlex.shlex(
        re.sub(r"\\\n", " ", block), posix=True, punctuation_chars=";&|\n()"
    )
    lexer.whitespace = " \t\r"
    lexer.whitespace_split = True
    lexer.commenters = ""
    commands: list[list[str]] = [[]]
    comment = False
    for token in lexer:
        if set(token) <= _SEPARATORS:
            comment = comment and "\n" not in token
            commands.append([])
        elif comment or token.startswith("#"):
            comment = True
        else:
            commands[-1].append(token)
    return commands


def _strip_env(words: list[str]) -> list[str]:
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", words[0]):
        words = words[1:]
    return words


def documented_commands() -> list[tuple[str, list[str]]]:
    """``(page, words)`` of every documented command this test covers."""
    found = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for block in re.findall(r"```(?:bash|sh|shell|console)\n(.*?)```", text, re.S):
            for words in map(_strip_env, _shell_commands(block)):
                if " ".join(words[:2]).startswith(_PREFIXES):
                    found.append((page.name, words))
        prose = re.sub(r"```.*?```", "", text, flags=re.S)
        for span in re.findall(r"`([^`]+)`", prose):
            words = span.split()
            if not " ".join(words[:2]).startswith(_PREFIXES):
                continue
            module = words[2] if words[:2] == ["python", "-m"] else ""
            ours = module.startswith(("flwr_byz", "benchmarks"))
            if any(w.startswith("--") for w in words) or (ours and len(words) == 3):
                found.append((page.name, words))
    return found


def _entry(words: list[str]) -> str | None:
    line = " ".join(words)
    matches = [key for key in COMMANDS if (line + " ").startswith(key + " ")]
    return max(matches, key=len) if matches else None


def _test_exists(node_id: str) -> bool:
    path, _, name = node_id.partition("::")
    file = REPO / path
    if not file.is_file():
        return False
    tree = ast.parse(file.read_text(encoding="utf-8"))
    return any(
        isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == name
        for node in tree.body
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site, built once for this module with ``mkdocs build --strict``."""
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return out


def test_the_site_builds_in_strict_mode(site: Path) -> None:
    for page in ("index.html", "strategies/index.html", "api/strategy/index.html"):
        assert (site / page).is_file(), page
    api = (site / "api" / "strategy" / "index.html").read_text(encoding="utf-8")
    assert 'id="flwr_byz.strategy.FABA"' in api  # generated from the docstrings
    index = (site / "index.html").read_text(encoding="utf-8")
    assert "Quick start 3" in index and "<!-- readme -->" not in index
    assert "home page is the repository" not in index  # the README replaced it
    assert 'href="strategies/"' in index  # README's docs/ links, made the site's


def test_the_strategies_page_shows_the_registrys_rule_table(site: Path) -> None:
    from flwr_byz.aggregation import registry

    source = (DOCS / "strategies.md").read_text(encoding="utf-8")
    assert source.count("<!-- rules-table -->") == 1
    assert "| `faba` |" not in source  # generated, never pasted
    html = (site / "strategies" / "index.html").read_text(encoding="utf-8")
    assert "rules-table" not in html
    for rule in registry.REGISTRY:
        row = f"<td><code>{rule.name}</code></td>"
        assert row in html, rule.name


def test_the_registry_module_prints_the_rule_table() -> None:
    from flwr_byz.aggregation import registry

    table = registry.rules_table
    done = subprocess.run(
        [sys.executable, "-m", "flwr_byz.aggregation.registry"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == table()


def test_the_pages_find_the_commands_they_show() -> None:
    """The extraction this module relies on sees the commands of the README."""
    commands = [" ".join(words) for page, words in documented_commands()]
    assert "flwr run . --stream --federation-config num-supernodes=10" in commands
    assert (
        "pip install torch==2.13.0 -e .[test]" not in commands
    )  # not one of ours to check
    assert "mkdocs build --strict" in commands
    assert "python -m flwr_byz.deploy.deployment --nodes 4 --rounds 3" in commands
    assert any(c.startswith("python -m benchmarks.bench_scale") for c in commands)
    multi_line = [c for c in commands if c.startswith("flwr run . my-federation")]
    assert multi_line and "output-dir=" in multi_line[0]


def test_every_documented_command_is_known_to_a_test() -> None:
    unknown = [
        f"{page}: {' '.join(words)}"
        for page, words in documented_commands()
        if _entry(words) is None
    ]
    assert not unknown, "add to COMMANDS, with the test that runs it:\n" + "\n".join(
        unknown
    )
    missing = [n for nodes in COMMANDS.values() for n in nodes if not _test_exists(n)]
    assert not missing, missing


class ParsedError(Exception):
    """Raised in place of running a command once its arguments are parsed."""


def _parse_only(monkeypatch: pytest.MonkeyPatch) -> None:
    def parse_args(self, args=None, namespace=None):
        namespace, extra = self.parse_known_args(args, namespace)
        if extra:
            self.error(f"unrecognized arguments: {' '.join(extra)}")
        raise ParsedError(namespace)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_args)


def _config_values(words: list[str], flag: str) -> dict[str, object]:
    from flwr.common.config import parse_config_args

    values = [words[i + 1] for i, w in enumerate(words[:-1]) if w == flag]
    return parse_config_args(values) if values else {}


def _check_flwr_run(words: list[str]) -> None:
    from flwr_byz.app.config import check_run_config

    run_config = _config_values(words, "--run-config")
    if run_config:
        check_run_config(run_config)


def test_every_documented_command_is_accepted_by_its_parser(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from flwr_byz.experiments import cli

    monkeypatch.chdir(REPO)
    checked = 0
    for page, words in documented_commands():
        where = f"{page}: {' '.join(words)}"
        if words[:2] in (["flwr", "run"], ["flwr-byz", "run"]):
            _check_flwr_run(words)
        elif words[0] == "flwr-byz" and {"-h", "--help"} & set(words):
            with pytest.raises(SystemExit) as done:
                cli.main(words[1:])
            assert done.value.code == 0, where
            capsys.readouterr()
        elif words[:2] == ["flwr-byz", "grid"]:
            args = [w for w in words[2:] if w != "--dry-run"]
            assert cli.main(["grid", *args, "--dry-run"]) == 0, where
            assert re.search(r"^\d+ cells$", capsys.readouterr().out, re.M), where
        elif words[0] == "flwr-byz":
            with monkeypatch.context() as patch:
                _parse_only(patch)
                with pytest.raises(ParsedError):
                    cli.main(words[1:])
        elif (
            words[:2] == ["python", "-m"]
            and words[2] != "flwr_byz.aggregation.registry"
        ):
            module = importlib.import_module(words[2])
            with monkeypatch.context() as patch:
                _parse_only(patch)
                patch.setattr(sys, "argv", [words[2], *words[3:]])
                with pytest.raises(ParsedError):
                    module.main()
        else:
            continue
        checked += 1
    assert checked >= 30


def _hooks():
    spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_configuration_page_lists_every_run_config_key() -> None:
    import tomllib

    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    keys = set(pyproject["tool"]["flwr"]["app"]["config"])
    page = _hooks().on_page_markdown((DOCS / "configuration.md").read_text("utf-8"))
    documented = set()
    for line in page.splitlines():
        if line.startswith("| `"):
            documented |= set(re.findall(r"`([a-z0-9-]+)`", line.split("|")[1]))
    assert keys - documented == set(), "undocumented run-config keys"
    assert documented - keys == set(), "documented keys the app does not have"


def test_the_reject_reason_table_lists_every_code() -> None:
    from flwr_byz.strategy import MissingReason, RejectReason

    page = (DOCS / "strategies.md").read_text(encoding="utf-8")
    for enum in (RejectReason, MissingReason):
        for member in enum:
            assert f"| {member.value} | {member.name} |" in page, member


def test_no_page_narrates_how_the_project_was_built() -> None:
    phrases = re.compile(
        r"\b(now|the issue'?s?|the lead|lands|was no faster|asked for|used to|"
        r"previous polic|earlier polic|current polic|before the change|"
        r"after the change)\b",
        re.I,
    )
    found = [
        f"{page.name}:{number}: {line.strip()}"
        for page in PAGES
        for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1)
        if phrases.search(line)
    ]
    assert not found, "\n".join(found)


def test_every_table_starts_with_its_header() -> None:
    """A table row after a blank line starts a new table, which needs a header
    and a separator row: a blank line inside a table splits it."""
    split = []
    for page in PAGES:
        lines = re.sub(
            r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S
        ).splitlines()
        for number, line in enumerate(lines):
            starts = line.startswith("|") and not lines[number - 1].startswith("|")
            following = lines[number + 1] if number + 1 < len(lines) else ""
            if starts and not re.fullmatch(r"\|[-:| ]+\|\s*", following):
                split.append(f"{page.name}: {line[:60]}")
    assert not split, split


def test_the_readme_test_command_is_what_ci_runs() -> None:
    command = (
        'pip install torch==2.13.0 -e ".[test]" && ruff check . && '
        "ruff format --check . && pytest"
    )
    readme = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert command in readme
    assert command in (REPO / ".ci" / "run").read_text(encoding="utf-8")


def test_every_shipped_grid_file_is_documented() -> None:
    text = "\n".join(page.read_text(encoding="utf-8") for page in PAGES)
    grids = sorted((REPO / "flwr_byz" / "experiments" / "grids").glob("*.toml"))
    assert grids
    assert [g.name for g in grids if g.name not in text] == []
