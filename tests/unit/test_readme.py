"""README.md stays true: its two commands exist and its settings table lists every setting."""

import re
from pathlib import Path

from service.config import describe

ROOT = Path(__file__).parents[2]
README = (ROOT / "README.md").read_text()


def test_readme_settings_table_lists_every_setting_and_nothing_else() -> None:
    documented = set(re.findall(r"^\| `(WEBHOOKS_[A-Z_]+)` \|", README, flags=re.MULTILINE))
    assert documented == {name for name, _, _ in describe()}


def _same_default(documented: str, actual: str) -> bool:
    """`10` and `10.0`, `false` and `False` say the same."""
    if documented.lower() == actual.lower():
        return True
    try:
        return float(documented) == float(actual)
    except ValueError:
        return False


def test_readme_settings_table_shows_the_real_defaults() -> None:
    rows = re.findall(r"^\| `(WEBHOOKS_[A-Z_]+)` \|([^|]*)\|", README, flags=re.MULTILINE)
    documented = {name: default.strip().strip("`") for name, default in rows}
    wrong = {
        name: (documented[name], actual)
        for name, actual, _ in describe()
        if not _same_default(documented[name], actual)
    }
    assert not wrong, f"README default vs the code: {wrong}"


def test_readme_commands_are_make_targets() -> None:
    makefile = (ROOT / "Makefile").read_text()
    for target in (
        "run",
        "test",
        "install",
        "proto",
        "lint",
        "test-fast",
        "demo",
        "bench",
        "up",
        "down",
    ):
        assert f"make {target}" in README
        assert re.search(rf"^{re.escape(target)}:", makefile, flags=re.MULTILINE), target
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_reliability_section_names_tests_that_exist() -> None:
    section = README.split("## Reliability", 1)[1].split("\n## ", 1)[0]
    named = 0
    for row in section.splitlines():
        current = None
        for ref in re.findall(r"`((?:test_\w+\.py)?(?:::test_\w+)?)`", row):
            path, _, function = ref.partition("::")
            current = path or current
            assert current is not None, ref
            [found] = (ROOT / "tests").rglob(current)  # tests/{unit,integration,e2e}/
            source = found.read_text()
            assert not function or f"def {function}(" in source, ref
            named += 1
    assert named >= 20
