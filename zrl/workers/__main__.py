"""Run one worker until the controller tells it to exit.

    python -m zrl.workers echo_producer --experiment echo --trial t1 --group producer --index 0 \
        --name-resolve file:///tmp/names

The controller builds this command for every worker; run it by hand only to debug one worker. The worker registers
its control address in the name service and waits for `configure` and `start` on the control channel, taking only
requests signed with the trial's control key: the file named by $ZRL_CONTROL_KEY_FILE (the controller writes
{run_dir}/control.key), or the hex key in $ZRL_CONTROL_KEY. With --curve on (the default) all its sockets use the
CURVE keys derived from that key.
"""

from __future__ import annotations

import argparse
import faulthandler
import logging
import os
import signal
import socket
import sys
from types import FrameType
from typing import get_args
from urllib.parse import urlsplit

from zrl.config import NAME_RESOLVE_ENV, PARENT_PID_ENV, ControllerTimeouts, CurveSetting, SecurityConfig
from zrl.hosts import node_address, unreachable_host_reason
from zrl.nameresolve import make_name_resolver, names
from zrl.streams.control_key_file import CONTROL_KEY_ENV, ControlKeyError, load_control_key
from zrl.streams.curve import CurveKeys
from zrl.workers.base import WorkerContext
from zrl.workers.lifeline import Lifeline
from zrl.workers.registry import worker_class


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m zrl.workers", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("type", help="worker type: a registered name or 'package.module:Class'")
    parser.add_argument("--experiment", required=True, help="experiment name")
    parser.add_argument("--trial", required=True, help="trial name")
    parser.add_argument("--group", required=True, help="worker group name in the experiment")
    parser.add_argument("--index", required=True, type=int, help="index of this worker within its group")
    parser.add_argument("--name-resolve", default=os.environ.get(NAME_RESOLVE_ENV),
                        help=f"name service URL (default: ${NAME_RESOLVE_ENV})")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind and advertise sockets on; 'auto': this node's address that other nodes reach "
                             "(never a loopback one)")
    parser.add_argument("--keepalive-ttl", type=float, default=WorkerContext.keepalive_ttl_s,
                        help="keepalive TTL in seconds of the control-address name")
    parser.add_argument("--group-size", type=int, default=1, help="number of workers in the group")
    parser.add_argument("--run-dir", default="", help="run directory for the files the worker keeps")
    parser.add_argument("--controller-lease", type=float, default=0.0,
                        help="exit once the controller's lease name has lapsed for this many seconds (0: never)")
    parser.add_argument("--exit-grace", type=float, default=ControllerTimeouts.exit_grace_s,
                        help="seconds to exit cleanly once the controller is gone, before a hard exit")
    parser.add_argument("--curve", choices=get_args(CurveSetting), default=SecurityConfig.curve,
                        help="ZeroMQ CURVE on every socket, with keys derived from the control key (security.curve)")
    return parser.parse_args(argv)


def advertised_host(host: str, name_resolve: str) -> tuple[str, str]:
    """The address this worker binds and advertises for `--host`, and why; RuntimeError when none would work."""
    if host != "auto":
        refusal = unreachable_host_reason(host)
        if refusal is not None:
            raise RuntimeError(f"--host {refusal}")
        return host, "given by --host (the experiment's worker_host)"
    url = urlsplit(name_resolve)
    try:
        toward = (url.hostname, url.port or 0) if url.hostname else None
    except ValueError:
        toward = None  # a malformed port: the name service reports it when it connects
    return node_address(toward)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.name_resolve:
        print(f"error: no name service: pass --name-resolve URL or set ${NAME_RESOLVE_ENV}", file=sys.stderr)
        return 2
    try:
        host, host_reason = advertised_host(args.host, args.name_resolve)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        control_key = load_control_key(os.environ)
        curve = CurveKeys.derive(control_key) if args.curve == "on" else None
    except (ControlKeyError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    os.environ.pop(CONTROL_KEY_ENV, None)  # processes this worker starts do not inherit the key
    context = WorkerContext(args.experiment, args.trial, args.group, args.index, host, args.keepalive_ttl,
                            args.group_size, args.run_dir, control_key, curve)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format=f"%(asctime)s %(levelname)s {context.worker_id} %(name)s: %(message)s")
    logging.getLogger(__name__).info("advertising %s on node %s: %s", host, socket.gethostname(), host_reason)
    cls = worker_class(args.type)
    resolver = make_name_resolver(args.name_resolve)
    worker = cls(context, resolver)

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        logging.getLogger(__name__).info("received signal %d, exiting", signum)
        worker.request_exit()
        signal.signal(signum, signal.SIG_DFL)

    # The controller asks a stalled worker for its stacks before it declares it LOST; this works in any thread.
    faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, on_signal)
    parent_pid = os.environ.get(PARENT_PID_ENV, "")
    Lifeline(worker.request_exit, exit_grace_s=args.exit_grace,
             parent_pid=int(parent_pid) if parent_pid.isdigit() else None, resolver=resolver,
             lease_name=names.controller(args.experiment, args.trial), lease_s=args.controller_lease).start()
    try:
        return worker.run()
    finally:
        resolver.close()


if __name__ == "__main__":
    sys.exit(main())
