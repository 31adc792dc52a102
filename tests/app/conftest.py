"""AppTest helpers: run one explorer page headless, find widgets by label."""

from __future__ import annotations

from pathlib import Path

import pytest

PAGES_DIR = Path(__file__).resolve().parents[2] / "apps" / "explorer" / "pages"
DEMO = "demo: tiny random pair"
DEMO_MOE = "demo-moe: tiny random MoE pair"


def page(name: str, pair: str = DEMO, *, timeout: float = 300, **state):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(PAGES_DIR / f"page_{name}.py"), default_timeout=timeout)
    at.session_state["pair_choice"] = pair
    for k, v in state.items():
        at.session_state[k] = v
    return at.run()


def widget(at, kind: str, label: str):
    found = [w for w in getattr(at, kind) if w.label == label]
    if not found:
        raise AssertionError(f"no {kind} labelled {label!r}; have {[w.label for w in getattr(at, kind)]}")
    return found[0]


def clean(at) -> None:
    """No exception element and no error element on the page."""
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def charts(at) -> int:
    return len(at.get("plotly_chart"))


@pytest.fixture(scope="session", autouse=True)
def demo_pairs():
    from apps.explorer.demo import demo_pair_paths

    return demo_pair_paths("demo"), demo_pair_paths("demo-moe")
