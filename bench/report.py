"""The table (markdown), the issue-6 targets, and the machine the figures came from."""

from __future__ import annotations

import itertools
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

Row = tuple[str, str, str, str, str]  # section, subject, metric, value, ratio to the floor
Results = dict[str, Any]


def machine_info(workdir: Path) -> dict[str, Any]:
    def read(path: str) -> str:
        try:
            return Path(path).read_text().strip()
        except OSError:
            return "?"

    cpu = "?"
    for line in read("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kib = next(
        (int(line.split()[1]) for line in read("/proc/meminfo").splitlines() if "MemTotal" in line),
        0,
    )
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "mem_gib": round(mem_kib / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "filesystem": _fstype(workdir),
        "max_queued_events": read("/proc/sys/fs/inotify/max_queued_events"),
        "max_user_watches": read("/proc/sys/fs/inotify/max_user_watches"),
        "inotifywait": _version(["inotifywait", "--help"]),
        "watchfiles": _module_version("watchfiles"),
        "inotify_simple": _module_version("inotify_simple"),
        "reloadd": _module_version("reloadd"),
        "reloadd_commit": _git_head(),
        "loadavg_start": loadavg(),
    }


def loadavg() -> str:
    """The 1/5/15-minute load: other work on the machine makes every figure noisier."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _fstype(path: Path) -> str:
    best, fstype = "", "?"
    for line in Path("/proc/mounts").read_text().splitlines():
        parts = line.split()
        mount = parts[1]
        if str(path).startswith(mount) and len(mount) > len(best):
            best, fstype = mount, parts[2]
    return fstype


def _version(argv: list[str]) -> str | None:
    if shutil.which(argv[0]) is None:
        return None
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    return (done.stdout or done.stderr).splitlines()[0] if (done.stdout or done.stderr) else "?"


def _module_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name.replace("_", "-"))
    except metadata.PackageNotFoundError:
        return None


def _git_head() -> str | None:
    repo = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        ["git", "-C", str(repo), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.stdout.strip() or None


# --- the table -----------------------------------------------------------------------


def _fmt(value: float | None, unit: str, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f} {unit}".strip()


def _ratio(value: float | None, floor: float | None) -> str:
    if value is None or not floor:
        return ""
    return f"{value / floor:.2f}x"


def _problem(result: dict[str, Any]) -> str | None:
    if "skipped" in result:
        return f"skipped: {result['skipped']}"
    if "error" in result:
        return "error: " + str(result["error"]).splitlines()[0][:120]
    return None


def _section_rows(
    section: str,
    by_subject: dict[str, dict[str, Any]],
    metrics: list[tuple[str, Callable[[dict[str, Any]], float | str | None], str, bool]],
) -> list[Row]:
    """Rows for one section: each metric is (label, getter, unit, compare to the floor)."""
    rows: list[Row] = []
    floor = by_subject.get("floor", {})
    for subject, result in by_subject.items():
        problem = _problem(result)
        if problem:
            rows.append((section, subject, "—", problem, ""))
            continue
        for label, get, unit, compare in metrics:
            value = get(result)
            if isinstance(value, str):
                rows.append((section, subject, label, value, ""))
                continue
            if value is None:
                continue
            reference = get(floor) if compare and not _problem(floor) and floor else None
            digits = 0 if unit in ("", "signals", "wake-ups") else 2
            rows.append(
                (
                    section,
                    subject,
                    label,
                    _fmt(value, unit, digits),
                    _ratio(value, reference) if isinstance(reference, float | int) else "",
                )
            )
    return rows


def _get(*keys: str) -> Callable[[dict[str, Any]], Any]:
    def get(result: dict[str, Any]) -> Any:
        value: Any = result
        for key in keys:
            if not isinstance(value, dict) or key not in value:
                return None
            value = value[key]
        return value

    return get


def table_rows(results: Results) -> list[Row]:
    rows: list[Row] = []
    if "latency" in results:
        rows += _section_rows(
            "latency",
            results["latency"],
            [
                ("p50", _get("p50"), "ms", True),
                ("p90", _get("p90"), "ms", True),
                ("p99", _get("p99"), "ms", True),
                ("max", _get("max"), "ms", True),
                (
                    "samples",
                    lambda r: (
                        f"{len(r['samples_ms'])} ({r['missed']} missed, "
                        f"{r['extra_signals']} extra signals)"
                    ),
                    "",
                    False,
                ),
            ],
        )
    for kind, label, since in (
        ("rewrite", "storm", "last write"),
        ("overflow", "overflow storm", "SIGCONT"),
        ("git", "git checkout", "git's exit"),
    ):
        by_subject = results.get("storm", {}).get(kind)
        if not by_subject:
            continue
        files = next((r["files"] for r in by_subject.values() if "files" in r), "?")
        rows += _section_rows(
            f"{label} {files:,} files" if isinstance(files, int) else label,
            by_subject,
            [
                ("signals", _get("signals"), "signals", False),
                (f"first signal after {since}", _get("first_after_last_write_ms"), "ms", False),
                (f"last signal after {since}", _get("last_after_last_write_ms"), "ms", False),
                ("overflows in its log", _get("log_overflow_mentions"), "", False),
            ],
        )
    for size, by_subject in results.get("startup", {}).items():
        rows += _section_rows(
            f"start-up {int(size):,} files",
            by_subject,
            [
                ("launch → ready", _get("ready_ms"), "ms", True),
                ("peak RSS", _get("rss_mib"), "MiB", True),
            ],
        )
    rows += _growth_rows(results.get("startup", {}))
    if "idle" in results:
        rows += _section_rows(
            "idle",
            results["idle"],
            [
                ("CPU (utime+stime) per 30 s", _per30("cpu_s"), "s", False),
                ("CPU (schedstat, live threads) per 30 s", _per30("cpu_s_precise"), "s", False),
                ("share of one core", lambda r: 100 * r["core_share"], "%", False),
                ("wake-ups per 30 s", _per30("wakeups"), "wake-ups", False),
            ],
        )
    if "many" in results:
        rows += _section_rows(
            "many services",
            results["many"],
            [
                ("launch → ready", _get("ready_ms"), "ms", True),
                ("peak RSS", _get("rss_mib"), "MiB", True),
                ("change latency p50", _get("latency_ms", "p50"), "ms", False),
                ("isolation", _isolation, "", False),
            ],
        )
    return rows


def _per30(key: str) -> Callable[[dict[str, Any]], float]:
    return lambda r: float(r[key]) * 30.0 / float(r["window_s"])


def _isolation(result: dict[str, Any]) -> str | None:
    if "isolated" not in result:
        return None
    verdict = "only the changed service signalled" if result["isolated"] else "WRONG"
    return f"{result['checked']}/{result['services']} checked: {verdict}"


def _growth_rows(startup: dict[str, dict[str, dict[str, Any]]]) -> list[Row]:
    """Ready time per directory between consecutive sizes: flat means linear growth."""
    rows: list[Row] = []
    sizes = sorted(startup, key=int)
    subjects = {name for by_subject in startup.values() for name in by_subject}
    for subject in sorted(subjects):
        steps = []
        for small, large in itertools.pairwise(sizes):
            a, b = startup[small].get(subject, {}), startup[large].get(subject, {})
            if a.get("ready_ms") is None or b.get("ready_ms") is None:
                continue
            per_dir_us = (b["ready_ms"] - a["ready_ms"]) * 1000 / max(1, b["dirs"] - a["dirs"])
            steps.append(f"{int(small):,}→{int(large):,}: {per_dir_us:.0f} µs/dir")
        if steps:
            rows.append(
                ("start-up growth", subject, "ready time per added dir", "; ".join(steps), "")
            )
    return rows


def summary_markdown(results: Results) -> str:
    """One row per subject, the headline figures: the table for the README."""
    storm = results.get("storm", {})
    startup = results.get("startup", {})
    sizes = sorted(startup, key=int)
    names: list[str] = []
    for section in (results.get("latency", {}), *storm.values(), *startup.values()):
        names += [name for name in section if name not in names]

    def cell(result: dict[str, Any] | None, fmt: Callable[[dict[str, Any]], str]) -> str:
        if not result:
            return ""
        if "skipped" in result:
            return "skipped"
        if "error" in result:
            return "error"
        return fmt(result)

    def storm_cell(kind: str, name: str) -> str:
        return cell(
            storm.get(kind, {}).get(name),
            lambda r: f"{r['signals']} / {r['last_after_last_write_ms']:.0f} ms",
        )

    header = [
        "subject",
        "latency p50 / p99",
        "storm: signals / last",
        "overflow: signals / last",
        "git checkout: signals / last",
        *(f"ready {int(size) // 1000}k" for size in sizes),
        *(f"RSS {int(size) // 1000}k" for size in sizes[len(sizes) // 2 :][:1]),
        "idle CPU / 30 s",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    idle = results.get("idle", {})
    for name in names:
        row = [
            name,
            cell(
                results.get("latency", {}).get(name),
                lambda r: f"{r['p50']:.2f} / {r['p99']:.2f} ms" if "p50" in r else "",
            ),
            storm_cell("rewrite", name),
            storm_cell("overflow", name),
            storm_cell("git", name),
            *(cell(startup[size].get(name), lambda r: f"{r['ready_ms']:.0f} ms") for size in sizes),
            *(
                cell(startup[size].get(name), lambda r: f"{r['rss_mib']:.1f} MiB")
                for size in sizes[len(sizes) // 2 :][:1]
            ),
            cell(idle.get(name), lambda r: f"{r['cpu_s'] * 30 / r['window_s']:.2f} s"),
        ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def markdown(rows: list[Row]) -> str:
    header = ("section", "subject", "metric", "value", "x floor")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


# --- issue 6's targets ------------------------------------------------------------------


def targets(results: Results) -> list[dict[str, Any]]:
    """Each target of issue 6 for reloadd: what it asks, what was measured, met or not."""
    out: list[dict[str, Any]] = []

    def add(name: str, measured: str, met: bool | None) -> None:
        out.append({"target": name, "measured": measured, "met": met})

    lat = results.get("latency", {})
    floor, zero, default = (lat.get(k, {}) for k in ("floor", "reloadd-0ms", "reloadd"))
    if "p50" in zero and "p50" in floor:
        gap = zero["p50"] - floor["p50"]
        add(
            "latency 0ms: p50 ≤ floor + 0.5 ms",
            f"{zero['p50']:.2f} ms (floor + {gap:.2f})",
            gap <= 0.5,
        )
    if "p99" in zero:
        add("latency 0ms: p99 < 3 ms", f"{zero['p99']:.2f} ms", zero["p99"] < 3.0)
    if "p50" in default:
        add("latency 20ms: p50 < 21 ms", f"{default['p50']:.2f} ms", default["p50"] < 21.0)
        peers = {k: v["p50"] for k, v in lat.items() if k == "watchfiles" and "p50" in v}
        if peers:
            best = min(peers.values())
            add(
                "latency 20ms: p50 ahead of every coalescing peer",
                f"{default['p50']:.2f} ms vs {best:.2f} ms ({min(peers, key=peers.get)})",  # type: ignore[arg-type]
                default["p50"] < best,
            )
    for kind, since in (("rewrite", "last write"), ("overflow", "SIGCONT"), ("git", "git exit")):
        # The storm targets are for the default debounce; at 0 ms nothing asks reloadd to
        # coalesce, so that subject's storm figures are shown in the table only.
        result = results.get("storm", {}).get(kind, {}).get("reloadd", {})
        if "signals" in result:
            late = result["last_after_last_write_ms"]
            overflows = result.get("log_overflow_mentions")
            runs = result.get("runs", [result])
            each = ", ".join(f"{r['last_after_last_write_ms']:.1f}" for r in runs)
            add(
                f"storm {kind}: exactly 1 reload within debounce + 10 ms (30 ms)",
                f"{result['signals']} signal(s) at most in {len(runs)} run(s), last "
                f"{late:.1f} ms after {since} (median; runs: {each} ms)"
                + ("; an overflow logged in every run" if overflows else ""),
                result["signals"] == 1 and late <= 30.0,
            )
    _startup_targets(results.get("startup", {}), add)
    idle = results.get("idle", {})
    if "cpu_s" in idle.get("reloadd", {}):
        per30 = 30 / idle["reloadd"]["window_s"]
        ticks = idle["reloadd"]["cpu_s"] * per30
        precise = idle["reloadd"]["cpu_s_precise"] * per30
        add(
            "idle inotify: < 0.01 CPU-s per 30 s",
            f"{ticks:.2f} s (utime+stime), {precise:.4f} s (schedstat), "
            f"{idle['reloadd']['wakeups'] * per30:.0f} wake-ups",
            max(ticks, precise) < 0.01,
        )
    if "core_share" in idle.get("reloadd-poll", {}):
        share = idle["reloadd-poll"]["core_share"]
        add("idle poll 1 s: < 25% of one core", f"{100 * share:.1f}%", share < 0.25)
    many = results.get("many", {}).get("reloadd", {})
    if "isolated" in many:
        add(
            "many services: a change signals only its service",
            f"{many['checked']} services checked, {len(many['wrong'])} wrong signal(s)",
            bool(many["isolated"]),
        )
    return out


def _startup_targets(
    startup: dict[str, dict[str, dict[str, Any]]], add: Callable[[str, str, bool | None], None]
) -> None:
    ratios = []
    for size, by_subject in sorted(startup.items(), key=lambda item: int(item[0])):
        floor = by_subject.get("floor", {}).get("ready_ms")
        mine = by_subject.get("reloadd", {}).get("ready_ms")
        if floor and mine:
            ratios.append((int(size), mine / floor))
    if ratios:
        add(
            "start-up: READY ≤ 1.5x floor at every size",
            ", ".join(f"{size:,}: {ratio:.2f}x" for size, ratio in ratios),
            all(ratio <= 1.5 for _, ratio in ratios),
        )
    sizes = sorted(startup, key=int)
    per_dir = []
    for small, large in itertools.pairwise(sizes):
        a, b = startup[small].get("reloadd", {}), startup[large].get("reloadd", {})
        if a.get("ready_ms") is not None and b.get("ready_ms") is not None:
            per_dir.append((b["ready_ms"] - a["ready_ms"]) * 1000 / max(1, b["dirs"] - a["dirs"]))
    if len(per_dir) >= 2 and min(per_dir) > 0:
        add(
            "start-up: growth linear in directories (inotify)",
            " then ".join(f"{us:.0f} µs/dir" for us in per_dir),
            max(per_dir) / min(per_dir) <= 1.5,
        )
    middle = sizes[len(sizes) // 2] if sizes else None
    rss = startup.get(middle, {}).get("reloadd", {}).get("rss_mib") if middle else None
    if rss is not None and middle is not None:
        add(f"start-up: RSS < 30 MiB on {int(middle):,} files", f"{rss:.1f} MiB", rss < 30)


def targets_markdown(items: list[dict[str, Any]]) -> str:
    lines = ["| issue-6 target (reloadd) | measured | met |", "|---|---|---|"]
    for item in items:
        met = {True: "yes", False: "**no**", None: "?"}[item["met"]]
        lines.append(f"| {item['target']} | {item['measured']} | {met} |")
    return "\n".join(lines)


def machine_line(machine: dict[str, Any]) -> str:
    return (
        f"{machine['nproc']} x {machine['cpu']}, {machine['mem_gib']} GiB, Linux "
        f"{machine['kernel']}, Python {machine['python']}, {machine['filesystem']}, "
        f"max_queued_events {machine['max_queued_events']}, reloadd {machine['reloadd_commit']}; "
        f"load average {machine['loadavg_start']} at the start, "
        f"{machine.get('loadavg_end', '?')} at the end"
    )


if __name__ == "__main__":  # print the table of a saved JSON file (recomputed from its results)
    import json

    saved = json.loads(Path(sys.argv[1]).read_text())
    print(f"Machine: {machine_line(saved['machine'])}\n")
    print(summary_markdown(saved["results"]))
    print()
    print(markdown(table_rows(saved["results"])))
    print()
    print(targets_markdown(targets(saved["results"])))
