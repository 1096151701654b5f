"""Benchmark reloadd against the floor and its peers: ``python bench/run.py [--smoke]``.

Sections (``--only``): latency, storm, startup, idle, many. Prints a markdown table and the
issue-6 targets, and writes every raw sample plus the machine to JSON (default
``bench/results/bench-<time>.json``). ``--smoke`` runs the same shape on tiny inputs in well
under a minute. docs/benchmarks.md explains the method.
"""

from __future__ import annotations

import argparse
import compileall
import functools
import importlib.util
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import idle
import latency
import many
import report
import startup
import storm
from proc import stop_all
from session import Ctx, attempt
from subjects import Subject, all_subjects
from trees import GitRepo, Tree, make_git_repo, make_tree

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Scale:
    latency_files: int
    latency_samples: int
    poll_latency_samples: int
    storm_files: int
    git_files: int
    startup_sizes: tuple[int, ...]
    startup_reps: int
    idle_window_s: float
    many_services: int
    many_files: int
    many_checks: int
    storm_quiet_s: float
    storm_reps: int
    latency_rounds: int


FULL = Scale(
    latency_files=10_000,
    latency_samples=100,
    poll_latency_samples=20,
    storm_files=10_000,
    git_files=2_000,
    startup_sizes=(10_000, 100_000, 300_000),
    startup_reps=3,
    idle_window_s=30.0,
    many_services=200,
    many_files=500,
    many_checks=5,
    storm_quiet_s=2.5,
    storm_reps=3,
    latency_rounds=2,
)
SMOKE = Scale(
    latency_files=200,
    latency_samples=10,
    poll_latency_samples=3,
    storm_files=1_000,
    git_files=200,
    startup_sizes=(300, 1_000, 3_000),
    startup_reps=1,
    idle_window_s=1.0,
    many_services=5,
    many_files=100,
    many_checks=2,
    storm_quiet_s=0.5,
    storm_reps=1,
    latency_rounds=1,
)

# Which subjects each section runs (before --subjects narrows them further).
SECTION_SUBJECTS = {
    "latency": None,  # all
    "storm": {"floor", "inotifywait", "watchfiles", "reloadd-0ms", "reloadd"},
    "startup": {"floor", "inotifywait", "watchfiles", "reloadd", "reloadd-poll"},
    "idle": {"floor", "inotifywait", "watchfiles", "reloadd", "reloadd-poll"},
    "many": {"floor", "reloadd"},
}


class Trees:
    """Trees made once per run, on first use."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._trees: dict[int, Tree] = {}
        self._repo: GitRepo | None = None
        self._many: tuple[Path, list[Path]] | None = None

    def tree(self, files: int) -> Tree:
        if files not in self._trees:
            started = time.monotonic()
            self._trees[files] = make_tree(self.root / f"tree-{files}", files)
            log(f"  made a {files:,}-file tree in {time.monotonic() - started:.1f} s")
        return self._trees[files]

    def git_repo(self, files: int) -> GitRepo:
        if self._repo is None:
            self._repo = make_git_repo(self.root / f"git-{files}", files)
        return self._repo

    def many(self, services: int, files: int) -> tuple[Path, list[Path]]:
        if self._many is None:
            parent = self.root / f"many-{services}x{files}"
            roots = [make_tree(parent / f"s{i:03d}", files).root for i in range(services)]
            self._many = (parent, roots)
        return self._many


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def for_each(
    subjects: Sequence[Subject], measure: Callable[[Subject], dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for subject in subjects:
        started = time.monotonic()
        out[subject.name] = attempt(subject, functools.partial(measure, subject))
        note = out[subject.name].get("error") or out[subject.name].get("skipped") or "ok"
        first_line = str(note).splitlines()[0]
        log(f"  {subject.name}: {first_line} ({time.monotonic() - started:.1f} s)")
    return out


def chosen(section: str, subjects: Sequence[Subject]) -> list[Subject]:
    allowed = SECTION_SUBJECTS[section]
    return [s for s in subjects if allowed is None or s.name in allowed]


def run_latency(ctx: Ctx, scale: Scale, trees: Trees, subjects: Sequence[Subject]) -> Any:
    tree = trees.tree(scale.latency_files)
    rounds = scale.latency_rounds

    def measure(subject: Subject, round_: int) -> dict[str, Any]:
        samples = scale.poll_latency_samples if subject.polls else scale.latency_samples
        return latency.measure(ctx, subject, tree, max(1, samples // rounds), seed=6 + round_)

    results = [
        for_each(chosen("latency", subjects), lambda s, r=r: measure(s, r)) for r in range(rounds)
    ]
    return {name: latency.combine([r[name] for r in results]) for name in results[0]}


def run_storm(ctx: Ctx, scale: Scale, trees: Trees, subjects: Sequence[Subject]) -> Any:
    tree = trees.tree(scale.storm_files)
    repo = trees.git_repo(scale.git_files)
    quiet, reps = scale.storm_quiet_s, scale.storm_reps
    chosen_subjects = chosen("storm", subjects)
    measures = {
        "rewrite": lambda s: storm.measure_rewrite(ctx, s, tree, quiet),
        "overflow": lambda s: storm.measure_overflow(ctx, s, tree, quiet),
        "git": lambda s: storm.measure_git(ctx, s, repo, quiet),
    }
    return {
        kind: for_each(chosen_subjects, lambda s, m=m: storm.repeat(lambda: m(s), reps))
        for kind, m in measures.items()
    }


def run_startup(ctx: Ctx, scale: Scale, trees: Trees, subjects: Sequence[Subject]) -> Any:
    results = {}
    for size in scale.startup_sizes:
        tree = trees.tree(size)
        measure = functools.partial(startup.measure, ctx, tree=tree, reps=scale.startup_reps)
        results[str(size)] = for_each(chosen("startup", subjects), measure)
    return results


def run_idle(ctx: Ctx, scale: Scale, trees: Trees, subjects: Sequence[Subject]) -> Any:
    tree = trees.tree(scale.startup_sizes[len(scale.startup_sizes) // 2])
    results = idle.measure(ctx, chosen("idle", subjects), tree, scale.idle_window_s)
    for name, result in results.items():
        log(f"  {name}: {result.get('error') or result.get('skipped') or 'ok'}")
    return results


def run_many(ctx: Ctx, scale: Scale, trees: Trees, subjects: Sequence[Subject]) -> Any:
    parent, roots = trees.many(scale.many_services, scale.many_files)
    files = scale.many_services * scale.many_files
    return for_each(
        chosen("many", subjects),
        lambda s: many.measure(ctx, s, parent, roots, files, scale.many_checks),
    )


RUNNERS = {
    "latency": run_latency,
    "storm": run_storm,
    "startup": run_startup,
    "idle": run_idle,
    "many": run_many,
}


def run_sections(
    ctx: Ctx, scale: Scale, sections: Sequence[str], subjects: Sequence[Subject]
) -> dict[str, Any]:
    trees = Trees(ctx.workdir / "trees")
    results: dict[str, Any] = {}
    for section in sections:
        log(f"{section}:")
        started = time.monotonic()
        results[section] = RUNNERS[section](ctx, scale, trees, subjects)
        log(f"  ({section}: {time.monotonic() - started:.0f} s)")
    return results


SECTIONS = tuple(RUNNERS)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny inputs, < 60 s (CI)")
    parser.add_argument(
        "--only", help=f"comma-separated sections: {', '.join(SECTIONS)}", default=""
    )
    parser.add_argument("--subjects", default="", help="comma-separated subject names")
    parser.add_argument("--json", type=Path, help="where to write the JSON results")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    parser.add_argument(
        "--strict", action="store_true", help="exit 1 if any measurement failed (for CI)"
    )
    parser.add_argument(
        "--tmpdir", help="where the scratch directory goes (default: /dev/shm, else $TMPDIR)"
    )
    args = parser.parse_args(argv)
    args.sections = [s for s in args.only.split(",") if s] or list(SECTIONS)
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s): {', '.join(sorted(unknown))}")
    return args


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through every finally: nothing is left running


def compile_reloadd() -> None:
    """Compile reloadd's bytecode, as installing it does (pip compiles on install).

    Run from a checkout with ``PYTHONDONTWRITEBYTECODE=1`` (or right after an edit), every
    launch would compile ~10,000 lines first: 20-40 ms of "start-up" no installed reloadd
    has.
    """
    spec = importlib.util.find_spec("reloadd")
    for directory in (spec.submodule_search_locations or []) if spec else []:
        compileall.compile_dir(directory, quiet=1)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    compile_reloadd()
    scale = SMOKE if args.smoke else FULL
    subjects = all_subjects(args.smoke)
    if args.subjects:
        wanted = set(args.subjects.split(","))
        unknown = wanted - {s.name for s in subjects}
        if unknown:
            raise SystemExit(f"unknown subject(s): {', '.join(sorted(unknown))}")
        subjects = [s for s in subjects if s.name in wanted]
    signal.signal(signal.SIGTERM, _terminate)
    workdir = Path(tempfile.mkdtemp(prefix="reloadd-bench-", dir=args.tmpdir or scratch_base()))
    started = time.monotonic()
    try:
        ctx = Ctx(workdir, args.smoke)
        machine = report.machine_info(workdir)
        results = run_sections(ctx, scale, args.sections, subjects)
        machine["loadavg_end"] = report.loadavg()
        rows = write_report(args, scale, machine, results, time.monotonic() - started)
    finally:
        stop_all()
        if args.keep:
            log(f"scratch kept in {workdir}")
        else:
            log(f"removing {workdir}")
            shutil.rmtree(workdir, ignore_errors=True)
    errors = [row for row in rows if row[3].startswith("error:")]
    if errors and args.strict:
        log(f"--strict: {len(errors)} measurement(s) failed")
        return 1
    return 0


def scratch_base() -> str | None:
    """tmpfs when there is one: the watchers see the same events, and the disk stays out.

    On this machine's virtual disk, removing the 500,000 files of a full run from ext4 took
    longer than the run itself, and background writeback of the trees would land in the
    middle of the measurements.
    """
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > 8 * 2**30:
        return str(shm)
    return None


def write_report(
    args: argparse.Namespace,
    scale: Scale,
    machine: dict[str, Any],
    results: dict[str, Any],
    elapsed: float,
) -> list[report.Row]:
    rows = report.table_rows(results)
    goals = report.targets(results)
    out = args.json or RESULTS_DIR / time.strftime("bench-%Y%m%d-%H%M%S.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "machine": machine,
                "mode": "smoke" if args.smoke else "full",
                "scale": asdict(scale),
                "elapsed_s": elapsed,
                "results": results,
                "table": rows,
                "targets": goals,
            },
            indent=1,
        )
    )
    print(f"Machine: {report.machine_line(machine)}")
    print(f"Mode: {'smoke' if args.smoke else 'full'}, {elapsed:.0f} s\n")
    print(report.summary_markdown(results))
    print()
    print(report.markdown(rows))
    print()
    print(report.targets_markdown(goals))
    print(f"\nJSON: {out}", flush=True)
    return rows


if __name__ == "__main__":
    sys.exit(main())
