"""The README stays a page that leads into the docs site: short, with the two set-up commands CI
relies on, and links that lead somewhere. (The site's own links: `make docs`, strict.)"""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_readme_is_one_page():
    assert len(README.splitlines()) <= 250, "move detail into docs/ (README.md <= 250 lines)"


def test_readme_states_the_two_commands_and_ci_runs_its_test_command():
    setup = README[README.index("## Set-up: two commands"):]
    block = setup[setup.index("```bash") : setup.index("```", setup.index("```bash") + 7)]
    commands = [line.split("#")[0].strip() for line in block.splitlines()[1:]]
    assert commands == ["make repro", "make test"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, re.M), ".ci/run must run the README's test command"
    makefile = (ROOT / "Makefile").read_text()
    test_rule = re.search(r"^test:(.*)$", makefile, re.M)
    assert test_rule and "docs" in test_rule.group(1).split(), "`make test` builds the docs"


def _relative_links(text: str) -> list[str]:
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    return [u for u in links if not re.match(r"[a-z]+:", u) and not u.startswith("#")]


def test_readme_links_lead_to_files():
    links = _relative_links(README)
    assert len(links) >= 10
    missing = [u for u in links if not (ROOT / u.split("#")[0]).is_file()]
    assert not missing, f"README links to missing files: {missing}"


def test_a_broken_link_is_found():
    assert _relative_links("[a](docs/gone.md#x) [b](https://x.org) [c](#top)") == [
        "docs/gone.md#x"
    ]
