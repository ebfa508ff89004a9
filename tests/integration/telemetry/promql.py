"""Just enough PromQL to check dashboard queries against a scrape: selectors and groupings.

A dashboard panel returns data when every vector selector in its query (metric name +
label matchers, after Grafana's variables are substituted) selects at least one series,
and every label it groups by (``by (...)``) exists on those series. That is what this
module evaluates; the functions around the selectors (rate, sum, histogram_quantile,
label_join) only reshape series that must exist first.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

Sample = tuple[str, Mapping[str, str]]  # (series name, labels)

_SELECTOR = re.compile(r"\b(istio_[a-zA-Z0-9_]+)\b\s*(\{[^}]*\})?")
_MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
_BY = re.compile(r"\bby\s*\(([^)]*)\)")
_VARIABLE = re.compile(r"\$(__[a-z_]+|[a-zA-Z_][a-zA-Z0-9_]*)")


@dataclass(frozen=True)
class Matcher:
    label: str
    op: str
    value: str

    def ok(self, labels: Mapping[str, str]) -> bool:
        have = labels.get(self.label, "")  # PromQL: a missing label is the empty string
        if self.op == "=":
            return have == self.value
        if self.op == "!=":
            return have != self.value
        full = re.fullmatch(self.value, have) is not None  # PromQL regexes are anchored
        return full if self.op == "=~" else not full


@dataclass(frozen=True)
class Selector:
    metric: str
    matchers: tuple[Matcher, ...]

    def select(self, samples: Iterable[Sample]) -> list[Mapping[str, str]]:
        return [
            labels
            for name, labels in samples
            if name == self.metric and all(m.ok(labels) for m in self.matchers)
        ]


def variables(expr: str) -> set[str]:
    return {v for v in _VARIABLE.findall(expr) if not v.startswith("__")}


def substitute(expr: str, values: Mapping[str, str]) -> str:
    def repl(m: re.Match[str]) -> str:
        name = m.group(1)
        return "1m" if name.startswith("__") else values[name]

    return _VARIABLE.sub(repl, expr)


def selectors(expr: str) -> list[Selector]:
    out = []
    for m in _SELECTOR.finditer(expr):
        body = m.group(2) or "{}"
        matchers = tuple(Matcher(*mm.groups()) for mm in _MATCHER.finditer(body))
        out.append(Selector(m.group(1), matchers))
    return out


def grouping_labels(expr: str) -> set[str]:
    labels: set[str] = set()
    for m in _BY.finditer(expr):
        labels.update(part.strip() for part in m.group(1).split(",") if part.strip())
    return labels
