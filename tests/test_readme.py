"""The README's two commands are the ones CI and newcomers run."""

import re

from testutil import REPO


def _bash_blocks():
    return re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)


def test_readme_has_the_two_commands_and_ci_runs_the_test_one():
    blocks = [b.strip() for b in _bash_blocks()]
    main, tests = blocks[0], blocks[1]
    assert "python -m pathfm.main --config configs/quickstart.py" in main
    assert "pytest" in tests
    ci = (REPO / ".ci" / "run").read_text()
    assert tests in ci, "CI must run the README's test command verbatim"
