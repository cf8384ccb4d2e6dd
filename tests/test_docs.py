"""The documentation: the site builds without a warning (no broken link or anchor, no page left
out of the nav), and the README's and CONTRIBUTING's links lead somewhere."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6} +(.+?) *$", re.MULTILINE)


def build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    command = ["mkdocs", "build", "--strict", "--config-file", str(config), "--site-dir", str(site)]
    return subprocess.run(
        [sys.executable, "-m", *command],
        cwd=config.parent,
        # mkdocs-material prints a notice about MkDocs 2.0 on every build unless told not to
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        check=False,
    )


def test_the_site_builds_without_a_warning(tmp_path: Path) -> None:
    result = build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" not in result.stderr, result.stderr
    assert (tmp_path / "site" / "index.html").is_file()
    assert (tmp_path / "site" / "policies" / "index.html").is_file()


def test_a_broken_link_an_anchor_or_a_page_out_of_the_nav_fails_the_build(
    tmp_path: Path,
) -> None:
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    shutil.copy(ROOT / "mkdocs.yml", tmp_path)
    page = tmp_path / "docs" / "policies.md"
    page.write_text(page.read_text() + "\n[gone](no-such-page.md) [here](#no-such-anchor)\n")
    (tmp_path / "docs" / "orphan.md").write_text("# Orphan\n")
    result = build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert result.returncode != 0
    assert "no-such-page.md" in result.stderr
    assert "no-such-anchor" in result.stderr
    assert "orphan.md" in result.stderr


def _slug(heading: str) -> str:
    """A heading's anchor, as the site's table of contents makes it (Markdown's toc slugify)."""
    text = unicodedata.normalize("NFKD", heading).encode("ascii", "ignore").decode()
    return re.sub(r"[-\s]+", "-", re.sub(r"[^\w\s-]", "", text).strip().lower())


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.DOTALL)
    return {_slug(re.sub(r"[`*]", "", heading)) for heading in HEADING.findall(text)}


@pytest.mark.parametrize("name", ["README.md", "CONTRIBUTING.md", "CHANGELOG.md"])
def test_links_from_the_top_level_files_lead_somewhere(name: str) -> None:
    text = (ROOT / name).read_text()
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (ROOT / path) if path else ROOT / name
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
            broken.append(f"{target}: no such heading in {path or name}")
    assert not broken, f"{name}: " + "; ".join(broken)


def _first_python_block(path: Path) -> str:
    match = re.search(r"```python\n(.*?)```", path.read_text(), flags=re.DOTALL)
    assert match, f"no python code block in {path}"
    return match.group(1)


def test_the_quickstart_is_the_same_in_the_readme_and_on_the_site() -> None:
    assert _first_python_block(ROOT / "README.md") == _first_python_block(
        ROOT / "docs" / "index.md"
    )


def test_the_readme_starts_with_the_two_commands() -> None:
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.DOTALL)
    setup = (
        "python3 -m venv .venv && .venv/bin/pip install -e '.[dev]' -c constraints.txt && "
        ".venv/bin/python examples/payment_saga.py --fail-shipment\n"
    )
    assert blocks[:2] == [setup, ".venv/bin/python -m pytest\n"]
