"""The README's tour runs as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_starts_with_the_two_commands():
    head = README.read_text().split("##")[0]
    assert "make demo" in head and "make test" in head


def test_tour_runs_as_written(capsys):
    code = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    ns: dict = {}
    exec(compile(code, "README.md", "exec"), ns)
    assert ns["sweep"].to_frame().shape[0] > 0
    assert len(capsys.readouterr().out.strip()) > 0  # the edited model generated something
    s = ns["s"]
    from edits.base import applied_edits

    assert applied_edits(s) == []  # the edit was reverted on exit
