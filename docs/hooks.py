"""MkDocs hooks: the generated parts of the site.

- ``<!-- rules-table -->`` becomes the rule table of
  :mod:`flwr_byz.aggregation.registry`, so the table shown is the registry's;
  ``<!-- rule-parameters -->`` the run-config keys of the rules' parameters.
- A page that starts with ``<!-- readme -->`` (``index.md``) becomes the
  repository's ``README.md``, its links into ``docs/`` made relative to the site,
  so the front page is written once.
"""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

RULES_TABLE_MARKER = "<!-- rules-table -->"
RULE_PARAMETERS_MARKER = "<!-- rule-parameters -->"
README_MARKER = "<!-- readme -->"

REPO = Path(__file__).resolve().parents[1]


def _registry():
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    return importlib.import_module("flwr_byz.aggregation.registry")


def rules_table() -> str:
    """The registry's rule table (Markdown)."""
    return _registry().rules_table()


def rule_parameters_table() -> str:
    """The run-config keys of the rules' own parameters (Markdown)."""
    return _registry().rule_parameters_table()


def readme_for_site() -> str:
    """README.md with its ``docs/…`` links relative to the site's root."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    return re.sub(r"\]\(docs/", "](", text)


def on_page_markdown(markdown: str, **_: object) -> str:
    """Replace the markers with the generated text."""
    if markdown.startswith(README_MARKER):  # the whole page is the README
        markdown = readme_for_site()
    if RULES_TABLE_MARKER in markdown:
        markdown = markdown.replace(RULES_TABLE_MARKER, rules_table())
    if RULE_PARAMETERS_MARKER in markdown:
        markdown = markdown.replace(RULE_PARAMETERS_MARKER, rule_parameters_table())
    return markdown
