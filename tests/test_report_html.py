"""`tunegate report TASK --html FILE`: a self-contained page of charts."""

from __future__ import annotations

import dataclasses
from html.parser import HTMLParser
from pathlib import Path

import yaml

from tests.harness import gateway_config, task_config
from tunegate.config.compiled import load_config
from tunegate.experiments.document import ExperimentsDocument
from tunegate.experiments.report import build_document
from tunegate.experiments.report_html import render_html
from tunegate.experiments.stats import bucket_of


class Page(HTMLParser):
    """Counts what a browser would fetch or run, and checks that tags nest."""

    def __init__(self) -> None:
        super().__init__()
        self.open: list[str] = []
        self.tags: list[str] = []
        self.fetches: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        for name, value in attrs:
            external = (value or "").startswith(("http:", "https:", "//"))
            if name in ("src", "href") or (external and name != "xmlns"):
                self.fetches.append(f"{tag} {name}={value}")
        if tag not in ("meta", "br", "img", "link"):
            self.open.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)

    def handle_endtag(self, tag: str) -> None:
        assert self.open and self.open[-1] == tag, (self.open[-3:], tag)
        self.open.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def sums(n: int, valid: int, latency_s: float, cost: float) -> dict[str, float]:
    return {
        "n": n,
        "ok": valid,
        "first_valid": valid - 2,
        "repaired": 3,
        "calls": n,
        "pt": 80.0 * n,
        "ct": 12.0 * n,
        f"h:{bucket_of(latency_s)}": n - 5,
        f"h:{bucket_of(latency_s * 3)}": 5,
        "lat": latency_s * n,
        "lat_sq": latency_s**2 * n,
        "cost": cost * n,
        "cost_sq": cost**2 * n * 1.1,
        "cost_ok": cost * valid,
        "fb_n": 10,
        "fb_s": 8.0,
        "fb_ss": 7.0,
        "first_ts": 1_700_000_000.0,
        "last_ts": 1_700_086_400.0,
    }


def document(tmp_path: Path) -> ExperimentsDocument:
    path = tmp_path / "gateway.yaml"
    tasks = {"triage": task_config(training_cost_usd=12.4)}
    path.write_text(yaml.safe_dump(gateway_config("http://127.0.0.1:9", tasks)))
    task = load_config(path).tasks["triage"]
    figures = {
        "tuned": sums(400, 392, 0.21, 0.0004),
        "few_shot": sums(380, 340, 0.35, 0.0009),
    }
    pairs = {("tuned", "few_shot"): {"n": 50, "answered": 48, "invalid": 2, "agree": 45,
                                     "dl": 6.0, "dl_sq": 1.2, "dc": 0.02, "dc_sq": 1e-5,
                                     "cost": 0.03}}  # fmt: skip
    return build_document(task, figures, pairs=pairs)


def test_the_page_draws_every_section_and_fetches_nothing(tmp_path: Path) -> None:
    page = Page()
    page.feed(render_html(document(tmp_path)))
    page.close()
    assert page.open == []
    assert page.fetches == []
    assert "script" not in page.tags
    text = " ".join(page.text)
    for heading in ("Quality", "Cost", "Latency", "Differences tuned", "Shadow pairs"):
        assert heading in text, heading
    # Rates with their intervals, cost bars, histograms, the forest plot.
    assert page.tags.count("svg") >= 8
    assert "98.0%" in text  # the tuned success rate, 392 / 400
    assert "pays back after" in text


def test_names_are_escaped(tmp_path: Path) -> None:
    doc = dataclasses.replace(document(tmp_path), task="<b>triage</b> & co")
    html = render_html(doc)
    assert "<b>triage" not in html
    assert "&lt;b&gt;triage&lt;/b&gt; &amp; co" in html


def test_a_task_without_samples_still_renders(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(gateway_config("http://127.0.0.1:9", {"t": task_config()})))
    page = Page()
    page.feed(render_html(build_document(load_config(path).tasks["t"], {})))
    page.close()
    assert page.open == []
    assert "No latency samples yet." in " ".join(page.text)
