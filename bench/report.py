"""Render benchmark results: console lines while running, and the Markdown of
``docs/performance.md`` (``python -m bench.report RESULTS.json`` prints it again)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["fmt_value", "render_markdown", "targets", "text_lines"]


def fmt_value(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "s":
        if value < 1e-3:
            return f"{value * 1e6:.1f} µs"
        if value < 1:
            return f"{value * 1e3:.2f} ms"
        return f"{value:.3f} s"
    if unit == "ms":
        return f"{value:.2f} ms"
    if value >= 100:
        return f"{value:,.0f} {unit}"
    return f"{value:.2f} {unit}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _met(target: dict[str, Any]) -> str:
    met = target.get("met")
    return "n/a" if met is None else ("met" if met else "**NOT met**")


def targets(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(benchmark, case, target, outcome) for every case that has a target."""
    out = []
    for bench in results["benchmarks"]:
        for c in bench.get("cases", []):
            t = c.get("target")
            if t:
                value = t.get("value")
                shown = f"{value:.2f}" if isinstance(value, float) else str(value)
                out.append((bench["title"], c["case"], t["text"], f"{_met(t)} ({shown})"))
    return out


def text_lines(entry: dict[str, Any]) -> list[str]:
    """One benchmark's results for the console."""
    if entry["status"] != "ok":
        return [f"  {entry['status'].upper()}: {entry.get('reason', '')}"]
    lines = []
    for c in entry["cases"]:
        lines.append(f"  {c['case']}  [ratio: {c['ratio_label']}]")
        for r in c["rows"]:
            med, lo, hi = (fmt_value(r[k], c["unit"]) for k in ("median", "min", "max"))
            lines.append(
                f"    {r['variant']:<44} median {med:>12}  min {lo:>12}  max {hi:>12}"
                f"  ratio {_ratio(r.get('ratio')):>8}"
            )
        if c.get("target"):
            lines.append(f"    target {c['target']['text']}: {_met(c['target'])}")
    lines.extend(f"  note: {n}" for n in entry.get("notes", []))
    return lines


def _machine(m: dict[str, Any]) -> list[str]:
    disk = m.get("disk", {})
    return [
        f"- CPU: {m.get('cpu')}, {m.get('cores')} cores; RAM {m.get('ram_gib')} GiB",
        f"- Disk: {disk.get('device')} ({disk.get('fstype')}, "
        f"{'rotational' if disk.get('rotational') else 'SSD/virtual'}) at {disk.get('mount')}",
        f"- Kernel {m.get('kernel')}; Python {m.get('python')}",
        "- Packages: " + ", ".join(f"{k} {v}" for k, v in m.get("packages", {}).items()),
        "- Tools: " + ", ".join(f"{k}: {str(v)[:40]}" for k, v in m.get("tools", {}).items()),
        f"- Load average at start / end: {m.get('loadavg_start')} / {m.get('loadavg_end')}",
    ]


def render_markdown(results: dict[str, Any]) -> str:
    lines = [
        f"Mode **{results['mode']}**, {results['runs_per_variant']} interleaved runs per variant "
        f"after one warm-up; started {results['started_at']}; took {results.get('seconds')} s.",
        f"Command: `{results.get('command', 'python -m bench')}`.",
        "",
        "Machine:",
        "",
        *_machine(results["machine"]),
        "",
        "### Targets",
        "",
        "| benchmark | case | target | outcome (value) |",
        "|---|---|---|---|",
        *(f"| {b} | {c} | {t} | {o} |" for b, c, t, o in targets(results)),
        "",
    ]
    for bench in results["benchmarks"]:
        lines += [f"### {bench['title']}", ""]
        if bench["status"] != "ok":
            lines += [f"**{bench['status']}**: {bench.get('reason', '')}", ""]
            continue
        for c in bench["cases"]:
            lines += [
                f"**{c['case']}** (ratio = {c['ratio_label']})",
                "",
                "| variant | median | min | max | ratio | note |",
                "|---|---:|---:|---:|---:|---|",
            ]
            for r in c["rows"]:
                cells = [fmt_value(r[k], c["unit"]) for k in ("median", "min", "max")]
                lines.append(
                    f"| {r['variant']} | {' | '.join(cells)} | {_ratio(r.get('ratio'))} "
                    f"| {r.get('note', '')} |"
                )
            lines.append("")
        lines += [f"- {n}" for n in bench.get("notes", [])]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m bench.report RESULTS.json")
    sys.stdout.write(render_markdown(json.loads(Path(sys.argv[1]).read_text())))
