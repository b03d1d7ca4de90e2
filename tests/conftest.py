"""Shared fixtures: phantom series on disk and the node running as a real process."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import pytest

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))

from support.nodes import NodeProcess  # noqa: E402
from support.phantom import PhantomSpec, PhantomTruth, write_series  # noqa: E402


@pytest.fixture
def node_factory(tmp_path):
    """Make nodes with a given config text; they are stopped after the test."""
    nodes: list[NodeProcess] = []

    def make(config: str = "", start: bool = True, env: dict[str, str] | None = None,
             name: str = "node", new_session: bool = False) -> NodeProcess:
        base = tmp_path / name
        base.mkdir(exist_ok=True)
        n = NodeProcess(base, config, env, new_session)
        nodes.append(n)
        return n.start() if start else n

    yield make
    for n in nodes:
        n.stop()


@pytest.fixture(scope="session")
def phantom_factory(tmp_path_factory) -> Callable[..., PhantomTruth]:
    """Write phantom series once per session per distinct spec."""
    cache: dict[str, PhantomTruth] = {}
    root = tmp_path_factory.mktemp("phantoms")

    def make(name: str, **spec) -> PhantomTruth:
        if name not in cache:
            cache[name] = write_series(PhantomSpec(**spec), root / name)
        return cache[name]

    return make
