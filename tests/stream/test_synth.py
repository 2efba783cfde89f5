"""The synthetic stream generator: realistic shape, deterministic, lazy, clean."""

from __future__ import annotations

import dataclasses
import io
import itertools
from collections import Counter

import pytest

from pyxenstored.stream import read_records
from pyxenstored.stream.check import check_all
from pyxenstored.stream.records import (
    ConnectionData,
    DomainData,
    End,
    GlobalData,
    GlobalQuotaData,
    NodeData,
    RingSpec,
    SocketSpec,
    TransactionData,
    WatchData,
    WatchDataExtended,
)
from pyxenstored.stream.synth import MAX_DOMAINS, SynthConfig, synth_records, write_synth
from pyxenstored.stream.text import in_tree_order


def as_bytes(cfg: SynthConfig, big: bool = False) -> bytes:
    buf = io.BytesIO()
    write_synth(buf, cfg, big_endian=big)
    return buf.getvalue()


def test_same_seed_same_bytes_other_seed_other_bytes() -> None:
    a = as_bytes(SynthConfig(domains=4, seed=1))
    assert a == as_bytes(SynthConfig(domains=4, seed=1))
    assert a != as_bytes(SynthConfig(domains=4, seed=2))


@pytest.mark.parametrize("big", [False, True])
@pytest.mark.parametrize("version", [1, 2])
def test_checks_clean_in_every_version_and_order(version: int, big: bool) -> None:
    diags, summary = check_all(as_bytes(SynthConfig(domains=6, version=version), big))
    assert [str(d) for d in diags] == []
    assert summary.ended


def test_host_layout() -> None:
    records = list(synth_records(SynthConfig(domains=3, seed=5, vifs=2, vbds=2)))
    nodes = {r.path: r for r in records if isinstance(r, NodeData) and not r.conn_id}
    for d in (1, 2, 3):
        home = f"/local/domain/{d}"
        assert nodes[f"{home}/domid"].value == str(d).encode()
        assert nodes[f"{home}/name"].value
        assert f"{home}/memory/target" in nodes and f"{home}/control/shutdown" in nodes
        for k in (0, 1):
            front = f"{home}/device/vif/{k}"
            back = f"/local/domain/0/backend/vif/{d}/{k}"
            assert nodes[f"{front}/backend"].value == back.encode()
            assert nodes[f"{back}/frontend"].value == front.encode()
            assert nodes[f"{front}/mac"].value == nodes[f"{back}/mac"].value
            assert nodes[front].owner == d and nodes[back].owner == 0
        vm = nodes[f"{home}/vm"].value.decode()
        assert vm.startswith("/vm/") and nodes[f"{vm}/name"].value == nodes[f"{home}/name"].value
        assert f"/local/domain/0/backend/vbd/{d}/51728/params" in nodes
    assert "@releaseDomain" in nodes and "@introduceDomain" in nodes


def test_record_order_is_c_like() -> None:
    records = list(synth_records(SynthConfig(domains=3)))
    assert in_tree_order(records)  # nodes depth-first, as C writes them
    kinds = [type(r) for r in records]
    assert kinds[0] is GlobalData and kinds[1] is GlobalQuotaData and kinds[-1] is End
    first_node = kinds.index(NodeData)
    assert ConnectionData not in kinds[first_node:]
    assert all(k is DomainData for k in kinds[-5:-1])  # dom0 + 3 guests, then END
    # the privileged (dom0) ring connection comes first
    first = records[2]
    assert (
        isinstance(first, ConnectionData)
        and isinstance(first.spec, RingSpec)
        and first.spec.domid == 0
    )


def test_connections_watches_quota_features() -> None:
    records = list(synth_records(SynthConfig(domains=6, seed=2)))
    conns = [r for r in records if isinstance(r, ConnectionData)]
    rings = [c for c in conns if isinstance(c.spec, RingSpec)]
    sockets = [c for c in conns if isinstance(c.spec, SocketSpec)]
    assert len(rings) == 7 and len(sockets) == 3
    assert all(c.unique_id is not None for c in rings)
    assert any(c.in_data for c in conns) and any(c.out_data for c in conns)
    assert sockets[-1].out_data.endswith(b"OK\0")  # the live-update requester's reply
    ext = [r for r in records if isinstance(r, WatchDataExtended)]
    assert ext and any(w.depth != 0xFFFF for w in ext)
    assert any(isinstance(r, WatchData) and r.wpath.startswith("@") for r in records)
    assert any(isinstance(r, WatchData) and not r.wpath.startswith(("/", "@")) for r in records)
    domains = [r for r in records if isinstance(r, DomainData)]
    assert [d.domid for d in domains] == list(range(7))
    assert len({d.features for d in domains}) > 1
    assert any(d.quota != domains[1].quota for d in domains[1:])
    assert any(isinstance(r, TransactionData) for r in records)
    pending = [r for r in records if isinstance(r, NodeData) and r.conn_id]
    assert any(r.deleted for r in pending) and any(not r.deleted for r in pending)


def test_version_1_has_no_version_2_content() -> None:
    records = list(synth_records(SynthConfig(domains=6, version=1)))
    assert not any(isinstance(r, WatchDataExtended) for r in records)
    assert all(r.features == 0 for r in records if isinstance(r, DomainData))


def test_size_scales_with_domains_and_devices() -> None:
    def count(cfg: SynthConfig) -> Counter[type]:
        return Counter(type(r) for r in synth_records(cfg))

    small = count(SynthConfig(domains=10))
    assert small[NodeData] >= 100 * 10
    more = count(SynthConfig(domains=10, vifs=4, vbds=4))
    assert more[NodeData] > small[NodeData] * 2


def test_lazy_for_huge_configs() -> None:
    gen = synth_records(SynthConfig(domains=MAX_DOMAINS, vifs=8, vbds=8))
    first = list(itertools.islice(gen, 20))
    assert isinstance(first[0], GlobalData) and len(first) == 20


def test_round_trips_through_the_reader() -> None:
    cfg = SynthConfig(domains=3, seed=4)
    header, records = read_records(as_bytes(cfg, big=True))
    assert header.big_endian
    assert records == list(synth_records(dataclasses.replace(cfg, big_endian=True)))
    # the wire messages inside pending data follow the stream's byte order
    assert records != list(synth_records(cfg))


@pytest.mark.parametrize(
    "kwargs", [{"domains": -1}, {"domains": MAX_DOMAINS + 1}, {"version": 3}, {"vbds": 9}]
)
def test_bad_config(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        SynthConfig(**kwargs)  # type: ignore[arg-type]
