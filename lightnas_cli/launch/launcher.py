"""`lightnas launch`: start a scheduler, servers and workers, forward their output, stop them all.

The roles are MXNet parameter-server processes told who they are by `DMLC_*` environment
variables (MXNet's own tools/launch.py does not run on Python 3.11). Without a host file they
are local processes on 127.0.0.1; with one, each role runs over `ssh` on its host, in the same
working directory, with the same variables. Every role is the leader of its own process group,
so stopping a role stops whatever it started too.

This module imports no MXNet: the launcher only watches processes.
"""
from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Callable, Sequence

from lightnas_cli import interrupts
from lightnas_cli.errors import ConfigError

#: The lightnas commands a launch can run on its workers.
LAUNCHABLE = ("search", "resume", "train")
#: Port of the scheduler when `--port` is not given and the roles run on other hosts.
DEFAULT_REMOTE_PORT = 9091
#: Seconds a role gets to stop after SIGTERM before it is killed.
STOP_GRACE_S = 3.0
#: Seconds scheduler and servers get to finish after the last worker finished well.
SERVER_EXIT_GRACE_S = 20.0
#: Environment variables a remote role gets besides the DMLC_* ones (when set here).
FORWARDED_ENV = ("PYTHONPATH", "OMP_NUM_THREADS", "PYTHONWARNINGS", "MXNET_ENGINE_TYPE")

#: The line a worker prints at the end of a launched run (world.announce_state): the digest
#: of its method's whole state. The launcher fails a launch whose workers disagree.
STATE_LINE = "lightnas: worker rank {rank} state sha256 {digest} ({arrays} arrays)"
_STATE_PATTERN = re.compile(r"lightnas: worker rank (\d+) state sha256 ([0-9a-f]{64}) ")

#: Shell script a role runs under ssh: the role, plus a watchdog that stops it when the
#: launcher's connection goes away (ssh does not forward signals without a terminal). A
#: non-interactive shell gives background jobs /dev/null as stdin, hence the copy on fd 3.
REMOTE_SCRIPT = (
    "cd {cwd} || exit 2\n"
    "exec 3<&0\n"
    "env {env} {command} </dev/null &\n"
    "child=$!\n"
    "{{ cat <&3 >/dev/null 2>&1; kill -TERM $child 2>/dev/null; }} >/dev/null 2>&1 &\n"
    "watchdog=$!\n"
    "wait $child\n"
    "code=$?\n"
    "kill $watchdog 2>/dev/null\n"
    "exit $code\n"
)


@dataclass
class Role:
    """One process of a launch: `kind` scheduler | server | worker, its index, its host
    (None: this machine), its DMLC_* variables and its command line."""

    kind: str
    index: int
    host: str | None
    env: dict[str, str]
    command: list[str]
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def label(self) -> str:
        return "scheduler" if self.kind == "scheduler" else f"{self.kind} {self.index}"


def check_command(command: Sequence[str]) -> list[str]:
    """The lightnas command after `--`, refused unless it is one a launch can run."""
    command = list(command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise ConfigError("give the command the workers run after `--`, e.g. `lightnas launch "
                          "--workers 2 -- search -c configs/mock/enas_resnet18.yml`")
    if command[0] not in LAUNCHABLE:
        raise ConfigError(f"`lightnas launch` runs {', '.join(LAUNCHABLE)} on its workers, not "
                          f"{command[0]!r}; write e.g. `lightnas launch --workers 2 -- search "
                          f"-c CONFIG`")
    return command


def read_hosts(path: Path) -> list[str]:
    """Hosts of a host file: one `host` or `user@host` a line; blank lines and `#` comments
    are skipped."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise ConfigError(f"host file {str(path)!r} does not exist; write one host a line "
                          f"(`host` or `user@host`), or leave --hosts out to run on this "
                          f"machine") from None
    except (IsADirectoryError, UnicodeDecodeError, PermissionError) as exc:
        raise ConfigError(f"cannot read host file {str(path)!r} ({type(exc).__name__}); it "
                          f"must be a text file with one host a line") from None
    hosts = [line.split("#", 1)[0].strip() for line in lines]
    hosts = [host for host in hosts if host]
    for host in hosts:
        if any(char.isspace() for char in host) or host.startswith("-"):
            raise ConfigError(f"host file {str(path)!r}: {host!r} is not a host name; write "
                              f"one `host` or `user@host` a line")
    if not hosts:
        raise ConfigError(f"host file {str(path)!r} names no host; write one host a line")
    return hosts


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _address(host: str) -> str:
    return host.rsplit("@", 1)[-1]


def _threads_per_worker(workers: int) -> str:
    """OMP threads of each of `workers` workers on one host: OMP_NUM_THREADS (the `lightnas`
    command sets it to the core count when the user has not) shared among them. MXNet's
    OpenMP threads spin while they wait: N workers with a core's worth each would fight over
    the cores (seen on 2 cores: 15 s an epoch instead of 1 s)."""
    try:
        total = int(os.environ.get("OMP_NUM_THREADS", ""))
    except ValueError:
        total = os.cpu_count() or 1
    return str(max(1, total // max(1, workers)))


def plan_roles(workers: int, servers: int, command: Sequence[str], hosts: Sequence[str] = (),
               port: int | None = None, python: str = sys.executable) -> list[Role]:
    """The roles of a launch: the scheduler first (on the first host), then the servers and
    the workers, spread over the hosts in turn. The workers run `python -m lightnas_cli
    COMMAND`; the scheduler and servers only import MXNet, which serves until the workers end."""
    if workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {workers}")
    if servers < 1:
        raise ConfigError(f"--servers must be at least 1, got {servers}")
    if port is not None and not 1 <= port <= 65535:
        raise ConfigError(f"--port must be a TCP port (1-65535), got {port}")
    command = check_command(command)
    hosts = list(hosts)
    root_host = _address(hosts[0]) if hosts else "127.0.0.1"
    if port is None:
        port = DEFAULT_REMOTE_PORT if hosts else free_port()
    common = {"DMLC_PS_ROOT_URI": root_host, "DMLC_PS_ROOT_PORT": str(port),
              "DMLC_NUM_SERVER": str(servers), "DMLC_NUM_WORKER": str(workers)}
    serve = [python, "-c", "import mxnet"]  # a scheduler or server serves inside the import
    work = [python, "-m", "lightnas_cli", *command]
    roles = [Role("scheduler", 0, hosts[0] if hosts else None, {}, serve)]
    roles += [Role("server", k, hosts[k % len(hosts)] if hosts else None, {}, serve)
              for k in range(servers)]
    roles += [Role("worker", k, hosts[k % len(hosts)] if hosts else None, {}, work)
              for k in range(workers)]
    for role in roles:
        role.env = dict(common, DMLC_ROLE=role.kind)
        if role.host is None:
            role.env.update(DMLC_NODE_HOST="127.0.0.1", DMLC_INTERFACE="lo")
        else:
            role.env["DMLC_NODE_HOST"] = _address(role.host)
        same_host = sum(r.kind == "worker" and r.host == role.host for r in roles)
        # A scheduler or server only adds up arrays: OpenMP threads of its own would spin on
        # the cores the workers need.
        role.env["OMP_NUM_THREADS"] = (_threads_per_worker(same_host)
                                       if role.kind == "worker" else "1")
    return roles


def ssh_command(role: Role, cwd: str, environ: dict[str, str] | None = None) -> list[str]:
    """The `ssh` command line that runs `role` on its host, in `cwd`, with its variables (and
    those of FORWARDED_ENV set here); the role stops when the connection closes."""
    assert role.host is not None
    environ = os.environ if environ is None else environ
    env = {name: environ[name] for name in FORWARDED_ENV if name in environ}
    env.update(role.env)
    script = REMOTE_SCRIPT.format(
        cwd=shlex.quote(cwd),
        env=" ".join(f"{name}={shlex.quote(value)}" for name, value in env.items()),
        command=shlex.join(role.command))
    return ["ssh", "-o", "BatchMode=yes", role.host, "sh -c " + shlex.quote(script)]


def _exit_code(returncode: int) -> int:
    """A shell's exit code for a process's return code (killed by signal N: 128 + N)."""
    return 128 - returncode if returncode < 0 else returncode


class Launch:
    """Runs the roles of a launch to the end: output forwarded line by line with a `[label]`
    prefix, every role stopped when one fails (or the launch is interrupted), and the first
    failing exit code returned (0 when every worker finished well)."""

    def __init__(self, roles: list[Role], out: IO[str] | None = None):
        self.roles = roles
        self.out = out if out is not None else sys.stdout
        self._lock = threading.Lock()
        self._readers: list[threading.Thread] = []
        self.digests: dict[int, str] = {}  # rank: digest of the final state

    # --- processes ------------------------------------------------------------------------
    def _start(self, role: Role) -> None:
        cwd = os.getcwd()
        if role.host is None:
            argv, env = role.command, dict(os.environ, **role.env)
        else:
            argv, env = ssh_command(role, cwd), dict(os.environ)
        role.process = subprocess.Popen(
            argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            stdin=subprocess.PIPE if role.host is not None else subprocess.DEVNULL,
            start_new_session=True)  # its own process group: stopped with all it started
        reader = threading.Thread(target=self._forward, args=(role,), daemon=True,
                                  name=f"lightnas-launch-{role.label}")
        reader.start()
        self._readers.append(reader)
        where = role.host or "127.0.0.1"
        self._say(f"started {role.label} on {where} (pid {role.process.pid})")

    def _forward(self, role: Role) -> None:
        assert role.process is not None and role.process.stdout is not None
        prefix = f"[{role.label}] ".encode()
        for line in iter(role.process.stdout.readline, b""):
            text = (prefix + line.rstrip(b"\r\n")).decode("utf-8", errors="replace")
            found = _STATE_PATTERN.search(text)
            with self._lock:
                if found and role.kind == "worker":
                    self.digests[int(found.group(1))] = found.group(2)
                print(text, file=self.out, flush=True)
        role.process.stdout.close()

    def _say(self, message: str) -> None:
        with self._lock:
            print(f"[launch] {message}", file=self.out, flush=True)

    def started(self) -> list[Role]:
        return [role for role in self.roles if role.process is not None]

    def stop(self) -> None:
        """SIGTERM to every role's process group still running, SIGKILL after STOP_GRACE_S."""
        running = [role for role in self.started() if role.process.poll() is None]
        for role in running:
            _signal_group(role.process, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for role in running:
            try:
                role.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for role in self.started():
            _signal_group(role.process, signal.SIGKILL)  # the group may outlive its leader
            role.process.wait()
        for reader in self._readers:
            reader.join(timeout=2.0)

    # --- the run --------------------------------------------------------------------------
    def run(self, poll_s: float = 0.2) -> int:
        """Start every role and wait for the end; returns the launch's exit code."""
        # SIGTERM stops the launcher like Ctrl-C: every role is stopped first.
        signals = interrupts.stop_on_signals() \
            if threading.current_thread() is threading.main_thread() else nullcontext()
        try:
            with signals:
                for role in self.roles:
                    self._start(role)
                return self._watch(poll_s)
        except KeyboardInterrupt:
            self._say("interrupted: stopping every role")
            return 130
        finally:
            self.stop()

    def _watch(self, poll_s: float) -> int:
        """0 once every worker ended well (and the scheduler and servers with them, or
        SERVER_EXIT_GRACE_S later); the first failing code as soon as a role fails. A
        scheduler or server that ends while workers still run (after a grace for the
        workers' own ending) fails the launch too: the workers would wait for it forever."""
        workers = [role for role in self.roles if role.kind == "worker"]
        finished_at = None  # when every worker had ended well, or a server ended first
        while True:
            interrupts.check()
            for role in self.roles:
                code = role.process.poll()
                if code:
                    self._say(f"{role.label} failed (exit code {_exit_code(code)}); stopping "
                              f"every role")
                    return _exit_code(code)
            ended = [role.process.poll() is not None for role in self.roles]
            if all(ended):
                return self._check_digests()
            if finished_at is None and (all(r.process.poll() == 0 for r in workers)
                                        or any(e and r.kind != "worker"
                                               for e, r in zip(ended, self.roles))):
                finished_at = time.monotonic()
            if finished_at is not None and time.monotonic() - finished_at > SERVER_EXIT_GRACE_S:
                if all(r.process.poll() == 0 for r in workers):
                    self._say("the workers finished; stopping the scheduler and servers")
                    return self._check_digests()
                self._say("a scheduler or server ended before the workers; stopping every role")
                return 1
            time.sleep(poll_s)

    def _check_digests(self) -> int:
        """0 when the workers that announced their final state agree on it, else 1."""
        for reader in self._readers:  # the last lines may still be on their way
            reader.join(timeout=2.0)
        if len(set(self.digests.values())) > 1:
            ranks = ", ".join(f"rank {r}: {d[:12]}" for r, d in sorted(self.digests.items()))
            self._say(f"the workers ended with different states ({ranks}); their weights or "
                      f"architecture parameters diverged")
            return 1
        return 0


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def launch(command: Sequence[str], workers: int, servers: int = 1, hosts_file: Path | None = None,
           port: int | None = None, out: IO[str] | None = None) -> int:
    """Plan, start and watch a launch; returns its exit code. Bad input raises ConfigError
    before any process starts."""
    hosts = read_hosts(hosts_file) if hosts_file is not None else []
    roles = plan_roles(workers, servers, command, hosts, port)
    return Launch(roles, out).run()


def run_entry(entry: Callable[[], None]) -> None:
    """Run the CLI `entry`. A worker of a launch that fails leaves at once with its exit code
    (`os._exit`, after flushing): a normal exit runs MXNet's exit handler, which waits at
    ps-lite's final barrier for the other workers - forever, when they wait for this one."""
    if os.environ.get("DMLC_ROLE") != "worker":
        entry()
        return
    try:
        entry()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # a bug: show its traceback as the CLI would, then leave
        sys.excepthook(*sys.exc_info())
        code = 1
    if code:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(0)
