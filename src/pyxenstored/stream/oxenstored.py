"""oxenstored's live-update state dump: one import for the reader, writer, checker
and the conversion to and from migration-stream records.

The pieces live in :mod:`.oxenstored_format` (the line grammar),
:mod:`.oxenstored_check` (rules), :mod:`.oxenstored_quota` (quota settings
and their C-family names) and :mod:`.oxenstored_convert` (records); the
format is described in docs/oxenstored-format.md.
"""

from __future__ import annotations

from .oxenstored_check import RULES, DumpAnalysis, OxDiagnostic, analyse_dump, check_dump
from .oxenstored_convert import (
    DomainRing,
    DumpConversion,
    OxenstoredConversionError,
    OxenstoredExtras,
    StreamConversion,
    dump_to_records,
    records_to_dump,
)
from .oxenstored_format import (
    HEADER,
    DomLine,
    DumpLine,
    EvtchnDevLine,
    GlobalLine,
    IgnoredLine,
    OxDump,
    OxenstoredFormatError,
    OxPerm,
    SocketLine,
    StoreLine,
    WatchLine,
    format_dump,
    format_line,
    looks_like_dump,
    parse_dump,
    parse_line,
)
from .oxenstored_quota import OxenstoredQuota, format_config, parse_config, quota_from_c, quota_to_c

__all__ = [
    "HEADER",
    "RULES",
    "DomLine",
    "DomainRing",
    "DumpAnalysis",
    "DumpConversion",
    "DumpLine",
    "EvtchnDevLine",
    "GlobalLine",
    "IgnoredLine",
    "OxDiagnostic",
    "OxDump",
    "OxPerm",
    "OxenstoredConversionError",
    "OxenstoredExtras",
    "OxenstoredFormatError",
    "OxenstoredQuota",
    "SocketLine",
    "StoreLine",
    "StreamConversion",
    "WatchLine",
    "analyse_dump",
    "check_dump",
    "dump_to_records",
    "format_config",
    "format_dump",
    "format_line",
    "looks_like_dump",
    "parse_config",
    "parse_dump",
    "parse_line",
    "quota_from_c",
    "quota_to_c",
    "records_to_dump",
]
