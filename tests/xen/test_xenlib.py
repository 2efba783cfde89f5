"""The Xen libraries' bindings: structure layouts from xenctrl.h, and what is missing.

``xc_dominfo_t`` vectors are built by hand from Xen 4.17's ``xenctrl.h``
(``uint32_t domid; uint32_t ssidref; unsigned int dying:1, crashed:1,
shutdown:1, paused:1, blocked:1, running:1, hvm:1, debugged:1, xenstore:1,
hap:1; unsigned int shutdown_reason; unsigned long nr_pages; ...``, 112
bytes on x86_64); one test also checks the layout against the installed
header by compiling a program that fills the structure.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from tests.util import require

from pyxenstored.server.xenlib import (
    XC_DOMINFO_LAYOUTS,
    XM_STATE_DEAD,
    XM_STATE_DYING,
    XM_STATE_EXIST,
    XM_STATE_SHUTDOWN,
    HypervisorDominfo,
    Library,
    XenLib,
    XenLibraryError,
    parse_xc_dominfo,
    parse_xenmanage,
)

LAYOUT = XC_DOMINFO_LAYOUTS["4.17"]
# The bit-fields' positions in xenctrl.h's declaration order.
DYING, CRASHED, SHUTDOWN, PAUSED, BLOCKED, RUNNING, HVM, DEBUGGED, XENSTORE, HAP = (
    1 << i for i in range(10)
)
HEADER = Path("/usr/include/xenctrl.h")


def dominfo(domid: int, flags: int, ssidref: int = 0, reason: int = 0) -> bytes:
    """An x86_64 ``xc_dominfo_t``: domid, ssidref, the bit-field word, shutdown_reason, the rest."""
    head = struct.pack("<IIII", domid, ssidref, flags, reason)
    rest = struct.pack("<QQQQQQQ", 1000, 0, 0, 0, 0xFEFF, 123456, 4096)  # nr_pages .. max_memkb
    return (head + rest).ljust(112, b"\xaa")  # vcpus, handle, cpupool, arch_config: noise


@pytest.mark.parametrize(
    ("flags", "expect"),
    [
        (0, HypervisorDominfo(7)),
        (RUNNING | HVM | HAP, HypervisorDominfo(7)),
        (DYING, HypervisorDominfo(7, dying=True)),
        (CRASHED, HypervisorDominfo(7, shutdown=True)),
        (SHUTDOWN | PAUSED, HypervisorDominfo(7, shutdown=True)),
        (XENSTORE | BLOCKED | DEBUGGED, HypervisorDominfo(7, xenstore=True)),
        (
            DYING | SHUTDOWN | XENSTORE,
            HypervisorDominfo(7, dying=True, shutdown=True, xenstore=True),
        ),
    ],
)
def test_xc_dominfo_417_bits(flags: int, expect: HypervisorDominfo) -> None:
    assert parse_xc_dominfo(LAYOUT, dominfo(7, flags, ssidref=0xFFFFFFFF, reason=3)) == expect


def test_xc_dominfo_domid_and_short_buffer() -> None:
    assert parse_xc_dominfo(LAYOUT, dominfo(0x7FEF, 0)).domid == 0x7FEF
    with pytest.raises(ValueError):
        parse_xc_dominfo(LAYOUT, dominfo(1, 0)[:10])


def test_layout_is_the_installed_headers(tmp_path: Path) -> None:
    """Fill xc_dominfo_t in C with libxen-dev's xenctrl.h; read it back with our layout."""
    require(HEADER.exists(), "libxen-dev (xenctrl.h)")
    gcc = shutil.which("gcc")
    require(gcc is not None, "gcc")
    assert gcc is not None
    src = tmp_path / "fill.c"
    src.write_text(
        "#include <stdio.h>\n#include <string.h>\n#include <xenctrl.h>\n"
        "static void dump(xc_dominfo_t *d) {\n"
        "  const unsigned char *p = (const unsigned char *)d;\n"
        '  for (size_t i = 0; i < sizeof(*d); i++) printf("%02x", p[i]);\n'
        '  printf("\\n");\n}\n'
        "int main(void) {\n  xc_dominfo_t d;\n"
        "  memset(&d, 0, sizeof(d)); d.domid = 0x1234; d.dying = 1; d.hap = 1; dump(&d);\n"
        "  memset(&d, 0, sizeof(d)); d.domid = 5; d.crashed = 1; d.paused = 1; dump(&d);\n"
        "  memset(&d, 0, sizeof(d)); d.domid = 6; d.shutdown = 1; d.shutdown_reason = 9;"
        " d.ssidref = ~0u; dump(&d);\n"
        "  memset(&d, 0, sizeof(d)); d.domid = 1; d.xenstore = 1; d.running = 1; dump(&d);\n"
        "  memset(&d, 0xff, sizeof(d)); d.domid = 2; d.dying = 0; d.crashed = 0;"
        " d.shutdown = 0; d.xenstore = 0; dump(&d);\n"
        "  return 0;\n}\n"
    )
    exe = tmp_path / "fill"
    subprocess.run([gcc, "-o", str(exe), str(src)], check=True, capture_output=True)
    lines = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout.split()
    got = [parse_xc_dominfo(LAYOUT, bytes.fromhex(line)) for line in lines]
    assert got == [
        HypervisorDominfo(0x1234, dying=True),
        HypervisorDominfo(5, shutdown=True),
        HypervisorDominfo(6, shutdown=True),
        HypervisorDominfo(1, xenstore=True),
        HypervisorDominfo(2),
    ]
    if ctypes.sizeof(ctypes.c_void_p) == 8:
        assert {len(line) // 2 for line in lines} == {LAYOUT.size}


@pytest.mark.parametrize(
    ("state", "caps", "expect"),
    [
        (XM_STATE_EXIST, 0, HypervisorDominfo(3, unique_id=0xFEDCBA9876543210)),
        (
            XM_STATE_EXIST | XM_STATE_SHUTDOWN,
            0,
            HypervisorDominfo(3, shutdown=True, unique_id=0xFEDCBA9876543210),
        ),
        (
            XM_STATE_EXIST | XM_STATE_DYING,
            4,
            HypervisorDominfo(3, dying=True, xenstore=True, unique_id=0xFEDCBA9876543210),
        ),
        (XM_STATE_EXIST | XM_STATE_DEAD, 0, None),
        (XM_STATE_DEAD, 0, None),
        (0, 0, None),
    ],
)
def test_xenmanage_states(state: int, caps: int, expect: HypervisorDominfo | None) -> None:
    assert parse_xenmanage(3, state, caps, 0xFEDCBA9876543210) == expect


def _absent(soname: str, package: str, function: str) -> Library:
    return Library(soname, package, ((function, ctypes.c_int, ()),))


def test_a_missing_library_is_named_with_its_package() -> None:
    with pytest.raises(XenLibraryError) as info:
        XenLib(evtchn=_absent("libxenevtchn-absent.so.1", "libxenevtchn1", "xenevtchn_absent"))
    assert str(info.value) == (
        "libxenevtchn-absent.so.1 not found: install the Debian package libxenevtchn1"
    )


def test_a_library_without_a_function_is_named() -> None:
    require(ctypes.util.find_library("xenevtchn") is not None, "libxenevtchn1")
    with pytest.raises(XenLibraryError) as info:
        XenLib(evtchn=_absent("libxenevtchn.so.1", "libxenevtchn1", "xenevtchn_from_the_future"))
    assert "libxenevtchn.so.1 has no xenevtchn_from_the_future" in str(info.value)


def test_a_libxenctrl_of_unknown_layout_is_refused() -> None:
    """Neither libxenmanage nor a libxenctrl whose xc_dominfo_t is known: a clear refusal."""
    require(ctypes.util.find_library("xenevtchn") is not None, "libxenevtchn1")
    require(ctypes.util.find_library("xengnttab") is not None, "libxengnttab1")
    with pytest.raises(XenLibraryError) as info:
        XenLib(
            manage=_absent("libxenmanage-absent.so.1", "libxenmanage1", "xenmanage_absent"),
            ctrl_versions=("9.99",),
        )
    message = str(info.value)
    assert "libxenctrl.so.9.99 (Debian package libxenmisc9.99)" in message
    assert "libxenmanage.so.1" in message
    assert "\n" not in message
