"""The suite's table: one row per scenario, printed and written as Markdown and JSON."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.fault_suite.core import Verdict


@dataclass(frozen=True)
class Row:
    name: str
    group: str
    summary: str
    seconds: float
    verdict: Verdict | None
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.error is None and self.verdict is not None and self.verdict.passed

    def as_dict(self) -> dict[str, Any]:
        row: dict[str, Any] = {
            "scenario": self.name,
            "group": self.group,
            "fault": self.summary,
            "seconds": round(self.seconds, 1),
            "passed": self.passed,
        }
        if self.error is not None:
            row["error"] = self.error
        if self.verdict is not None:
            tally = self.verdict.tally
            row |= {
                "sent": tally.sent,
                "answered": dict(sorted(tally.statuses.items())),
                "codes": dict(sorted(tally.codes().items())),
                "wrong": tally.wrong,
                "lost": tally.lost,
                "p50_ms": round(tally.latency(0.5) * 1000, 1),
                "p99_ms": round(tally.latency(0.99) * 1000, 1),
                "checks": [{"promise": p, "held": h} for p, h in self.verdict.checks],
                "notes": self.verdict.notes,
            }
        return row


def _answered(row: dict[str, Any]) -> str:
    return " ".join(f"{status}:{n}" for status, n in row.get("answered", {}).items())


def _assertion(row: dict[str, Any]) -> str:
    if "error" in row:
        return f"ERROR: {row['error']}"
    parts = [("" if c["held"] else "FAILED ") + c["promise"] for c in row.get("checks", [])]
    return "; ".join(parts)


def markdown(rows: list[Row], started: float, elapsed: float) -> str:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started))
    passed = sum(1 for r in rows if r.passed)
    lines = [
        f"# Fault suite, {stamp}",
        "",
        f"{passed}/{len(rows)} scenarios passed in {elapsed:.0f} s.",
        "",
        "| scenario | fault | sent | answered | wrong | lost | p50 ms | p99 ms | assertion "
        "| result |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    notes = []
    for row in rows:
        d = row.as_dict()
        lines.append(
            f"| {d['scenario']} | {d['fault']} | {d.get('sent', '')} | {_answered(d)} "
            f"| {d.get('wrong', '')} | {d.get('lost', '')} | {d.get('p50_ms', '')} "
            f"| {d.get('p99_ms', '')} | {_assertion(d)} | {'pass' if row.passed else 'FAIL'} |"
        )
        extra = list(d.get("notes", []))
        if d.get("codes"):
            extra.append("codes: " + ", ".join(f"{k} x{v}" for k, v in d["codes"].items()))
        if extra:
            notes.append(f"- **{d['scenario']}**: " + "; ".join(extra))
    if notes:
        lines += ["", "Notes:", "", *notes]
    return "\n".join(lines) + "\n"


def write(rows: list[Row], started: float, elapsed: float, out_dir: Path) -> tuple[Path, Path]:
    """Write faults-<UTC time>.md and .json into `out_dir`; return both paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = "faults-" + time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(started))
    md_path = out_dir / f"{stem}.md"
    json_path = out_dir / f"{stem}.json"
    md_path.write_text(markdown(rows, started, elapsed))
    document = {
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "seconds": round(elapsed, 1),
        "passed": all(r.passed for r in rows),
        "scenarios": [r.as_dict() for r in rows],
    }
    json_path.write_text(json.dumps(document, indent=2) + "\n")
    return md_path, json_path
