"""Where reloadd's time goes: py-spy on the daemon while the benchmark's load runs.

    python bench/flame.py latency [--subject reloadd-0ms] [--samples 2000] [--files 10000]
    python bench/flame.py storm [--samples 5] [--files 10000]
    python bench/flame.py startup [--files 300000]

``latency`` attaches ``py-spy record`` to a running reloadd and rewrites files one at a
time (each waits for its signal); ``storm`` rewrites a whole tree a few times; ``startup``
runs reloadd under py-spy until READY=1. Each writes collapsed stacks
(bench/results/flame-*.txt: flamegraph.pl and speedscope read them) and prints the frames
with the most samples, inclusive and self. Needs ``pip install py-spy`` and root (ptrace).
Not part of run.py: profiling slows the subject down.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from proc import BenchError, NotifyListener, Proc, now_ns, stop_all
from run import scratch_base
from session import Ctx, Session
from subjects import Reloadd, Service, subject_env
from target import Target
from trees import make_tree, new_record, rewrite_all, write_file

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def top(collapsed: Path, count: int = 25) -> str:
    """The frames with the most samples, inclusive and self, from a collapsed-stack file."""
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack:
            continue
        samples = int(n)
        total += samples
        frames = stack.split(";")
        for frame in set(frames):
            inclusive[frame] += samples
        own[frames[-1]] += samples
    out = [f"{total} samples"]
    for title, counter in (("inclusive", inclusive), ("self", own)):
        out.append(f"\n-- {title} --")
        for frame, samples in counter.most_common(count):
            out.append(f"{100 * samples / max(1, total):5.1f}%  {frame}")
    return "\n".join(out)


def py_spy(*args: str) -> list[str]:
    exe = shutil.which("py-spy")
    if exe is None:
        raise SystemExit("py-spy is not installed: pip install py-spy")
    return [exe, "record", "--rate", "2000", "--format", "raw", *args]


def profile_latency(ctx: Ctx, args: argparse.Namespace, out: Path) -> None:
    subject = Reloadd(args.subject, debounce=args.debounce, debounce_s=0.0)
    tree = make_tree(ctx.workdir / "tree", args.files)
    with Session(ctx, subject, [tree.root]) as session:
        session.warm_up()
        spy = Proc(py_spy("--pid", str(session.running.pid), "--output", str(out), "--nonblocking"))
        time.sleep(1.0)  # py-spy has no readiness signal; it starts sampling within a second
        latencies = []
        for i, path in enumerate(tree.spread(args.samples)):
            mark = len(session.target.hups)
            t_write = write_file(path, new_record(f"flame {i}"))
            if not session.target.wait_hups(mark + 1, 5.0):
                raise BenchError("no signal")
            latencies.append((session.target.hups[mark].t_ns - t_write) / 1e6)
            session.target.wait_quiet(0.005 + subject.debounce_s)
        spy.popen.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        spy.popen.wait(30)
        spy.stop()
    latencies.sort()
    print(f"{len(latencies)} samples under py-spy: p50 {latencies[len(latencies) // 2]:.2f} ms")


def profile_storm(ctx: Ctx, args: argparse.Namespace, out: Path) -> None:
    subject = Reloadd("reloadd", debounce=None)
    tree = make_tree(ctx.workdir / "tree", args.files)
    with Session(ctx, subject, [tree.root]) as session:
        session.warm_up()
        spy = Proc(py_spy("--pid", str(session.running.pid), "--output", str(out), "--nonblocking"))
        time.sleep(1.0)  # py-spy has no readiness signal; it starts sampling within a second
        for _ in range(args.samples):
            mark = len(session.target.hups)
            _, last = rewrite_all(tree.files)
            if not session.target.wait_hups(mark + 1, 30.0):
                raise BenchError("no signal")
            late = (session.target.hups[mark].t_ns - last) / 1e6
            print(f"storm of {tree.size:,}: signalled {late:.1f} ms after the last write")
            session.target.wait_quiet(0.5)
        spy.popen.send_signal(signal.SIGINT)
        spy.popen.wait(30)
        spy.stop()


def profile_startup(ctx: Ctx, args: argparse.Namespace, out: Path) -> None:
    tree = make_tree(ctx.workdir / "tree", args.files)
    target = Target(ctx.workdir / "pids", log=ctx.workdir / "target.log")
    try:
        target.wait_up()
        subject = Reloadd("reloadd", debounce=None)
        service = Service("s000", tree.root, target.pidfile(0), target.pids[0])
        config = ctx.workdir / "reloadd.toml"
        config.write_text(subject.config([service], ctx.workdir))
        listener = NotifyListener(ctx.workdir / "notify.sock")
        argv = py_spy("--output", str(out), "--", sys.executable, "-m", "reloadd", "-c")
        started = now_ns()
        spy = Proc([*argv, str(config)], env=subject_env(listener.path))
        ready = listener.wait_ready(started + int(300e9), alive=spy)
        print(f"READY after {(ready - started) / 1e6:.0f} ms under py-spy")
        listener.drain_in_background()
        # py-spy saves when its child exits: end reloadd (the child), not py-spy itself.
        children = Path(f"/proc/{spy.pid}/task/{spy.pid}/children").read_text().split()
        for child in children:
            os.kill(int(child), signal.SIGTERM)
        spy.popen.wait(60)
        spy.stop()
        listener.close()
    finally:
        target.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=("latency", "storm", "startup"))
    parser.add_argument("--subject", default="reloadd-0ms")
    parser.add_argument("--debounce", default="0ms")
    parser.add_argument("--samples", type=int, default=None, help="writes, or storms")
    parser.add_argument("--files", type=int, default=None)
    args = parser.parse_args(argv)
    args.files = args.files or (300_000 if args.what == "startup" else 10_000)
    args.samples = args.samples or (5 if args.what == "storm" else 2000)
    RESULTS_DIR.mkdir(exist_ok=True)
    out = RESULTS_DIR / f"flame-{args.what}-{time.strftime('%Y%m%d-%H%M%S')}.txt"
    workdir = Path(tempfile.mkdtemp(prefix="reloadd-flame-", dir=scratch_base()))
    try:
        ctx = Ctx(workdir, smoke=False)
        {"latency": profile_latency, "storm": profile_storm, "startup": profile_startup}[args.what](
            ctx, args, out
        )
    finally:
        stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    print(top(out))
    print(f"\ncollapsed stacks: {out} (flamegraph.pl or speedscope.app read them)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
