"""Live update across implementations: oxenstored's state dump <-> the store.

oxenstored (``tools/ocaml/xenstored`` in xen.git) hands its state to its
successor as a text dump (docs/oxenstored-format.md), not as a migration
stream.  This module is the part of a live update to and from oxenstored
that knows the store: no I/O, bytes and records in, bytes and records out.

* :func:`read_state` turns oxenstored's dump (and the quota of its
  configuration file) into migration-stream records; anything oxenstored's
  own reader would skip is an error, so that a dump the successor cannot
  take whole is refused before it is used.
* :func:`check_state` restores those records into a scratch store, as
  ``pyxenstored --check-state`` does for a stream.
* :func:`write_state` turns the records of a running pyxenstored into
  oxenstored's dump and lists everything oxenstored cannot take
  (:func:`quota_losses` for the quota part).

Where oxenstored expects its files (``define.ml``, ``paths.ml`` as Debian
builds them) is below; both are compiled into oxenstored.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..store import Store, StoreConfig
from ..store import quota as q
from ..store.features import SUPPORTED_FEATURES
from ..stream import DomainData, GlobalQuotaData, Record
from ..stream.oxenstored import (
    OxDump,
    OxenstoredConversionError,
    OxenstoredExtras,
    OxenstoredFormatError,
    OxenstoredQuota,
    StoreLine,
    dump_to_records,
    format_dump,
    parse_dump,
    quota_to_c,
    records_to_dump,
)
from ..stream.txmarks import is_marks_name
from .dump import quota_values
from .restore import Restored, RestoreError, StoreOnlySink, restore_state

#: oxenstored's run directory, socket and dump (``Disk.xs_daemon_database``).
OXENSTORED_RUNDIR = "/var/run/xenstored"
OXENSTORED_SOCKET = OXENSTORED_RUNDIR + "/socket"
OXENSTORED_DB = OXENSTORED_RUNDIR + "/db"
#: Its configuration file when no ``--config-file`` is given.
OXENSTORED_CONFIG = "/etc/xen/oxenstored.conf"
#: The node where oxenstored writes its own executable at start.
EXECUTABLE_NODE = b"/tool/xenstored"
#: The arguments oxenstored's live update puts first (``process.ml:LiveUpdate``).
FORCED_ARGS = ("--live", "--restart")


@dataclass(slots=True, frozen=True)
class OxenstoredState:
    """oxenstored's dump, read: the records, what the stream lacks, who wrote it.

    ``predecessor`` is the value of ``/tool/xenstored`` in the dump (the
    oxenstored binary that wrote it), None when absent.
    """

    records: tuple[Record, ...]
    extras: OxenstoredExtras
    predecessor: str | None


def read_state(data: bytes, quota: OxenstoredQuota | None = None) -> OxenstoredState:
    """The records of oxenstored's dump ``data``; raises :class:`RestoreError` saying why not.

    Nothing may be dropped: a line oxenstored itself would skip, or a field
    the stream cannot carry, refuses the whole dump.
    """
    try:
        dump = parse_dump(data)
    except OxenstoredFormatError as exc:
        raise RestoreError(f"not an oxenstored dump: {exc}") from None
    try:
        conversion = dump_to_records(dump, quota=quota)
    except OxenstoredConversionError as exc:
        raise RestoreError(f"oxenstored dump: {exc}") from None
    return OxenstoredState(conversion.records, conversion.extras, _predecessor(dump))


def _predecessor(dump: OxDump) -> str | None:
    for line in dump.lines:
        if isinstance(line, StoreLine) and line.path == EXECUTABLE_NODE:
            try:
                return line.value.decode() or None
            except UnicodeDecodeError:
                return None
    return None


def predecessor_of(data: bytes) -> str | None:
    """``/tool/xenstored`` of a dump, read from its own line only (the rest may be bad)."""
    prefix = b"store," + EXECUTABLE_NODE.hex().encode() + b","
    for line in data.split(b"\n"):
        if line.startswith(prefix):
            value = line.rsplit(b",", 1)[-1]
            try:
                return bytes.fromhex(value.decode("ascii")).decode() or None
            except (UnicodeDecodeError, ValueError):
                return None
    return None


def check_state(state: OxenstoredState, config: StoreConfig | None = None) -> Restored:
    """Restore ``state`` into a scratch store (no connection is touched); raises RestoreError."""
    store = Store(config or StoreConfig())
    return restore_state(state.records, store, StoreOnlySink(store), 2, verify=True)


def quota_losses(
    records: Sequence[Record], target: OxenstoredQuota, startup: q.QuotaTable
) -> list[str]:
    """The quota of ``records`` that oxenstored, configured with ``target``, would not keep.

    oxenstored takes its quota from its configuration file, the same for
    every domain.  A limit it has is lost when its value differs from the
    configuration's; a limit it lacks is lost unless it is off (0); soft
    limits only warn and are not counted (docs/compat.md D63).  Per-domain
    values that differ from the defaults are lost.
    """
    wanted, _ = quota_to_c(target)
    ox = {v.name: v.value for v in wanted}
    base = {v.name: v.value for v in quota_values(startup)}
    lost: list[str] = []
    defaults: dict[str, int] = dict(base)
    for r in records:
        if isinstance(r, GlobalQuotaData):
            defaults = {v.name: v.value for v in r.domain_quota}
            for name, value in defaults.items():
                lost += _quota_item(name, value, ox, "")
            lost += [f"global quota {v.name}={v.value}" for v in r.global_quota]
        elif isinstance(r, DomainData):
            for v in r.quota:
                if not is_marks_name(v.name) and defaults.get(v.name) != v.value:
                    lost.append(f"quota {v.name}={v.value} of domain {r.domid}")
    return lost


def _quota_item(name: str, value: int, ox: dict[str, int], where: str) -> list[str]:
    if name.startswith(q.SOFT_PREFIX):
        return []
    if name in ox:
        if ox[name] != value:
            return [f"quota {name}={value}{where} (oxenstored's configuration: {ox[name]})"]
        return []
    if value not in (0, q.DISABLED):
        return [f"quota {name}={value}{where} (oxenstored has no such limit)"]
    return []


@dataclass(slots=True, frozen=True)
class OxenstoredDump:
    """The dump for an oxenstored successor and everything it would lose."""

    data: bytes
    lost: tuple[str, ...]


def write_state(
    records: Iterable[Record],
    extras: OxenstoredExtras,
    target: OxenstoredQuota,
    startup: q.QuotaTable,
) -> OxenstoredDump:
    """oxenstored's dump of a running pyxenstored's ``records``, and what it loses.

    The quota and the per-domain data (features, quota) are not written
    (oxenstored has no place for them) but compared by :func:`quota_losses`;
    the default feature mask is not a loss (oxenstored has no features and
    guests see none).  Everything else the conversion drops is a loss.
    """
    records = list(records)
    lost = quota_losses(records, target, startup)
    for r in records:
        if isinstance(r, DomainData) and r.features not in (0, SUPPORTED_FEATURES):
            lost.append(f"features {r.features:#x} of domain {r.domid}")
    body = [r for r in records if not isinstance(r, (GlobalQuotaData, DomainData))]
    conversion = records_to_dump(body, extras=extras, lossy=True)
    lost += conversion.dropped
    return OxenstoredDump(format_dump(conversion.dump), tuple(lost))


def oxenstored_args(argv: Sequence[str]) -> list[str]:
    """The options of ``argv`` that oxenstored knows (``parse_arg.ml``), in order.

    oxenstored refuses options it does not know, so a pyxenstored started
    with its own options hands over only these; ``--live``/``--restart``
    are left out (oxenstored's live update puts them first).
    """
    flags = {
        "--no-domain-init",
        "--no-fork",
        "--reraise-top-level",
        "--no-access-log",
        "--disable-socket",
    }
    valued = {"--config-file", "--pid-file", "-T"}
    out: list[str] = []
    i = 0
    while i < len(argv):
        word = argv[i]
        i += 1
        name, eq, value = word.partition("=")
        if word in flags:
            out.append(word)
        elif name in valued and eq:
            out += [name, value]
        elif word in valued and i < len(argv):
            out += [word, argv[i]]
            i += 1
    return out


def config_file(argv: Sequence[str]) -> str:
    """The configuration file oxenstored started with ``argv`` reads."""
    args = oxenstored_args(argv)
    for i, word in enumerate(args[:-1]):
        if word == "--config-file":
            return args[i + 1]
    return OXENSTORED_CONFIG


__all__ = [
    "EXECUTABLE_NODE",
    "FORCED_ARGS",
    "OXENSTORED_CONFIG",
    "OXENSTORED_DB",
    "OXENSTORED_RUNDIR",
    "OXENSTORED_SOCKET",
    "OxenstoredDump",
    "OxenstoredState",
    "check_state",
    "config_file",
    "oxenstored_args",
    "predecessor_of",
    "quota_losses",
    "read_state",
    "write_state",
]
