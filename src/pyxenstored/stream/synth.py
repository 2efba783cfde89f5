"""A realistic synthetic migration stream, generated lazily from a seed.

The stream looks like the live-update dump of a Xen host running ``domains``
guests (domids 1..N): the dom0 ring connection and a few toolstack sockets
(console daemon, toolstack, the live-update requester with its pending
``OK``), one ring connection per guest, with the watches such clients
register (absolute, relative, special, some with a depth in version 2);
the node tree depth-first as C writes it (``/tool``, ``/local/domain/0``
with the back-end areas ``backend/vif/N/K`` and ``backend/vbd/N/DEV``, the
guests' ``/local/domain/N/{name,domid,memory,cpu,device/vif,device/vbd,
control,console,store,...}``, ``/vm/<uuid>``, ``/libxl/N``), the two special
nodes, global and per-domain quota and features, and (optionally) a pending
transaction.

Records come out of a generator: nothing is kept per domain, so a stream of
any size needs constant memory.  The same seed and options give the same
records.
"""

from __future__ import annotations

import dataclasses
import random
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from pyxenstored.wire import DOMID_FIRST_RESERVED, DOMID_INVALID, MsgType

from .records import (
    ConnectionData,
    DomainData,
    End,
    GlobalData,
    GlobalQuotaData,
    NodeData,
    NodePerm,
    QuotaValue,
    Record,
    RingSpec,
    SocketSpec,
    TransactionData,
    WatchData,
    WatchDataExtended,
)

MAX_DOMAINS = DOMID_FIRST_RESERVED - 1

#: The C HEAD default quota table, in its order (domain.c quotas[], dump_state_glb_quota).
DEFAULT_QUOTA = (
    ("nodes", 1000),
    ("watches", 128),
    ("outstanding", 20),
    ("memory", 2621440),
    ("soft-memory", 2097152),
    ("transactions", 10),
    ("transaction-nodes", 1024),
    ("node-permissions", 5),
    ("path-max", 2048),
    ("node-size", 2048),
)

_VBD_DEVS = (51712, 51728, 51744, 51760, 51776, 51792, 51808, 51824)  # xvda..xvdh
_FEATURE_MASKS = (14, 14, 14, 6, 2)


@dataclass(slots=True, frozen=True)
class SynthConfig:
    """What to generate."""

    domains: int = 10
    seed: int = 0
    version: int = 2
    vifs: int = 1
    vbds: int = 1
    transactions: bool = True
    #: byte order of the wire messages inside pending connection data (they
    #: are in the writer's native order, like the rest of the stream)
    big_endian: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.domains <= MAX_DOMAINS:
            raise ValueError(f"--domains must be 0..{MAX_DOMAINS}, not {self.domains}")
        if self.version not in (1, 2):
            raise ValueError(f"version must be 1 or 2, not {self.version}")
        if not 0 <= self.vifs <= 64 or not 0 <= self.vbds <= len(_VBD_DEVS):
            raise ValueError(f"vifs must be 0..64 and vbds 0..{len(_VBD_DEVS)}")


@dataclass(slots=True, frozen=True)
class _Guest:
    """What the several passes over a guest must agree on (recomputed, never stored)."""

    domid: int
    name: str
    uuid: str
    memory_kb: int
    vcpus: int
    macs: tuple[str, ...]
    evtchn: int
    unique_id: int
    features: int
    ring_ref: int
    console_port: int
    pvh: bool


def _guest(seed: int, domid: int) -> _Guest:
    rng = random.Random(f"{seed}/{domid}")
    uuid = f"{rng.getrandbits(128):032x}"
    uuid = f"{uuid[:8]}-{uuid[8:12]}-{uuid[12:16]}-{uuid[16:20]}-{uuid[20:]}"
    macs = tuple(
        "00:16:3e:" + ":".join(f"{rng.getrandbits(8):02x}" for _ in range(3)) for _ in range(64)
    )
    return _Guest(
        domid=domid,
        name=rng.choice(("web", "db", "build", "cache", "vpn", "mail")) + f"-{domid}",
        uuid=uuid,
        memory_kb=rng.choice((524288, 1048576, 2097152, 4194304, 8388608)),
        vcpus=rng.choice((1, 2, 2, 4, 8)),
        macs=macs,
        evtchn=rng.randrange(16, 4096),
        unique_id=rng.getrandbits(64),
        features=rng.choice(_FEATURE_MASKS),
        ring_ref=rng.randrange(0x1000, 0xFFFFF),
        console_port=rng.randrange(1, 4096),
        pvh=rng.random() < 0.5,
    )


def _perms(owner: int, *others: tuple[str, int], default: str = "n") -> tuple[NodePerm, ...]:
    return (NodePerm(default, 0, owner),) + tuple(NodePerm(p, 0, d) for p, d in others)


def _node(path: str, value: str | bytes, perms: tuple[NodePerm, ...]) -> NodeData:
    """A committed node."""
    raw = value.encode() if isinstance(value, str) else value
    return NodeData(0, 0, 0, perms, path, raw)


P_DOM0 = _perms(0)


def _backend_vif(g: _Guest, vifs: int) -> Iterator[NodeData]:
    base = f"/local/domain/0/backend/vif/{g.domid}"
    perms = _perms(0, ("r", g.domid))
    yield _node(base, "", perms)
    for k in range(vifs):
        p = f"{base}/{k}"
        yield _node(p, "", perms)
        for key, value in (
            ("frontend", f"/local/domain/{g.domid}/device/vif/{k}"),
            ("frontend-id", str(g.domid)),
            ("online", "1"),
            ("state", "4"),
            ("script", "/etc/xen/scripts/vif-bridge"),
            ("mac", g.macs[k]),
            ("bridge", "xenbr0"),
            ("handle", str(k)),
            ("type", "vif"),
            ("hotplug-status", "connected"),
            ("feature-sg", "1"),
            ("feature-gso-tcpv4", "1"),
            ("feature-gso-tcpv6", "1"),
            ("feature-rx-copy", "1"),
            ("feature-rx-flip", "0"),
            ("feature-split-event-channels", "1"),
            ("multi-queue-max-queues", str(g.vcpus)),
        ):
            yield _node(f"{p}/{key}", value, perms)


def _backend_vbd(g: _Guest, vbds: int) -> Iterator[NodeData]:
    base = f"/local/domain/0/backend/vbd/{g.domid}"
    perms = _perms(0, ("r", g.domid))
    yield _node(base, "", perms)
    for k in range(vbds):
        dev = _VBD_DEVS[k]
        p = f"{base}/{dev}"
        yield _node(p, "", perms)
        for key, value in (
            ("frontend", f"/local/domain/{g.domid}/device/vbd/{dev}"),
            ("params", f"/dev/vg0/{g.name}-disk{k}"),
            ("script", "/etc/xen/scripts/block"),
            ("frontend-id", str(g.domid)),
            ("online", "1"),
            ("removable", "0"),
            ("bootable", "1" if k == 0 else "0"),
            ("state", "4"),
            ("dev", "xvd" + "abcdefgh"[k]),
            ("type", "phy"),
            ("mode", "w"),
            ("device-type", "disk"),
            ("discard-enable", "1"),
            ("physical-device", f"fe:{g.domid % 256:x}"),
            ("physical-device-path", f"/dev/dm-{g.domid}"),
            ("hotplug-status", "connected"),
            ("feature-flush-cache", "1"),
            ("feature-discard", "1"),
            ("feature-persistent", "1"),
            ("sectors", str(41943040 * (k + 1))),
            ("info", "0"),
            ("sector-size", "512"),
        ):
            yield _node(f"{p}/{key}", value, perms)


def _guest_home(g: _Guest, vifs: int, vbds: int) -> Iterator[NodeData]:
    d = g.domid
    home = f"/local/domain/{d}"
    ro = _perms(0, ("r", d))  # written by the toolstack, readable by the guest
    own = _perms(d, ("r", 0))  # the guest's own area, readable by dom0
    yield _node(home, "", ro)
    yield _node(f"{home}/vm", f"/vm/{g.uuid}", ro)
    yield _node(f"{home}/name", g.name, ro)
    yield _node(f"{home}/domid", str(d), ro)
    yield _node(f"{home}/cpu", "", ro)
    for c in range(g.vcpus):
        yield _node(f"{home}/cpu/{c}", "", ro)
        yield _node(f"{home}/cpu/{c}/availability", "online", ro)
    yield _node(f"{home}/memory", "", ro)
    yield _node(f"{home}/memory/static-max", str(g.memory_kb), ro)
    yield _node(f"{home}/memory/target", str(g.memory_kb - 1024), own)
    yield _node(f"{home}/memory/videoram", "-1", ro)
    yield _node(f"{home}/device", "", ro)
    if vbds:
        yield _node(f"{home}/device/vbd", "", ro)
        yield from _guest_vbds(g, vbds)
    if vifs:
        yield _node(f"{home}/device/vif", "", ro)
        yield from _guest_vifs(g, vifs)
    yield _node(f"{home}/control", "", ro)
    yield _node(f"{home}/control/shutdown", "", own)
    for key in ("feature-poweroff", "feature-reboot", "feature-suspend", "feature-s3", "sysrq"):
        yield _node(f"{home}/control/{key}", "1" if key != "sysrq" else "", own)
    yield _node(f"{home}/control/platform-feature-multiprocessor-suspend", "1", ro)
    yield _node(f"{home}/control/platform-feature-xs_reset_watches", "1", ro)
    for area in ("data", "drivers", "feature", "attr", "error"):
        yield _node(f"{home}/{area}", "", own)
        # depth-first like C: a node's children right after it
        if area == "drivers":
            yield _node(f"{home}/drivers/0", f"Linux 6.1.0-{d % 30}-amd64", own)
        elif area == "attr":
            yield _node(f"{home}/attr/os", "linux", own)
    yield _node(f"{home}/console", "", ro)
    for key, value in (
        ("backend-id", "0"),
        ("limit", "1048576"),
        ("type", "xenconsoled"),
        ("output", "pty"),
        ("tty", f"/dev/pts/{d % 512}"),
        ("port", str(g.console_port)),
        ("ring-ref", str(g.ring_ref + 1)),
    ):
        yield _node(f"{home}/console/{key}", value, ro)
    yield _node(f"{home}/store", "", ro)
    yield _node(f"{home}/store/port", str(g.evtchn), ro)
    yield _node(f"{home}/store/ring-ref", str(g.ring_ref), ro)


def _guest_vbds(g: _Guest, vbds: int) -> Iterator[NodeData]:
    """The guest's disk frontends, ``device/vbd/<dev>``."""
    d = g.domid
    home = f"/local/domain/{d}"
    for k in range(vbds):
        dev = _VBD_DEVS[k]
        p = f"{home}/device/vbd/{dev}"
        fperms = _perms(d, ("r", 0))
        yield _node(p, "", fperms)
        for key, value in (
            ("backend", f"/local/domain/0/backend/vbd/{d}/{dev}"),
            ("backend-id", "0"),
            ("state", "4"),
            ("virtual-device", str(dev)),
            ("device-type", "disk"),
            ("protocol", "x86_64-abi"),
            ("ring-ref", str(g.ring_ref + 16 + k)),
            ("event-channel", str((g.evtchn + 3 + k) % 4096)),
            ("feature-persistent", "1"),
        ):
            yield _node(f"{p}/{key}", value, fperms)


def _guest_vifs(g: _Guest, vifs: int) -> Iterator[NodeData]:
    """The guest's network frontends, ``device/vif/<k>``."""
    d = g.domid
    home = f"/local/domain/{d}"
    for k in range(vifs):
        p = f"{home}/device/vif/{k}"
        fperms = _perms(d, ("r", 0))
        yield _node(p, "", fperms)
        for key, value in (
            ("backend", f"/local/domain/0/backend/vif/{d}/{k}"),
            ("backend-id", "0"),
            ("state", "4"),
            ("handle", str(k)),
            ("mac", g.macs[k]),
            ("mtu", "1500"),
            ("tx-ring-ref", str(g.ring_ref + 32 + 2 * k)),
            ("rx-ring-ref", str(g.ring_ref + 33 + 2 * k)),
            ("event-channel", str((g.evtchn + 40 + k) % 4096)),
            ("request-rx-copy", "1"),
            ("feature-rx-notify", "1"),
            ("feature-sg", "1"),
            ("feature-gso-tcpv4", "1"),
        ):
            yield _node(f"{p}/{key}", value, fperms)


def _vm(g: _Guest) -> Iterator[NodeData]:
    p = f"/vm/{g.uuid}"
    perms = _perms(0, ("r", g.domid))
    yield _node(p, "", perms)
    yield _node(f"{p}/name", g.name, perms)
    yield _node(f"{p}/uuid", g.uuid, perms)
    yield _node(f"{p}/start_time", f"{1700000000 + g.domid * 37}.{g.domid % 100:02d}", perms)
    yield _node(f"{p}/image", "", perms)
    yield _node(f"{p}/image/ostype", "pvh" if g.pvh else "linux", perms)
    yield _node(f"{p}/image/kernel", "/boot/vmlinuz-6.1.0-amd64", perms)
    yield _node(f"{p}/image/cmdline", "root=/dev/xvda1 ro console=hvc0 quiet", perms)


_MSG = {False: struct.Struct("<IIII"), True: struct.Struct(">IIII")}


def _msg(mtype: MsgType, req_id: int, payload: bytes, big: bool) -> bytes:
    return _MSG[big].pack(int(mtype), req_id, 0, len(payload)) + payload


def synth_records(cfg: SynthConfig) -> Iterator[Record]:
    """All records of the synthetic stream, END included, in C HEAD order (lu.c:lu_dump_state)."""
    yield GlobalData(socket_fd=5, evtchn_fd=6)
    yield GlobalQuotaData(tuple(QuotaValue(n, v) for n, v in DEFAULT_QUOTA), ())
    yield from _service_connections(cfg)
    # The first guest's connection holds an open transaction.
    txn_conn = 4 if cfg.transactions and cfg.domains else 0
    yield from _guest_connections(cfg, txn_conn)
    # The live-update requester: its pending reply comes last (lu.c:lu_write_response).
    lu_conn = 4 + cfg.domains
    yield ConnectionData(
        lu_conn, 1, 0, SocketSpec(22), out_data=_msg(MsgType.CONTROL, 1, b"OK\0", cfg.big_endian)
    )
    yield from _tree(cfg)
    if txn_conn:
        # The guest's open transaction: one node written, one read, one deleted.
        d = txn_conn - 3
        own = _perms(d, ("r", 0))
        yield NodeData(txn_conn, 17, 3, own, f"/local/domain/{d}/data/progress", b"50%")
        yield NodeData(txn_conn, 17, 1, own, f"/local/domain/{d}/data", b"")
        yield NodeData(txn_conn, 17, 0, (), f"/local/domain/{d}/attr/os", b"")
    yield from _domains(cfg)
    yield End()


def _service_connections(cfg: SynthConfig) -> Iterator[Record]:
    """dom0's ring, xenconsoled and the toolstack, each followed by its watches."""
    guests = range(1, cfg.domains + 1)
    # conn 1 is dom0's ring: C needs the privileged connection before any node.
    yield ConnectionData(1, 0, 1, RingSpec(0, DOMID_INVALID, 1), unique_id=0)
    yield WatchData(1, "backend/vif", "backend/vif")
    yield WatchData(1, "backend/vbd", "backend/vbd")
    for d in guests:
        yield WatchData(1, f"/local/domain/{d}/device/vif/0/state", f"FFFF8880{d:08X}")
    # xenconsoled
    yield ConnectionData(2, 1, 0, SocketSpec(20))
    yield WatchData(2, "@introduceDomain", "domlist")
    yield WatchData(2, "@releaseDomain", "domlist")
    for d in guests:
        yield WatchData(2, f"/local/domain/{d}/console/type", f"dom{d}")
    # the toolstack daemon
    yield ConnectionData(3, 1, 0, SocketSpec(21))
    yield WatchData(3, "@releaseDomain", "xl-release")
    if cfg.version >= 2:
        yield WatchDataExtended(3, "/local/domain", "xl-domains", depth=1)
        yield WatchDataExtended(3, "/vm", "xl-vm", depth=0xFFFF)
    else:
        yield WatchData(3, "/local/domain", "xl-domains")


def _guest_connections(cfg: SynthConfig, txn_conn: int) -> Iterator[Record]:
    """Each guest's ring (some with pending data) and watches; ``txn_conn``'s transaction."""
    big = cfg.big_endian
    for d in range(1, cfg.domains + 1):
        g = _guest(cfg.seed, d)
        conn_id = 3 + d
        in_data = b""
        out_data = b""
        if d % 97 == 1:
            # a request that arrived while the update was pending, and half of the next one
            in_data = _msg(MsgType.READ, 7, f"/local/domain/{d}/name\0".encode(), big)
            in_data += _msg(MsgType.WRITE, 8, b"data/progress\x0050%", big)[:21]
        if d % 89 == 2:
            out_data = _msg(MsgType.WATCH_EVENT, 0, b"control/shutdown\0control/shutdown\0", big)
        yield ConnectionData(
            conn_id,
            0,
            1,
            RingSpec(d, DOMID_INVALID, g.evtchn),
            in_data=in_data,
            out_data=out_data,
            unique_id=g.unique_id,
        )
        yield WatchData(conn_id, "control/shutdown", "control/shutdown")
        yield WatchData(conn_id, "control/sysrq", "control/sysrq")
        yield WatchData(conn_id, f"/local/domain/0/backend/vif/{d}/0/state", f"FFFF8881{d:08X}")
        if cfg.version >= 2 and d % 3 == 0:
            yield WatchDataExtended(conn_id, "device", "device-watch", depth=2)
        if conn_id == txn_conn:
            yield TransactionData(conn_id, 17)


def _tree(cfg: SynthConfig) -> Iterator[Record]:
    """The committed tree, depth-first, children in creation order."""
    guests = range(1, cfg.domains + 1)
    yield _node("/", "", P_DOM0)
    yield _node("/tool", "", P_DOM0)
    yield _node("/tool/xenstored", "", P_DOM0)
    yield _node("/local", "", P_DOM0)
    yield _node("/local/domain", "", P_DOM0)
    yield _node("/local/domain/0", "", P_DOM0)
    yield _node("/local/domain/0/name", "Domain-0", P_DOM0)
    yield _node("/local/domain/0/domid", "0", P_DOM0)
    yield _node("/local/domain/0/memory", "", P_DOM0)
    yield _node("/local/domain/0/memory/target", "4194304", P_DOM0)
    yield _node("/local/domain/0/memory/static-max", "4294967292", P_DOM0)
    yield _node("/local/domain/0/control", "", P_DOM0)
    yield _node("/local/domain/0/control/feature-poweroff", "1", P_DOM0)
    yield _node("/local/domain/0/control/feature-reboot", "1", P_DOM0)
    yield _node("/local/domain/0/backend", "", P_DOM0)
    if cfg.domains and cfg.vifs:
        yield _node("/local/domain/0/backend/vif", "", P_DOM0)
        for d in guests:
            yield from _backend_vif(_guest(cfg.seed, d), cfg.vifs)
    if cfg.domains and cfg.vbds:
        yield _node("/local/domain/0/backend/vbd", "", P_DOM0)
        for d in guests:
            yield from _backend_vbd(_guest(cfg.seed, d), cfg.vbds)
    for d in guests:
        yield from _guest_home(_guest(cfg.seed, d), cfg.vifs, cfg.vbds)
    yield _node("/vm", "", P_DOM0)
    for d in guests:
        yield from _vm(_guest(cfg.seed, d))
    yield _node("/libxl", "", P_DOM0)
    for d in guests:
        g = _guest(cfg.seed, d)
        yield _node(f"/libxl/{d}", "", P_DOM0)
        yield _node(f"/libxl/{d}/type", "pvh" if g.pvh else "pv", P_DOM0)
        yield _node(f"/libxl/{d}/dm-version", "qemu_xen", P_DOM0)
    yield _node("@releaseDomain", "", P_DOM0)
    yield _node("@introduceDomain", "", P_DOM0)


def _domains(cfg: SynthConfig) -> Iterator[Record]:
    """Per-domain data, last: features (version 2) and quota."""
    v2 = cfg.version >= 2
    yield DomainData(
        0, 14 if v2 else 0, tuple(QuotaValue(n, 0 if n == "nodes" else v) for n, v in DEFAULT_QUOTA)
    )
    for d in range(1, cfg.domains + 1):
        g = _guest(cfg.seed, d)
        # a few guests got their quota raised by the administrator
        raised = {"nodes": 4000} if d % 4 == 0 else {}
        if d % 6 == 5:
            raised["watches"] = 256
        quota = tuple(QuotaValue(n, raised.get(n, v)) for n, v in DEFAULT_QUOTA)
        yield DomainData(d, g.features if v2 else 0, quota)


def write_synth(dest: str | BinaryIO, cfg: SynthConfig, *, big_endian: bool = False) -> int:
    """Write the synthetic stream to a path or binary file; returns the number of records."""
    from .writer import StreamWriter  # the writer is only needed here

    cfg = dataclasses.replace(cfg, big_endian=big_endian)
    writer = StreamWriter(dest, version=cfg.version, big_endian=big_endian)
    count = 0
    try:
        for record in synth_records(cfg):
            writer.write(record)
            count += 1
    finally:
        writer.close()
    return count
