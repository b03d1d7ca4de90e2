"""Reading the node's /metrics back as Prometheus does (prometheus_client's parser)."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from support.nodes import AUTH


def figures_of(text: str) -> dict[str, dict[tuple, float]]:
    """{metric name: {sorted label items: value}}, as Prometheus parses the text."""
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def scrape(client: httpx.Client, url: str) -> dict[str, dict[tuple, float]]:
    response = client.get(f"{url}/metrics", headers=AUTH)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return figures_of(response.text)


def one(figures: dict, name: str, **labels: str) -> float:
    return figures[name][tuple(sorted(labels.items()))]
