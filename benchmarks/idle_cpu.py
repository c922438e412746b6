"""CPU per minute of a real `dagster-daemon run` (daemon, its code server and any run workers).

    uv run python benchmarks/idle_cpu.py tradebeat            # tradebeat, no symbol registered
    uv run python benchmarks/idle_cpu.py empty                # a one-asset project, default dagster.yaml
    uv run python benchmarks/idle_cpu.py empty --dagster-yaml dagster_home/dagster.yaml
    uv run python benchmarks/idle_cpu.py tradebeat --set run_coordinator.config.dequeue_interval_seconds=5 \
        --minutes 3 --settle 60 --repeat 2

The daemon starts in its own session with a temporary DAGSTER_HOME (a copy of the given dagster.yaml,
optionally edited with `--set dotted.key=yaml-value`), settles, and then the CPU of every process of
that session is sampled for the window: utime+stime of the live processes plus cutime+cstime (the
children they reaped), so processes that come and go inside the window are counted; a process that
leaves without being reaped inside the session (it should not happen) is counted from its last
sample. The window's CPU is also split by process kind (daemon, code server, run worker, other)
from each process's own utime+stime.

Importable: `measure(...)` returns a `Measurement`; `benchmarks/startup.py` uses it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent
TICK = os.sysconf("SC_CLK_TCK")

EMPTY_DEFS = """
import dagster as dg

@dg.asset
def one() -> int:
    return 1

defs = dg.Definitions(assets=[one])
"""


@dataclass
class Proc:
    ppid: int
    session: int
    own: float  # utime + stime, s
    children: float  # cutime + cstime, s
    cmd: str


@dataclass
class Measurement:
    label: str
    minutes: float
    cpu_s: float
    by_kind: dict[str, float] = field(default_factory=dict)
    spawned: dict[str, int] = field(default_factory=dict)  # processes first seen in the window
    commands: dict[str, float] = field(default_factory=dict)  # own CPU in the window per command line

    @property
    def per_minute(self) -> float:
        return self.cpu_s / self.minutes


def kind(cmd: str) -> str:
    if "dagster-daemon" in cmd or "_daemon" in cmd:
        return "daemon"
    if "api grpc" in cmd or "code_server" in cmd:
        return "code server"
    # The default run launcher asks the code server, which starts the run in a multiprocessing
    # "spawn" child (plus multiprocessing's resource tracker); `dagster api execute_run` otherwise.
    if any(k in cmd for k in ("execute_run", "execute_step", "resume_run", "spawn_main", "resource_tracker")):
        return "run worker"
    return "other"


def snapshot(session: int) -> dict[tuple[int, int], Proc]:
    """Every process of the session, keyed by (pid, start time) so a reused pid is a new process."""
    out: dict[tuple[int, int], Proc] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        f = stat.rsplit(")", 1)[1].split()
        if int(f[3]) != session:
            continue
        try:
            cmd = Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            cmd = ""
        out[(int(entry.name), int(f[19]))] = Proc(
            ppid=int(f[1]),
            session=session,
            own=(int(f[11]) + int(f[12])) / TICK,
            children=(int(f[13]) + int(f[14])) / TICK,
            cmd=cmd,
        )
    return out


def total(procs: Mapping[tuple[int, int], Proc]) -> float:
    return sum(p.own + p.children for p in procs.values())


class Sampler:
    """Follows a session's processes and keeps the CPU of the ones that are gone."""

    def __init__(self, session: int) -> None:
        self.session = session
        self.seen: dict[tuple[int, int], Proc] = {}
        self.first: dict[tuple[int, int], Proc] = {}
        self.lost = 0.0  # CPU of processes that vanished with no session parent to reap them
        self.started: dict[tuple[int, int], float] = {}

    def sample(self) -> dict[tuple[int, int], Proc]:
        now = snapshot(self.session)
        live_pids = {pid for pid, _ in now}
        for key, old in self.seen.items():
            if key not in now and old.ppid not in live_pids:
                self.lost += old.own + old.children
        for key, proc in now.items():
            self.first.setdefault(key, proc)
        self.seen = now
        return now

    def cumulative(self) -> float:
        return total(self.seen) + self.lost


def daemon_env(home: Path, work: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "DB_PATH": str(work / "tradebeat.sqlite"),
        "BINANCE_API_URL": "http://127.0.0.1:9",  # idle: nothing may call the exchange
        "BINANCE_ARCHIVE_URL": "http://127.0.0.1:9",  # nor its archives
        "TRADEBEAT_ENV_FILE": str(work / "none.env"),
        "LOG_DIR": str(work / "logs"),
        "CHARTS_DIR": str(work / "charts"),
        "LOG_LEVEL": "WARNING",
    }
    env.update(extra or {})
    return env


def make_empty_project(work: Path) -> Path:
    (work / "empty_defs.py").write_text(EMPTY_DEFS)
    ws = work / "workspace.yaml"
    ws.write_text(
        yaml.safe_dump(
            {"load_from": [{"python_file": {"relative_path": "empty_defs.py", "working_directory": "."}}]}
        )
    )
    return ws


def edit_yaml(doc: dict, dotted: str) -> None:
    key, _, raw = dotted.partition("=")
    value = yaml.safe_load(raw)
    parts = key.split(".")
    node = doc
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    if raw == "" or value == "DELETE":
        node.pop(parts[-1], None)
    else:
        node[parts[-1]] = value


def prepare(
    project: str | Path,
    dagster_yaml: Path | None,
    sets: list[str] | None = None,
    work: Path | None = None,
) -> tuple[Path, Path, Path]:
    """(work dir, DAGSTER_HOME, workspace.yaml) for `project`: "tradebeat", "empty" or a workspace file."""
    work = work or Path(tempfile.mkdtemp(prefix="tradebeat-idle-"))
    home = work / "home"
    home.mkdir(parents=True, exist_ok=True)
    if project == "empty":
        workspace = make_empty_project(work)
    elif project == "tradebeat":
        workspace = PROJECT / "workspace.yaml"
    else:
        workspace = Path(project).resolve()
    doc: dict = {}
    if dagster_yaml is not None:
        doc = yaml.safe_load(dagster_yaml.read_text()) or {}
    for s in sets or []:
        edit_yaml(doc, s)
    (home / "dagster.yaml").write_text(yaml.safe_dump(doc, sort_keys=False) if doc else "")
    return work, home, workspace


class WindowSampler(Sampler):
    """A Sampler that also remembers every process it saw after the window opened, with its last value."""

    def __init__(self, session: int) -> None:
        super().__init__(session)
        self.last: dict[tuple[int, int], Proc] = {}
        self.window_keys: set[tuple[int, int]] = set()
        self.in_window = False

    def sample(self) -> dict[tuple[int, int], Proc]:
        now = super().sample()
        self.last.update(now)
        if self.in_window:
            self.window_keys.update(now)
        return now


def measure(
    project: str | Path = "tradebeat",
    dagster_yaml: Path | None = PROJECT / "dagster_home" / "dagster.yaml",
    sets: list[str] | None = None,
    minutes: float = 3,
    settle_s: float = 60,
    label: str | None = None,
    extra_env: Mapping[str, str] | None = None,
    work: Path | None = None,
    before_window: Callable[[], None] | None = None,
    daemon_args: list[str] | None = None,
) -> Measurement:
    work, home, workspace = prepare(project, dagster_yaml, sets, work)
    env = daemon_env(home, work, extra_env)
    try:
        return run_window(
            workspace, home, env, settle_s, minutes, label or str(project), before_window, daemon_args
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_window(
    workspace: Path,
    home: Path,
    env: Mapping[str, str],
    settle_s: float,
    minutes: float,
    label: str,
    before_window: Callable[[], None] | None,
    daemon_args: list[str] | None,
) -> Measurement:
    exe = Path(sys.executable).with_name("dagster-daemon")
    daemon = subprocess.Popen(
        [str(exe), "run", "-w", str(workspace), *(daemon_args or [])],
        env=dict(env),
        cwd=home,
        stdout=subprocess.DEVNULL,
        stderr=open(home / "daemon.err", "w"),  # noqa: SIM115
        start_new_session=True,
    )
    sampler = WindowSampler(daemon.pid)
    poll_s = 0.25
    try:
        end_settle = time.time() + settle_s
        while time.time() < end_settle:
            sampler.sample()
            time.sleep(poll_s)
            if daemon.poll() is not None:
                raise RuntimeError(
                    f"daemon exited {daemon.returncode}: {(home / 'daemon.err').read_text()[-2000:]}"
                )
        if before_window:
            before_window()
        sampler.in_window = True
        start_procs = dict(sampler.sample())
        start = sampler.cumulative()
        t0 = time.time()
        end = t0 + minutes * 60
        while time.time() < end:
            time.sleep(poll_s)
            sampler.sample()
            if daemon.poll() is not None:
                raise RuntimeError(
                    f"daemon exited {daemon.returncode}: {(home / 'daemon.err').read_text()[-2000:]}"
                )
        cpu = sampler.cumulative() - start
        elapsed_min = (time.time() - t0) / 60
        by_kind: dict[str, float] = {}
        spawned: dict[str, int] = {}
        commands: dict[str, float] = {}
        for key in sampler.window_keys:
            last = sampler.last[key]
            base = start_procs[key].own if key in start_procs else 0.0
            k = kind(sampler.first[key].cmd)
            by_kind[k] = by_kind.get(k, 0.0) + (last.own - base)
            if key not in start_procs:
                spawned[k] = spawned.get(k, 0) + 1
            cmd = sampler.first[key].cmd[:160]
            commands[cmd] = commands.get(cmd, 0.0) + (last.own - base)
        return Measurement(label, elapsed_min, cpu, by_kind, spawned, commands)
    finally:
        try:
            os.killpg(daemon.pid, signal.SIGTERM)
            daemon.wait(timeout=60)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(daemon.pid, signal.SIGKILL)
            daemon.wait()


def _tail(path: Path) -> str:
    return path.read_text()[-2000:] if path.exists() else ""


def describe(m: Measurement) -> str:
    kinds = ", ".join(f"{k} {v / m.minutes:.1f}" for k, v in sorted(m.by_kind.items(), key=lambda kv: -kv[1]))
    new = ", ".join(f"{v} {k}" for k, v in m.spawned.items())
    return (
        f"{m.label:<48} {m.per_minute:6.2f} s CPU/min over {m.minutes:.1f} min"
        f"  ({kinds}{'; new processes: ' + new if new else ''})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("project", help='"tradebeat", "empty", or a workspace.yaml')
    parser.add_argument("--dagster-yaml", type=Path, default=None, help="default: tradebeat's for tradebeat")
    parser.add_argument("--set", action="append", default=[], help="dotted.key=yaml (empty value deletes)")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the daemon")
    parser.add_argument("--minutes", type=float, default=3)
    parser.add_argument("--settle", type=float, default=60)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--label", default=None)
    parser.add_argument("--daemon-arg", action="append", default=[])
    parser.add_argument("--commands", action="store_true", help="also print CPU per command line")
    args = parser.parse_args()
    dy = args.dagster_yaml
    if dy is None and args.project == "tradebeat":
        dy = PROJECT / "dagster_home" / "dagster.yaml"
    label = args.label or " ".join(
        [
            args.project,
            *(["yaml=" + str(dy)] if dy and args.project != "tradebeat" else []),
            *args.set,
            *args.env,
        ]
    )
    env = dict(e.split("=", 1) for e in args.env)
    for _ in range(args.repeat):
        m = measure(
            args.project, dy, args.set, args.minutes, args.settle, label, env, daemon_args=args.daemon_arg
        )
        print(describe(m), flush=True)
        if args.commands:
            for cmd, cpu in sorted(m.commands.items(), key=lambda kv: -kv[1]):
                print(f"    {cpu:7.2f} s  {cmd}", flush=True)


if __name__ == "__main__":
    main()
