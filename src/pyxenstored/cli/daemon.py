"""``pyxenstored``: the Xenstore daemon's command line, started as xenstored is.

Like the C daemon (``core.c:main`` in xen.git) it forks into the background
unless ``-N``, writes ``--pid-file``, and takes every option of C 4.17 and
of C master, so that a host's init script can start it in place of the C
daemon or oxenstored (``docs/xen-host.md``).  Unlike C, the command returns
only once the daemon listens (or failed, with its reason and status), and a
second daemon never takes over the socket of a live one.

The socket: ``--socket``, ``--rundir``, ``$XENSTORED_PATH``,
``$XENSTORED_RUNDIR``, then ``/var/run/xenstored/socket`` for root (where
libxenstore looks) or ``$XDG_RUNTIME_DIR/pyxenstored/socket``
(``/tmp/pyxenstored-$UID/socket``) for other users; ``XENSTORED_PATH=<socket>``
is printed once it listens (:mod:`pyxenstored.paths`).
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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pyxenstored import __version__
from pyxenstored.cli.helptext import Section, epilog
from pyxenstored.migrate import RestoreError
from pyxenstored.migrate.check import check_state_main
from pyxenstored.server.backends import KINDS, BackendChoice, choose_backend
from pyxenstored.server.log import (
    Tracer,
    level_from_options,
    setup_logging,
    valid_trace_switch,
)
from pyxenstored.store import StoreConfig
from pyxenstored.store.quota import apply_quota_option

if TYPE_CHECKING:
    from pyxenstored.server.hypervisor import Hypervisor
    from pyxenstored.server.process import PidFile, Readiness

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

# Options of C 4.17 that mean nothing to pyxenstored: accepted (so that a
# host's XENSTORED_ARGS still starts it) and logged.  dest -> why.
_WITHOUT_MEANING: dict[str, str] = {
    "no_domain_init": "-D: there is no separate dom0 initialisation; "
    "--hypervisor none serves no guests",
    "no_recovery": "-R: the store lives in memory and is never repaired on start",
    "internal_db": "-I: the store always lives in memory",
    "event": "--event: only C's stub-domain build uses it",
    "config_file": "--config-file: oxenstored's configuration; only its quota keys are read,"
    " when taking over oxenstored's state",
    "reraise_top_level": "--reraise-top-level: oxenstored's debugging aid",
    "no_access_log": "--no-access-log: there is no access log (see -T)",
    "disable_socket": "--disable-socket: oxenstored's; the socket is always served",
    "restart": "--restart: oxenstored's; --live alone reads its dump",
}

# What ``--help`` ends with; the man page (pyxenstored.tools.manpage) writes
# the same sections as EXIT STATUS, ENVIRONMENT and FILES.
SUBCOMMANDS = Section(
    "subcommand",
    (
        (
            "pyxenstored migrate ...",
            "move one domain's state between two daemons (as the first word; "
            "pyxenstored migrate --help)",
        ),
    ),
)
EXIT_STATUS = Section(
    "exit status",
    (
        (
            "0",
            "the daemon serves (forked: the command returns once it listens); it "
            "stopped on SIGTERM or SIGINT (-N); --help or --version; another daemon "
            "holds the --pid-file lock (silent as the C daemon, said under -v); "
            "--check-state: the state restores",
        ),
        (
            "1",
            "the daemon did not start: a live daemon already listens on the socket, "
            "the run directory, socket, pid file or hypervisor backend cannot be "
            "used, a live-update restore failed, the daemon died before it served; "
            "--check-state: the state does not restore",
        ),
        (
            "2",
            "bad command line (an argument, a bad option value); options this "
            "program does not know are ignored with a warning, as the C daemon does",
        ),
        ("130", "interrupted while waiting for the forked daemon to listen"),
    ),
    man="EXIT STATUS",
)
ENVIRONMENT = Section(
    "environment",
    (
        (
            "XENSTORED_PATH",
            "the socket, when neither --socket nor --rundir is given (where "
            "libxenstore's clients look first)",
        ),
        ("XENSTORED_RUNDIR", "the run directory, when --rundir is not given"),
        (
            "XDG_RUNTIME_DIR",
            "for a user other than root, the run directory is "
            "$XDG_RUNTIME_DIR/pyxenstored (without it /tmp/pyxenstored-$UID)",
        ),
        (
            "PYXENSTORED_HYPERVISOR",
            "the default of --hypervisor (kept across a live update, whose "
            "successor may be a C daemon that refuses the option)",
        ),
        (
            "XS_SHIM_RINGDIR",
            "the simulated hypervisor's directory when --ring-dir is not given "
            "(as the C reference's LD_PRELOAD shim)",
        ),
        (
            "XS_SHIM_DOMAINS",
            "simulated hypervisor without a DIR/domains file: the domains that "
            "exist, as 0,5,6 (default 0)",
        ),
        ("XS_SHIM_DOM0_PORT", "simulated hypervisor: the store domain's event channel (default 1)"),
        (
            "NOTIFY_SOCKET",
            "the service manager's socket: READY=1 and MAINPID are sent there once "
            "the daemon listens (sd_notify(3))",
        ),
    ),
    man="ENVIRONMENT",
)
FILES = Section(
    "files",
    (
        (
            "/var/run/xenstored/socket",
            "the socket, for root (the run directory /var/run/xenstored)",
        ),
        (
            "$XDG_RUNTIME_DIR/pyxenstored/socket",
            "the socket, for other users (/tmp/pyxenstored-$UID/socket without "
            "XDG_RUNTIME_DIR; a /tmp directory that is not private is refused)",
        ),
        ("RUNDIR/state_dump", "the state a live update hands to its successor (-U)"),
        (
            "/dev/xen/evtchn, /dev/xen/gntdev, /proc/xen/xsd_kva, /proc/xen/xsd_port",
            "the Xen devices of --hypervisor xen (auto picks xen when /dev/xen/evtchn exists)",
        ),
        (
            "DIR/ring-dom<N>, DIR/evtchn, DIR/domains",
            "the simulated hypervisor's ring pages, event channel FIFO and domain list",
        ),
        ("/dev/log", "where a daemon in the background logs (syslog, facility daemon)"),
    ),
    man="FILES",
)
_EPILOG = epilog(
    SUBCOMMANDS,
    EXIT_STATUS,
    ENVIRONMENT,
    FILES,
    note="Options of the C daemon's other versions are accepted; those that mean "
    "nothing here (-D, -R, -I, --event) are logged under -v.  See docs/xen-host.md "
    "to start it from a Xen host's init, and docs/compat.md for the differences.",
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


class _HelpAction(argparse.Action):
    """C master's ``-H`` takes an optional argument (``H::``) and prints the usage."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[object] | None,
        option_string: str | None = None,
    ) -> None:
        parser.print_help()
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyxenstored",
        description="Xenstore daemon (in-memory store; unix socket and guest rings),\n"
        "started and configured as the C xenstored.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        add_help=False,
    )
    parser.add_argument("-h", "--help", action="help", help="show this help and exit (also -H)")
    parser.add_argument("-H", nargs="?", action=_HelpAction, help=argparse.SUPPRESS)
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {__version__}", help="print the version"
    )
    _add_where_options(parser.add_argument_group("where to listen"))
    _add_backend_options(parser.add_argument_group("guests (hypervisor backend)"))
    _add_log_options(parser.add_argument_group("logging"))
    quota = parser.add_argument_group("quota (as the C daemon)")
    for short, long_, metavar, text in _QUOTA_OPTIONS:
        quota.add_argument(
            short, long_, dest="quota", action=_QuotaAction, const=short, metavar=metavar, help=text
        )
    _add_process_options(parser.add_argument_group("process"))
    _add_compat_options(parser.add_argument_group("accepted for the C daemon's sake"))
    _add_oxenstored_options(parser.add_argument_group("accepted for oxenstored's sake"))
    return parser


def _add_oxenstored_options(ox: argparse._ArgumentGroup) -> None:
    ox.add_argument(
        "--live",
        action="store_true",
        help="take over the state oxenstored's live update left (its dump, "
        "default /var/run/xenstored/db, and its descriptors); with --help: "
        "check that it would be taken, exit 0 or 1 (docs/migration.md)",
    )
    ox.add_argument("--restart", action="store_true", help="oxenstored's; goes with --live")
    ox.add_argument("--config-file", metavar="FILE", help="oxenstored's configuration (its quota)")
    ox.add_argument(
        "--oxenstored-dump", metavar="FILE", help="read oxenstored's dump from FILE (with --live)"
    )
    ox.add_argument("--config-test", action="store_true", help="as --live --help")
    for flag in ("--reraise-top-level", "--no-access-log", "--disable-socket"):
        ox.add_argument(flag, action="store_true", help="oxenstored's (no effect)")


def _add_where_options(where: argparse._ArgumentGroup) -> None:
    where.add_argument(
        "--rundir",
        metavar="DIR",
        help="run directory: the socket DIR/socket and the live-update state "
        "(default $XENSTORED_RUNDIR, else /var/run/xenstored for root, "
        "else $XDG_RUNTIME_DIR/pyxenstored or /tmp/pyxenstored-$UID)",
    )
    where.add_argument(
        "--socket", metavar="PATH", help="socket path (overrides --rundir and $XENSTORED_PATH)"
    )


def _add_backend_options(guests: argparse._ArgumentGroup) -> None:
    guests.add_argument(
        "--hypervisor",
        choices=KINDS,
        # From the environment too: a live update hands the successor the
        # predecessor's arguments, and a C successor refuses this option.
        default=os.environ.get("PYXENSTORED_HYPERVISOR") or "auto",
        help="xen: the real hypervisor through its libraries; sim: guests on ring "
        "files in --ring-dir; none: the socket only; auto: sim when "
        "--ring-dir is given, else xen when /dev/xen/evtchn exists, else sim "
        "when $XS_SHIM_RINGDIR is set, else none (default: $PYXENSTORED_HYPERVISOR, "
        "else auto)",
    )
    guests.add_argument(
        "--ring-dir",
        metavar="DIR",
        help="the simulated hypervisor's directory: DIR/ring-dom<N>, DIR/evtchn, "
        "DIR/domains (see server/hypervisor.py; default $XS_SHIM_RINGDIR)",
    )


def _add_log_options(logs: argparse._ArgumentGroup) -> None:
    logs.add_argument(
        "-v",
        "-V",
        "--verbose",
        action="count",
        default=0,
        help="more log output, repeatable (-V, --verbose: C 4.17's spelling)",
    )
    logs.add_argument("--log-level", metavar="LEVEL", help="DEBUG, INFO, WARNING (default), ERROR")
    logs.add_argument(
        "-T",
        "--trace-file",
        metavar="FILE",
        help="trace every request and reply to FILE (relative: to the working directory)",
    )
    logs.add_argument(
        "--trace-control",
        metavar="+SW|-SW",
        action="append",
        default=[],
        help="switch a trace kind on (+) or off (-): obj io wrl acc tdb",
    )


def _add_process_options(proc: argparse._ArgumentGroup) -> None:
    proc.add_argument(
        "-F",
        "--pid-file",
        metavar="FILE",
        help="write the daemon's pid to FILE and keep it locked; if another daemon "
        "holds the lock, exit 0 at once (silent as C; said under -v)",
    )
    proc.add_argument(
        "-N",
        "--no-fork",
        action="store_true",
        help="stay in the foreground (default: fork into the background once the "
        "socket listens, as C)",
    )
    proc.add_argument(
        "-P",
        "--output-pid",
        action="store_true",
        help="print the daemon's pid on stdout once it listens (C 4.17)",
    )
    proc.add_argument(
        "-K", "--keep-orphans", action="store_true", help="keep the nodes of dead domains"
    )
    proc.add_argument(
        "-w",
        "--timeout",
        metavar="watch-event=SEC",
        action="append",
        default=[],
        help="how long a watch event may wait for its connection",
    )
    proc.add_argument(
        "--master-domid", type=int, metavar="DOMID", help="domain of the store (default 0)"
    )
    proc.add_argument(
        "--priv-domid", type=int, metavar="DOMID", help="privileged domain (default 0)"
    )
    proc.add_argument(
        "-U",
        "--live-update",
        action="store_true",
        help="restore the state a live update left in the run directory (never forks)",
    )
    proc.add_argument(
        "--check-state",
        metavar="FILE",
        help="restore the live-update state FILE into a scratch store, check it, exit",
    )


def _add_compat_options(compat: argparse._ArgumentGroup) -> None:
    compat.add_argument(
        "-D", "--no-domain-init", action="store_true", help="C 4.17: no dom0 set-up (no effect)"
    )
    compat.add_argument(
        "-R", "--no-recovery", action="store_true", help="C 4.17: no store repair (no effect)"
    )
    compat.add_argument(
        "-I",
        "--internal-db",
        nargs="?",
        const="on",
        choices=("on", "off"),
        help="C 4.17: keep the store in memory or in a file (always memory)",
    )
    compat.add_argument("--event", metavar="PORT", help="C's stub-domain build only (no effect)")


class UsageError(Exception):
    """A bad command line (exit status 2)."""


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parse ``argv``; unknown options are ignored with a warning, as C's getopt does.

    C reports an option it does not know and goes on; an argument that is
    not an option stops it (``No arguments desired``).  A host's
    ``XENSTORED_ARGS`` written for another xenstored therefore still starts
    this one.
    """
    parser = build_parser()
    args, extra = parser.parse_known_args(_attach_values(parser, argv))
    for item in extra:
        if item.startswith("-") and item != "-":
            print(f"pyxenstored: ignoring unknown option {item} (as C does)", file=sys.stderr)
        else:
            raise UsageError(f"no arguments wanted, got {item!r}")
    return args


def _attach_values(parser: argparse.ArgumentParser, argv: Sequence[str]) -> list[str]:
    """Join each option that needs a value with the next word, as getopt does.

    getopt takes the word after ``--trace-control`` as its value even when
    it starts with ``-`` (``--trace-control -obj``); argparse would take it
    for an option.  ``--opt value`` becomes ``--opt=value`` (unambiguous
    prefixes of long options too), ``-Q value`` becomes ``-Qvalue``.
    """
    takes_value = {
        option
        for action in parser._actions
        if action.nargs is None
        for option in action.option_strings
    }
    longs = [option for option in takes_value if option.startswith("--")]
    result: list[str] = []
    words = list(argv)
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        if word == "--":
            result.extend(words[i - 1 :])
            break
        name: str | None = word if word in takes_value else None
        if name is None and word.startswith("--") and "=" not in word:
            matches = [option for option in longs if option.startswith(word)]
            name = matches[0] if len(matches) == 1 else None
        if name is None or i >= len(words):
            result.append(word)
            continue
        value = words[i]
        i += 1
        result.append(f"{name}={value}" if name.startswith("--") else f"{name}{value}")
    return result


def parse_timeouts(values: list[str]) -> float | None:
    """``-w watch-event=SEC``; returns the watch-event timeout (None = default)."""
    result: float | None = None
    for value in values:
        name, sep, seconds = value.partition("=")
        if not sep or name != "watch-event" or not seconds.isdigit():
            raise ValueError(f"bad timeout {value!r} (expected watch-event=<seconds>)")
        result = float(int(seconds))
    return result


@dataclass(slots=True)
class DaemonOptions:
    """The command line, checked and resolved: everything the daemon needs to start."""

    config: StoreConfig
    rundir: str
    sock_path: str
    backend: BackendChoice
    argv: list[str]
    watch_timeout: float | None = None
    pid_file: str | None = None
    trace_path: str | None = None
    trace_switches: list[str] = field(default_factory=list)
    live_update: bool = False
    oxenstored_dump: str | None = None
    fork: bool = True
    output_pid: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace, argv: list[str]) -> DaemonOptions:
        """Raises ``ValueError`` with the message for the user (exit status 2)."""
        # Imported here: the check run (--check-state) needs none of the server.
        from pyxenstored.server.process import socket_path

        config = StoreConfig()
        if args.priv_domid is not None:
            config.priv_domid = args.priv_domid
        if args.master_domid is not None:
            config.store_domid = args.master_domid
        config.keep_orphans = args.keep_orphans
        for option, value in args.quota or []:
            apply_quota_option(config.quota, option, value)
        for switch in args.trace_control:
            if not valid_trace_switch(switch):
                raise ValueError(f"illegal trace switch {switch!r}")
        for name, value in _oxenstored_quota(args):
            apply_quota_option(config.quota, "-Q", f"{name}={value}")
        if args.live and not args.rundir and not args.socket:
            # oxenstored's own places (the listening socket is inherited).
            from pyxenstored.migrate.oxenstored import OXENSTORED_RUNDIR, OXENSTORED_SOCKET

            rundir, sock_path = OXENSTORED_RUNDIR, OXENSTORED_SOCKET
        else:
            rundir, sock_path = socket_path(args.rundir, args.socket)
        return cls(
            config=config,
            rundir=rundir,
            sock_path=sock_path,
            backend=choose_backend(args.hypervisor, args.ring_dir),
            argv=argv,
            watch_timeout=parse_timeouts(args.timeout),
            pid_file=args.pid_file or _config_pid_file(args),
            trace_path=os.path.abspath(args.trace_file) if args.trace_file else None,
            trace_switches=list(args.trace_control),
            live_update=args.live_update or args.live,
            oxenstored_dump=_oxenstored_dump(args),
            # A live update's successor runs in the process it replaces (C too).
            fork=not args.no_fork and not args.live_update and not args.live,
            output_pid=args.output_pid,
        )


def _oxenstored_dump(args: argparse.Namespace) -> str | None:
    from pyxenstored.migrate.oxenstored import OXENSTORED_DB

    return (args.oxenstored_dump or OXENSTORED_DB) if args.live else None


def _config_pid_file(args: argparse.Namespace) -> str | None:
    """oxenstored's ``pid-file`` key, when started with its ``--config-file`` (as it does)."""
    if not args.config_file:
        return None
    from pyxenstored.server.oxenstored_lu import config_pid_file

    return config_pid_file(args.config_file)


def _oxenstored_quota(args: argparse.Namespace) -> list[tuple[str, int]]:
    """The quota of oxenstored's configuration, by C-family name (with --config-file)."""
    if not args.config_file:
        return []
    from pyxenstored.server.oxenstored_lu import config_quota
    from pyxenstored.stream.oxenstored import quota_to_c

    values, _lost = quota_to_c(config_quota(["--config-file", args.config_file]))
    from pyxenstored.store.quota import QUOTAS

    known = {info.name for info in QUOTAS}
    return [(v.name, v.value) for v in values if v.name in known]


class StartError(Exception):
    """The daemon does not start: exit with ``status``, saying ``message`` if any."""

    def __init__(self, status: int, message: str | None = None) -> None:
        super().__init__(status, message)
        self.status = status
        self.message = message


def main(argv: Sequence[str] | None = None) -> int:
    given = list(argv) if argv is not None else sys.argv[1:]
    if given[:1] == ["migrate"]:
        # ``pyxenstored migrate``: move a domain between two daemons (cli/migrate_cmd.py).
        from pyxenstored.cli.migrate_cmd import main as migrate_main

        return migrate_main(given[1:])
    if "--live" in given and "--help" in given:
        # oxenstored's pre-exec check of its successor (docs/migration.md).
        setup_logging(logging.WARNING)
        return _oxenstored_check([w for w in given if w != "--help"])
    try:
        args = parse_args(given)
        setup_logging(level_from_options(args.verbose, args.log_level))
    except (UsageError, ValueError) as exc:
        return _fail(str(exc), 2)
    if args.check_state:
        return _check_state(args.check_state, as_program=argv is None)
    if args.config_test:
        return _oxenstored_check(given)
    try:
        options = DaemonOptions.from_args(args, given)
    except ValueError as exc:
        return _fail(str(exc), 2)
    _log_accepted_options(args)
    return run(options)


def _oxenstored_check(given: list[str]) -> int:
    from pyxenstored.migrate.oxenstored import OXENSTORED_DB
    from pyxenstored.server.oxenstored_lu import help_check

    try:
        args = parse_args(given)
        options = DaemonOptions.from_args(args, given)
    except (UsageError, ValueError) as exc:
        return _fail(str(exc), 2)
    return help_check(options.oxenstored_dump or OXENSTORED_DB, given, options.config)


def _fail(message: str, status: int = 1) -> int:
    print(f"pyxenstored: {message}", file=sys.stderr)
    return status


def _check_state(path: str, as_program: bool) -> int:
    """``--check-state FILE``: the successor's pre-exec check of a live update."""
    if as_program:
        # A program thrown away once it has answered: the cyclic collector's
        # pass over the restored objects would only delay the answer.
        gc.disable()
    status = check_state_main(path)
    if as_program:
        # Run inside the live-update blackout: the scratch store is thrown
        # away, so skip freeing it object by object at interpreter exit.
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        os._exit(status)
    return status


def _log_accepted_options(args: argparse.Namespace) -> None:
    for dest, why in _WITHOUT_MEANING.items():
        if getattr(args, dest) not in (None, False):
            log.info("accepted without effect: %s", why)
    if args.no_fork:
        log.debug("-N: staying in the foreground")


def run(options: DaemonOptions) -> int:
    """Start the daemon (in the background unless ``-N``) and serve until stopped."""
    from pyxenstored.server.log import log_to_syslog
    from pyxenstored.server.process import daemonize, set_process_name, stderr_discarded

    set_process_name()
    readiness = daemonize() if options.fork else None
    if readiness is None and stderr_discarded():
        # The successor of a live update of a daemon in the background.
        log_to_syslog()
    try:
        return _serve(options, readiness)
    except StartError as exc:
        if exc.message:
            _fail(exc.message)
        if readiness is not None:
            readiness.failed(exc.status)
        return exc.status


def _serve(options: DaemonOptions, readiness: Readiness | None) -> int:
    """Claim the run directory, pid file and socket, then build the daemon and run it."""
    _make_rundir(options)
    pid_file = _take_pid_file(options.pid_file)
    try:
        if not options.live_update:
            _check_socket_free(options.sock_path)
        _build_and_run(options, readiness)
    finally:
        if pid_file is not None:
            pid_file.remove()
    return 0


def _make_rundir(options: DaemonOptions) -> None:
    rundir = options.rundir
    try:
        os.makedirs(rundir, mode=0o700, exist_ok=True)
        os.makedirs(os.path.dirname(os.path.abspath(options.sock_path)), mode=0o700, exist_ok=True)
    except OSError as exc:
        raise StartError(1, f"cannot create {rundir}: {exc}") from None
    if rundir.startswith(f"/tmp/pyxenstored-{os.getuid()}") and not _private_dir(rundir):
        # In a shared /tmp another user could have made the directory first.
        raise StartError(1, f"{rundir} is not a private directory of this user; use --rundir")


def _take_pid_file(path: str | None) -> PidFile | None:
    from pyxenstored.server.process import PidFile, PidFileLocked

    if not path:
        return None
    try:
        return PidFile.create(path)
    except PidFileLocked as exc:
        # C exits 0 without a word: a host's init that starts xenstored twice
        # finds it running.  Said under -v.
        log.info("pid file %s is locked by pid %s: a daemon runs; exiting 0", path, exc.holder)
        raise StartError(0) from None
    except OSError as exc:
        raise StartError(1, f"cannot write pid file {path}: {exc}") from None


def _check_socket_free(sock_path: str) -> None:
    """Refuse to take the socket of a live daemon (a stale one is replaced by listen)."""
    from pyxenstored.server.process import live_daemon_on

    if live_daemon_on(sock_path):
        raise StartError(
            1, f"a xenstored already listens on {sock_path}; not starting a second one"
        )


def _build_and_run(options: DaemonOptions, readiness: Readiness | None) -> None:
    """Build the store, server and guest backend; restore or listen; serve."""
    # Imported here, not at the top: the check run (--check-state) needs none
    # of the server, and its start-up is part of the live-update blackout.
    from pyxenstored.server import oxenstored_lu
    from pyxenstored.server.control_hooks import ServerControlHooks
    from pyxenstored.server.domain_state import DomainStateControl
    from pyxenstored.server.liveupdate import LiveUpdate
    from pyxenstored.server.loop import Server, ServerConfig
    from pyxenstored.store import Store

    ox_state = None
    if options.oxenstored_dump is not None:
        # Checked before anything is opened: a dump that cannot be taken
        # falls back to the oxenstored that wrote it.
        try:
            ox_state = oxenstored_lu.prepare(options.oxenstored_dump, options.argv, options.config)
        except RestoreError as exc:
            raise StartError(1, f"oxenstored's state cannot be taken: {exc}") from None
    tracer = _open_tracer(options)
    hooks = ServerControlHooks(tracer)
    store = Store(options.config, hooks)
    store.wrl.trace = tracer.wrl
    server_config = ServerConfig(store_domid=options.config.store_domid)
    if options.watch_timeout is not None:
        server_config.watch_event_timeout = options.watch_timeout
    server = Server(store, server_config, tracer)
    hooks.connections = lambda: server.connections
    updater = LiveUpdate(
        server, store, rundir=options.rundir, sock_path=options.sock_path, argv=options.argv
    )
    updater.install(hooks)
    rings = None
    try:
        # Before a restore: live update maps the dumped rings through it.
        hypervisor = _open_backend(
            options.backend,
            options.config.store_domid,
            bind_virq=ox_state is None or not oxenstored_lu.hands_over_virq(ox_state),
        )
        if hypervisor is not None:
            from pyxenstored.server.ring_domains import RingDomains

            rings = RingDomains(server, store, hypervisor)
            updater.ring_restorer = rings.restore_transport
        from pyxenstored.server.oxenstored_lu import OxenstoredSuccessor

        updater.foreign = OxenstoredSuccessor(updater, rings)
        if ox_state is not None:
            try:
                oxenstored_lu.adopt(updater, rings, ox_state)
            except RestoreError as exc:
                raise StartError(1, f"taking over oxenstored's state failed: {exc}") from None
        elif options.live_update:
            try:
                updater.restore()
            except RestoreError as exc:
                raise StartError(1, f"live update restore failed: {exc}") from None
        if rings is not None:
            virq = ox_state.extras.domexc_port if ox_state is not None else None
            if ox_state is not None and not oxenstored_lu.hands_over_virq(ox_state):
                virq = None
            rings.adopt_inherited_evtchn(updater.evtchn_fd, virq)
            updater.evtchn_fd = rings.evtchn_fd
            rings.start(auto_introduce=not options.live_update)
        if not options.live_update:
            # Last: whoever waits for the socket file finds the rings served too.
            try:
                server.listen(options.sock_path)
            except OSError as exc:
                raise StartError(1, f"cannot listen on {options.sock_path}: {exc}") from None
        DomainStateControl(server, store, options.rundir, rings).install(hooks)
        server.install_signal_handlers()
        server.run(on_ready=lambda: _announce(options, readiness))
        log.info("stopping on signal %s", server.stop_signal)
    finally:
        if rings is not None:
            rings.close()
        server.close()
        tracer.close()


def _open_tracer(options: DaemonOptions) -> Tracer:
    # A trace file that cannot be opened is logged and the daemon serves
    # without it, as C does.
    tracer = Tracer(options.trace_path, base_dir=options.rundir)
    for switch in options.trace_switches:
        tracer.set_switch(switch)
    return tracer


def _open_backend(
    choice: BackendChoice, store_domid: int, *, bind_virq: bool = True
) -> Hypervisor | None:
    from pyxenstored.server.backends import BackendUnavailable, open_backend

    log.info("hypervisor backend: %s (%s)", choice.kind, choice.reason)
    try:
        return open_backend(choice, store_domid, bind_virq=bind_virq)
    except BackendUnavailable as exc:
        raise StartError(1, str(exc)) from None


def _private_dir(path: str) -> bool:
    st = os.lstat(path)
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o022


def _announce(options: DaemonOptions, readiness: Readiness | None) -> None:
    """Tell whoever started us that clients may connect now, then leave them."""
    from pyxenstored.server.log import log_to_syslog
    from pyxenstored.server.process import sd_notify

    pid = os.getpid()
    log.info("listening on %s (pid %d)", options.sock_path, pid)
    with contextlib.suppress(OSError, ValueError):
        print(f"XENSTORED_PATH={options.sock_path}", flush=True)
        if options.output_pid:
            print(pid, flush=True)
    sd_notify(f"READY=1\nMAINPID={pid}")
    if readiness is not None:
        log.info("serving in the background; log messages go to syslog from now on")
        readiness.ready()
        log_to_syslog()


if __name__ == "__main__":
    sys.exit(main())
