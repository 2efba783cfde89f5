"""What the store knows of one client connection.

Its domain, privilege, watches and open transactions; the server owns the
socket or ring behind it.
"""

from __future__ import annotations

from .domain import Domain
from .features import SUPPORTED_FEATURES
from .transaction import Transaction
from .watch import Watch


class Connection:
    """What the store knows of one client connection."""

    __slots__ = (
        "conn_id",
        "domid",
        "is_socket",
        "privileged",
        "seq",
        "watches",
        "transactions",
        "next_tx_id",
        "domain",
        "limited",
        "busy_since",
    )

    def __init__(
        self, conn_id: int, domid: int, is_socket: bool, privileged: bool, seq: int
    ) -> None:
        self.conn_id = conn_id
        self.domid = domid
        self.is_socket = is_socket
        self.privileged = privileged
        self.seq = seq
        self.watches: dict[tuple[str, bytes], Watch] = {}
        self.transactions: dict[int, Transaction] = {}
        self.next_tx_id = 1
        # Socket connections have no domain record: no quota, all features.
        # Both are set together by attach(); CONTROL check compares them.
        self.domain: Domain | None = None
        # The domain whose quota applies, or None (privileged or socket):
        # an attribute rather than a property, as every write asks.
        self.limited: Domain | None = None
        # Clock reading when the connection last went from no transaction to
        # one (C's ta_start_time); 0.0 when unknown (restored transactions).
        self.busy_since = 0.0

    @property
    def features(self) -> int:
        return SUPPORTED_FEATURES if self.domain is None else self.domain.features

    def attach(self, domain: Domain) -> None:
        """Give the connection its domain record (and, unless privileged, its quota)."""
        self.domain = domain
        self.limited = None if self.privileged else domain
