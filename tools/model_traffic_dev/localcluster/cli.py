"""`python -m model_traffic_dev.localcluster build|up|down|serve|env`: a control plane that outlives the command.

`up` spawns a detached supervisor (`serve`) that owns the components, so the cluster keeps running after
`up` returns and `down` stops it through the supervisor's pidfile. Layout under --dir (default .local):

    kubeconfig              admin kubeconfig (copied once the cluster is ready)
    bin/kubectl             link to the built kubectl
    cluster/supervisor.pid  the supervisor's pid
    cluster/supervisor.log  its output
    cluster/ready.json      written by the supervisor once the stack is ready
    cluster/plane/          the stack's workdir: pki, etcd data, logs/, pids.json, the controllers' config

The stack is the control plane, fake nodes (kube-scheduler and kwok: pods run, without containers), the
upstream CRDs, the CRDs given with --crds, Envoy Gateway and the AI Gateway controller with an accepted
Gateway, and KServe's controller (see stack.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from .build import BuildError, GoNotFoundError, ensure_binaries, ensure_controllers
from .controlplane import PIDS_FILE, ControlPlaneError, pid_alive, tail
from .manifests import ManifestError
from .stack import DEFAULT_GATEWAY, LocalStack, require_root
from .upstream import UpstreamError

PACKAGE_ROOT = Path(__file__).resolve().parents[2]


class Layout:
    def __init__(self, base: Path) -> None:
        self.base = base.resolve()
        self.cluster = self.base / "cluster"
        self.plane = self.cluster / "plane"
        self.pidfile = self.cluster / "supervisor.pid"
        self.log = self.cluster / "supervisor.log"
        self.ready = self.cluster / "ready.json"
        self.kubeconfig = self.base / "kubeconfig"
        self.bin = self.base / "bin"

    def supervisor_pid(self) -> int | None:
        """The running supervisor's pid, or None (no pidfile, or a stale one)."""
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None
        if not pid_alive(pid):
            return None
        # A reused pid must not be mistaken for our supervisor.
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return None
        return pid if b"serve" in cmdline and any(b"model_traffic_dev.localcluster" in arg for arg in cmdline) else None

    def component_pids(self) -> list[int]:
        try:
            return [int(pid) for pid in json.loads((self.plane / PIDS_FILE).read_text()).values()]
        except (OSError, ValueError, AttributeError):
            return []


def env_lines(layout: Layout) -> list[str]:
    return [f"export KUBECONFIG={layout.kubeconfig}", f"export PATH={layout.bin}:$PATH",
            f"export MTO_DEFAULT_GATEWAY={DEFAULT_GATEWAY}"]


def cmd_build(args: argparse.Namespace) -> int:
    binaries = ensure_binaries()
    for name, path in binaries.all().items():
        print(f"{name}: {path}")
    for path in ensure_controllers():
        print(f"{path.name}: {path}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """Run the control plane in the foreground until SIGTERM/SIGINT (what `up` runs detached)."""
    layout = Layout(args.dir)
    layout.cluster.mkdir(parents=True, exist_ok=True)
    if (other := layout.supervisor_pid()) is not None and other != os.getpid():
        print(f"a supervisor is already running for {layout.base} (pid {other})", file=sys.stderr)
        return 1
    layout.pidfile.write_text(f"{os.getpid()}\n")
    layout.ready.unlink(missing_ok=True)
    stopping = threading.Event()
    serving = False

    def on_signal(signum: int, frame: object) -> None:
        stopping.set()
        if not serving:
            # Still starting: abandon the start (ControlPlane.start stops what it began).
            raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # A fresh cluster every time: new certificates would not match state from an earlier run anyway.
    shutil.rmtree(layout.plane, ignore_errors=True)
    binaries = ensure_binaries()
    plane = LocalStack(layout.plane, binaries, crds=[Path(p) for p in args.crds])
    try:
        started = time.monotonic()
        plane.start()
        print(f"stack ready in {time.monotonic() - started:.1f}s at {plane.server} ({plane.timings})", flush=True)
        _write_json(layout.ready, {"server": plane.server, "kubeconfig": str(plane.kubeconfig), "pids": plane.pids,
                                   "default_gateway": plane.default_gateway})
        serving = True
        while not stopping.wait(1.0):
            exited = [name for name, pid in plane.pids.items() if not pid_alive(pid)]
            if exited:
                print(f"{', '.join(exited)} exited; stopping (logs in {plane.log_dir})", file=sys.stderr, flush=True)
                return 1
        print("stopping", flush=True)
        return 0
    except (ControlPlaneError, ManifestError, UpstreamError, BuildError) as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("interrupted while starting", flush=True)
        return 0
    finally:
        layout.ready.unlink(missing_ok=True)
        plane.stop()
        with contextlib.suppress(OSError):
            if layout.pidfile.read_text().strip() == str(os.getpid()):
                layout.pidfile.unlink()


def cmd_up(args: argparse.Namespace) -> int:
    layout = Layout(args.dir)
    crds = [Path(p) for p in args.crds]
    for path in crds:
        if not path.exists():
            print(f"error: no such file or directory: {path}", file=sys.stderr)
            return 2
    if (pid := layout.supervisor_pid()) is not None:
        print(f"the local control plane is already running (supervisor pid {pid}); `down --dir {args.dir}` stops it")
        print("\n".join(env_lines(layout)))
        return 0
    require_root()
    # Built here, in the foreground, so that a first build's progress shows on the terminal.
    binaries = ensure_binaries()
    ensure_controllers()
    layout.cluster.mkdir(parents=True, exist_ok=True)
    layout.ready.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(PACKAGE_ROOT), os.environ.get("PYTHONPATH")]))}
    started = time.monotonic()
    with layout.log.open("ab") as log:
        supervisor = subprocess.Popen(
            [sys.executable, "-m", "model_traffic_dev.localcluster", "serve", "--dir", str(layout.base),
             *(f"--crds={path.resolve()}" for path in crds)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
            # Its own session: it survives this command and the terminal it ran in.
            start_new_session=True,
        )
    deadline = time.monotonic() + args.timeout
    while not layout.ready.exists():
        if supervisor.poll() is not None:
            print(f"error: the supervisor exited with {supervisor.returncode} (log: {layout.log}):\n"
                  f"{tail(layout.log)}", file=sys.stderr)
            return 1
        if time.monotonic() > deadline:
            supervisor.terminate()
            print(f"error: the control plane was not ready after {args.timeout}s (log: {layout.log}):\n"
                  f"{tail(layout.log)}", file=sys.stderr)
            return 1
        time.sleep(0.2)
    ready = json.loads(layout.ready.read_text())
    print(f"stack ready in {time.monotonic() - started:.1f}s at {ready['server']}, Gateway "
          f"{ready['default_gateway']} accepted by Envoy Gateway (supervisor pid {supervisor.pid}, "
          f"logs in {layout.plane / 'logs'})")
    shutil.copyfile(ready["kubeconfig"], layout.kubeconfig)
    layout.kubeconfig.chmod(0o600)
    layout.bin.mkdir(parents=True, exist_ok=True)
    link = layout.bin / "kubectl"
    link.unlink(missing_ok=True)
    link.symlink_to(binaries.kubectl)
    print("\n".join(env_lines(layout)))
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    layout = Layout(args.dir)
    pid = layout.supervisor_pid()
    components = layout.component_pids()
    if pid is None and not any(pid_alive(p) for p in components):
        print("the local control plane is not running")
        layout.pidfile.unlink(missing_ok=True)
        return 0
    if pid is not None:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + args.timeout
    alive = [p for p in [*([pid] if pid else []), *components] if pid_alive(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [p for p in alive if pid_alive(p)]
    for leftover in alive:
        # Only pids recorded as ours, and only after the grace period.
        with contextlib.suppress(ProcessLookupError):
            os.kill(leftover, signal.SIGKILL)
    layout.pidfile.unlink(missing_ok=True)
    layout.ready.unlink(missing_ok=True)
    print("the local control plane is stopped" + (f" (killed {alive} after {args.timeout}s)" if alive else ""))
    return 0


def cmd_env(args: argparse.Namespace) -> int:
    layout = Layout(args.dir)
    if layout.supervisor_pid() is None or not layout.kubeconfig.exists():
        print(f"the local control plane is not running: `up --dir {args.dir}` starts it", file=sys.stderr)
        return 1
    print("\n".join(env_lines(layout)))
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="python -m model_traffic_dev.localcluster",
        description="A local Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, "
        "kwok's fake nodes) with Envoy Gateway, the Envoy AI Gateway controller and KServe's controller, all built "
        "from Go modules.",
    )
    commands = root.add_subparsers(dest="command", required=True)
    commands.add_parser("build", help="build (or find cached) binaries and print their paths").set_defaults(
        run=cmd_build,
    )

    def with_dir(name: str, help_text: str) -> argparse.ArgumentParser:
        command = commands.add_parser(name, help=help_text)
        command.add_argument("--dir", type=Path, default=Path(".local"), help="state directory (default .local)")
        return command

    up = with_dir("up", "start the stack in the background, apply --crds, print export lines")
    up.add_argument("--crds", action="append", default=[], metavar="PATH",
                    help="YAML file or directory to apply server-side with the upstream CRDs (repeatable)")
    up.add_argument("--timeout", type=float, default=240.0, help="seconds to wait for readiness")
    up.set_defaults(run=cmd_up)
    serve = with_dir("serve", "run the control plane in the foreground until SIGTERM/SIGINT")
    serve.add_argument("--crds", action="append", default=[], metavar="PATH")
    serve.set_defaults(run=cmd_serve)
    down = with_dir("down", "stop the control plane started by up")
    down.add_argument("--timeout", type=float, default=60.0, help="seconds before leftovers are killed")
    down.set_defaults(run=cmd_down)
    with_dir("env", "print the export lines for a running control plane").set_defaults(run=cmd_env)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        result: Any = args.run(args)
    except (GoNotFoundError, BuildError, UpstreamError, ControlPlaneError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return int(result)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    # Atomic, so `up` never reads a half-written file.
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)
