"""``pyxenstored``: run the Xenstore daemon in the foreground.

With no argument it serves an in-memory store on
``$XDG_RUNTIME_DIR/pyxenstored/socket`` (or ``/tmp/pyxenstored-$UID/socket``;
``XENSTORED_RUNDIR``/``XENSTORED_PATH`` are honoured as libxenstore does) and
prints ``XENSTORED_PATH=<socket>`` once it listens.  The C daemon's options
are accepted (digest 14), so that it can stand in for it.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import os
import stat
import sys
from collections.abc import Sequence

from pyxenstored.migrate import RestoreError
from pyxenstored.migrate.check import check_state_main
from pyxenstored.server.log import Tracer, level_from_options, setup_logging
from pyxenstored.store import Store, StoreConfig
from pyxenstored.store.quota import apply_quota_option

log = logging.getLogger("pyxenstored.daemon")

# C's quota options: short form, long form, value name for the help text.
_QUOTA_OPTIONS: tuple[tuple[str, str, str, str], ...] = (
    ("-E", "--entry-nb", "N", "nodes per domain"),
    ("-S", "--entry-size", "N", "maximum size of a node"),
    ("-W", "--watch-nb", "N", "watches per domain"),
    ("-t", "--transaction", "N", "transactions per domain"),
    ("-A", "--perm-nb", "N", "permission entries per node"),
    ("-M", "--path-max", "N", "maximum path length below a domain's home (at most 2048)"),
    ("-Q", "--quota", "NAME=VAL", "set any hard quota by name"),
    ("-q", "--quota-soft", "NAME=VAL", "set any soft quota by name"),
)


class _QuotaAction(argparse.Action):
    """Collect quota options in command-line order, keyed by their short form."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[object] | None,
        option_string: str | None = None,
    ) -> None:
        items: list[tuple[str, str]] = list(getattr(namespace, self.dest) or [])
        items.append((self.const, str(values)))
        setattr(namespace, self.dest, items)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyxenstored",
        description="Xenstore daemon (in-memory, unix socket), compatible with the C xenstored.",
        add_help=False,
    )
    parser.add_argument("-h", "-H", "--help", action="help", help="show this help and exit")
    where = parser.add_argument_group("where to listen")
    where.add_argument("--rundir", metavar="DIR", help="run directory; the socket is DIR/socket")
    where.add_argument(
        "--socket", metavar="PATH", help="socket path (overrides --rundir and XENSTORED_PATH)"
    )
    where.add_argument(
        "--ring-dir",
        metavar="DIR",
        help="serve guest domains on shared rings in DIR (simulated hypervisor: "
        "DIR/ring-dom<N>, DIR/evtchn, DIR/domains; see server/hypervisor.py); "
        "default $XS_SHIM_RINGDIR",
    )
    logs = parser.add_argument_group("logging")
    logs.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (repeatable)"
    )
    logs.add_argument("--log-level", metavar="LEVEL", help="DEBUG, INFO, WARNING (default), ERROR")
    logs.add_argument(
        "-T", "--trace-file", metavar="FILE", help="trace every request and reply to FILE"
    )
    logs.add_argument(
        "--trace-control",
        metavar="+SW|-SW",
        action="append",
        default=[],
        help="trace switch: obj io wrl acc tdb",
    )
    quota = parser.add_argument_group("quota (as the C daemon)")
    for short, long_, metavar, text in _QUOTA_OPTIONS:
        quota.add_argument(
            short, long_, dest="quota", action=_QuotaAction, const=short, metavar=metavar, help=text
        )
    proc = parser.add_argument_group("process")
    proc.add_argument("-F", "--pid-file", metavar="FILE", help="write (and lock) the pid file")
    proc.add_argument(
        "-N", "--no-fork", action="store_true", help="accepted; the daemon never forks"
    )
    proc.add_argument(
        "-K", "--keep-orphans", action="store_true", help="keep nodes of dead domains"
    )
    proc.add_argument(
        "-w", "--timeout", metavar="watch-event=SEC", action="append", default=[], help="timeouts"
    )
    proc.add_argument(
        "--master-domid", type=int, metavar="DOMID", help="domain of the store (default 0)"
    )
    proc.add_argument(
        "--priv-domid", type=int, metavar="DOMID", help="privileged domain (default 0)"
    )
    proc.add_argument(
        "--event", metavar="PORT", help="accepted and ignored (stub-domain builds only)"
    )
    proc.add_argument(
        "-U", "--live-update", action="store_true", help="restore after a live update"
    )
    proc.add_argument(
        "--check-state",
        metavar="FILE",
        help="restore the live-update state FILE into a scratch store, check it, exit",
    )
    return parser


def _fail(message: str, status: int = 1) -> int:
    print(f"pyxenstored: {message}", file=sys.stderr)
    return status


def parse_timeouts(values: list[str]) -> float | None:
    """``-w watch-event=SEC``; returns the watch-event timeout (None = default)."""
    result: float | None = None
    for value in values:
        name, sep, seconds = value.partition("=")
        if not sep or name != "watch-event" or not seconds.isdigit():
            raise ValueError(f"bad timeout {value!r} (expected watch-event=<seconds>)")
        result = float(int(seconds))
    return result


def main(argv: Sequence[str] | None = None) -> int:
    given = list(argv) if argv is not None else sys.argv[1:]
    if given[:1] == ["migrate"]:
        # ``pyxenstored migrate``: move a domain between two daemons (cli/migrate_cmd.py).
        from pyxenstored.cli.migrate_cmd import main as migrate_main

        return migrate_main(given[1:])
    args = build_parser().parse_args(argv)
    try:
        setup_logging(level_from_options(args.verbose, args.log_level))
    except ValueError as exc:
        return _fail(str(exc), 2)
    if args.check_state:
        if argv is None:
            # A program thrown away once it has answered: the cyclic
            # collector's pass over the restored objects would only delay
            # the answer.
            gc.disable()
        status = check_state_main(args.check_state)
        if argv is None:
            # Run as a program (the successor's pre-exec check, inside the
            # live-update blackout): the scratch store is thrown away, so
            # skip freeing it object by object at interpreter exit.
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(OSError, ValueError):
                    stream.flush()
            os._exit(status)
        return status
    # Imported here, not at the top: the check run above needs none of the
    # server, and its start-up is part of the live-update blackout.
    from pyxenstored.server.control_hooks import ServerControlHooks
    from pyxenstored.server.domain_state import DomainState
    from pyxenstored.server.liveupdate import LiveUpdate
    from pyxenstored.server.loop import Server, ServerConfig
    from pyxenstored.server.process import PidFile, PidFileLocked, socket_path
    from pyxenstored.server.ring_domains import RingDomains

    if args.no_fork:
        log.debug("-N accepted: pyxenstored always runs in the foreground")
    if args.event is not None:
        log.debug("--event ignored: only used by stub-domain builds")

    config = StoreConfig()
    if args.priv_domid is not None:
        config.priv_domid = args.priv_domid
    if args.master_domid is not None:
        config.store_domid = args.master_domid
    config.keep_orphans = args.keep_orphans
    try:
        for option, value in args.quota or []:
            apply_quota_option(config.quota, option, value)
        watch_timeout = parse_timeouts(args.timeout)
    except ValueError as exc:
        return _fail(str(exc), 2)

    rundir, sock_path = socket_path(args.rundir, args.socket)
    try:
        os.makedirs(rundir, mode=0o700, exist_ok=True)
        os.makedirs(os.path.dirname(os.path.abspath(sock_path)), mode=0o700, exist_ok=True)
    except OSError as exc:
        return _fail(f"cannot create {rundir}: {exc}")
    if rundir.startswith(f"/tmp/pyxenstored-{os.getuid()}") and not _private_dir(rundir):
        # In a shared /tmp another user could have made the directory first.
        return _fail(f"{rundir} is not a private directory of this user; use --rundir")

    pid_file: PidFile | None = None
    if args.pid_file:
        try:
            pid_file = PidFile.create(args.pid_file)
        except PidFileLocked:
            return 0  # another daemon runs: C exits silently
        except OSError as exc:
            return _fail(f"cannot write pid file {args.pid_file}: {exc}")

    trace_path = os.path.abspath(args.trace_file) if args.trace_file else None
    tracer = Tracer(trace_path, base_dir=rundir)
    for switch in args.trace_control:
        if not tracer.set_switch(switch):
            return _fail(f"illegal trace switch {switch!r}", 2)
    hooks = ServerControlHooks(tracer)
    store = Store(config, hooks)
    store.wrl.trace = tracer.wrl
    server_config = ServerConfig(store_domid=config.store_domid)
    if watch_timeout is not None:
        server_config.watch_event_timeout = watch_timeout
    server = Server(store, server_config, tracer)
    hooks.connections = lambda: server.connections
    updater = LiveUpdate(
        server,
        store,
        rundir=rundir,
        sock_path=sock_path,
        argv=list(argv) if argv is not None else sys.argv[1:],
    )
    updater.install(hooks)
    rings: RingDomains | None = None
    try:
        # The C reference's shim variable counts too: a live update from it
        # execs us with its environment and its own arguments.
        ring_dir = args.ring_dir or os.environ.get("XS_SHIM_RINGDIR")
        if ring_dir:
            # Before a restore: live update maps the dumped rings through it.
            try:
                from pyxenstored.server.hypervisor import SimulatedHypervisor

                rings = RingDomains(server, store, SimulatedHypervisor(ring_dir))
            except OSError as exc:
                return _fail(f"cannot serve rings in {ring_dir}: {exc}")
            updater.ring_restorer = rings.restore_transport
        if args.live_update:
            try:
                updater.restore()
            except RestoreError as exc:
                return _fail(f"live update restore failed: {exc}")
        if rings is not None:
            rings.adopt_inherited_evtchn(updater.evtchn_fd)
            updater.evtchn_fd = rings.evtchn_fd
            rings.start(auto_introduce=not args.live_update)
        if not args.live_update:
            # Last: whoever waits for the socket file finds the rings served too.
            try:
                server.listen(sock_path)
            except OSError as exc:
                return _fail(f"cannot listen on {sock_path}: {exc}")
        DomainState(server, store, rundir, rings).install(hooks)
        server.install_signal_handlers()
        server.run(on_ready=lambda: _announce(sock_path))
        log.info("stopping on signal %s", server.stop_signal)
    finally:
        if rings is not None:
            rings.close()
        server.close()
        tracer.close()
        if pid_file is not None:
            pid_file.remove()
    return 0


def _private_dir(path: str) -> bool:
    st = os.lstat(path)
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o022


def _announce(sock_path: str) -> None:
    """Tell whoever started us that clients may connect now."""
    log.info("listening on %s", sock_path)
    with contextlib.suppress(OSError, ValueError):
        print(f"XENSTORED_PATH={sock_path}", flush=True)
    from pyxenstored.server.process import sd_notify

    sd_notify(f"READY=1\nMAINPID={os.getpid()}")


if __name__ == "__main__":
    sys.exit(main())
