"""Prometheus samples as the tests read them: every sample of a scrape, of families or of
collectors as ``(name, labels) -> value``, and the values and differences asserted on."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples_of(families: Iterable[Any]) -> Samples:
    """Every sample of metric families (as collectors yield or a parser returns them)."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in families
        for s in family.samples
    }


def parse_samples(text: str) -> Samples:
    """Every sample of a /metrics page in the text format."""
    return samples_of(text_string_to_metric_families(text))


def collected(*collectors: Any) -> Samples:
    """What a scrape of these collectors alone shows, without a socket."""
    registry = CollectorRegistry(auto_describe=False)
    for collector in collectors:
        registry.register(collector)
    return parse_samples(generate_latest(registry).decode())


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample `name` with exactly these labels; 0 when there is none."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)
