"""The documentation site builds with warnings as errors (``mkdocs build --strict``).

Needs the ``docs`` extra (``pip install -e ".[docs]"``, which ``.ci/run`` installs);
skipped with a reason when MkDocs is missing, except under ``CI=true``.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_docs_site_builds_strict(tmp_path):
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("material") is None:
        msg = 'mkdocs / mkdocs-material not installed (pip install -e ".[docs]")'
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    res = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert res.returncode == 0, res.stderr[-3000:]
    for page in ("index.html", "configuration/index.html", "outputs/index.html"):
        assert (tmp_path / "site" / page).is_file(), page


def test_readme_links_resolve():
    """Every relative link of README.md points at a file of the repository."""
    text = (REPO_ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [ln for ln in links if not re.match(r"[a-z]+:", ln)]
    assert local, "README links into docs/"
    missing = [ln for ln in local if not (REPO_ROOT / ln).exists()]
    assert not missing, missing
