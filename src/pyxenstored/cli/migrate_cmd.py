"""``pyxenstored migrate``: move one domain's xenstore state from one daemon to another.

Usage::

    pyxenstored migrate --from SOCKET --to SOCKET --domid N [--new-domid M]
                        [--state-file PATH] [--keep-home]

The sequence (``docs/migration.md``), driven over both daemons' sockets
with the project's client:

1. both daemons answer; domain N is introduced on the source and domain M
   (default N) on the target (the target's toolstack made M: INTRODUCE,
   and at most an empty home);
2. ``CONTROL domain-state-save N FILE`` on the source (nothing changes there);
3. ``CONTROL domain-state-restore FILE M`` on the target: it takes all or
   nothing;
4. only then ``RELEASE N`` on the source, and ``RM /local/domain/N`` there
   (what a toolstack does for a domain that is gone) unless ``--keep-home``.

If step 2 or 3 is refused, the source is left as it was and the reason is
printed.  The guest must not use xenstore between 2 and 4 (the hypervisor
has it paused, as for any migration).  Exit codes: 0 moved, 1 refused or
failed, 2 bad usage.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence

from pyxenstored.cli.helptext import Section, epilog
from pyxenstored.client import Client, XsClientError

PROG = "pyxenstored migrate"
TIMEOUT = 30.0


EXIT_STATUS = Section(
    "exit status",
    (
        ("0", "the domain moved"),
        (
            "1",
            "a step was refused or failed (the message says which, and where the "
            "domain is), or a daemon could not be reached",
        ),
        ("2", "bad command line"),
    ),
    man="EXIT STATUS",
)


class MigrateError(Exception):
    """A step failed; the message says which, and what state the domain is in."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Move one domain's xenstore state (nodes of its home, watches,\n"
        "transactions, quota, features) from one pyxenstored to another.",
        epilog=epilog(
            EXIT_STATUS, note="The steps and what each failure leaves: docs/migration.md."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--from", dest="source", required=True, metavar="SOCKET", help="the source daemon's socket"
    )
    p.add_argument(
        "--to", dest="target", required=True, metavar="SOCKET", help="the target daemon's socket"
    )
    p.add_argument("--domid", type=int, required=True, metavar="N", help="domain on the source")
    p.add_argument(
        "--new-domid", type=int, metavar="M", help="its domid on the target (default: N)"
    )
    p.add_argument(
        "--state-file",
        metavar="PATH",
        help="where the stream goes (kept); default: a private temporary file, removed after",
    )
    p.add_argument(
        "--keep-home",
        action="store_true",
        help="after RELEASE, leave /local/domain/N on the source (default: remove it)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=TIMEOUT,
        metavar="SEC",
        help=f"seconds to wait for each answer (default {TIMEOUT:g})",
    )
    return p


def _connect(path: str, what: str, timeout: float) -> Client:
    try:
        return Client.connect_socket(path, timeout=timeout)
    except OSError as exc:
        raise MigrateError(f"cannot connect to the {what} daemon at {path}: {exc}") from None


def _introduced(client: Client, domid: int, what: str) -> None:
    try:
        introduced = client.is_domain_introduced(domid)
    except XsClientError as exc:
        raise MigrateError(f"{what}: IS_DOMAIN_INTRODUCED {domid} failed: {exc.name}") from None
    if not introduced:
        hint = " (introduce it there first)" if what == "target" else ""
        raise MigrateError(f"{what}: domain {domid} is not introduced{hint}")


def _control(client: Client, what: str, *args: str) -> None:
    try:
        reply = client.control(*args)
    except XsClientError as exc:
        raise MigrateError(f"{what}: {' '.join(args[:1])} failed: {exc.name}") from None
    if reply != "OK":
        raise MigrateError(f"{what} refused: {reply}")


def migrate(
    source: Client,
    target: Client,
    domid: int,
    new_domid: int,
    state_file: str,
    *,
    keep_home: bool = False,
) -> list[str]:
    """Run the sequence; returns what was done, one line per step."""
    done = []
    _introduced(source, domid, "source")
    _introduced(target, new_domid, "target")
    _control(source, "source", "domain-state-save", str(domid), state_file)
    done.append(f"source: saved domain {domid} to {state_file}")
    try:
        _control(target, "target", "domain-state-restore", state_file, str(new_domid))
    except MigrateError as exc:
        raise MigrateError(f"{exc}; domain {domid} stays on the source, unchanged") from None
    done.append(f"target: restored it as domain {new_domid}")
    try:
        source.release(domid)
    except XsClientError as exc:
        raise MigrateError(
            f"source: RELEASE {domid} failed ({exc.name}) after the target took the domain: "
            "release it on the source by hand"
        ) from None
    done.append(f"source: released domain {domid}")
    if not keep_home:
        home = f"/local/domain/{domid}"
        with contextlib.suppress(XsClientError):  # ENOENT: RELEASE removed it all
            source.rm(home)
        done.append(f"source: removed {home}")
    return done


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    new_domid = args.domid if args.new_domid is None else args.new_domid
    tmpdir = None
    if args.state_file:
        state_file = os.path.abspath(args.state_file)
    else:
        tmpdir = tempfile.mkdtemp(prefix="pyxenstored-migrate-")
        state_file = os.path.join(tmpdir, f"domain-{args.domid}.xss")
    try:
        with (
            _connect(args.source, "source", args.timeout) as source,
            _connect(args.target, "target", args.timeout) as target,
        ):
            for line in migrate(
                source, target, args.domid, new_domid, state_file, keep_home=args.keep_home
            ):
                print(line)
    except MigrateError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # the connection broke, or a timeout
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    finally:
        if tmpdir is not None:
            shutil.rmtree(tmpdir, ignore_errors=True)
    print(f"domain {args.domid} moved to {args.target} as domain {new_domid}")
    return 0
