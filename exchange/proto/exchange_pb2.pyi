# ruff: noqa
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Side(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SIDE_UNSPECIFIED: _ClassVar[Side]
    BUY: _ClassVar[Side]
    SELL: _ClassVar[Side]
SIDE_UNSPECIFIED: Side
BUY: Side
SELL: Side

class SubmitOrderRequest(_message.Message):
    __slots__ = ("client_id", "seq", "symbol", "side", "price", "quantity", "stop_price", "all_or_none", "immediate_or_cancel")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    SIDE_FIELD_NUMBER: _ClassVar[int]
    PRICE_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    STOP_PRICE_FIELD_NUMBER: _ClassVar[int]
    ALL_OR_NONE_FIELD_NUMBER: _ClassVar[int]
    IMMEDIATE_OR_CANCEL_FIELD_NUMBER: _ClassVar[int]
    client_id: int
    seq: int
    symbol: str
    side: Side
    price: int
    quantity: int
    stop_price: int
    all_or_none: bool
    immediate_or_cancel: bool
    def __init__(self, client_id: _Optional[int] = ..., seq: _Optional[int] = ..., symbol: _Optional[str] = ..., side: _Optional[_Union[Side, str]] = ..., price: _Optional[int] = ..., quantity: _Optional[int] = ..., stop_price: _Optional[int] = ..., all_or_none: _Optional[bool] = ..., immediate_or_cancel: _Optional[bool] = ...) -> None: ...

class CancelRequest(_message.Message):
    __slots__ = ("client_id", "seq", "order_id", "symbol")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    client_id: int
    seq: int
    order_id: str
    symbol: str
    def __init__(self, client_id: _Optional[int] = ..., seq: _Optional[int] = ..., order_id: _Optional[str] = ..., symbol: _Optional[str] = ...) -> None: ...

class ReplaceRequest(_message.Message):
    __slots__ = ("client_id", "seq", "order_id", "quantity_delta", "new_price", "symbol")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_DELTA_FIELD_NUMBER: _ClassVar[int]
    NEW_PRICE_FIELD_NUMBER: _ClassVar[int]
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    client_id: int
    seq: int
    order_id: str
    quantity_delta: int
    new_price: int
    symbol: str
    def __init__(self, client_id: _Optional[int] = ..., seq: _Optional[int] = ..., order_id: _Optional[str] = ..., quantity_delta: _Optional[int] = ..., new_price: _Optional[int] = ..., symbol: _Optional[str] = ...) -> None: ...

class OrderEvent(_message.Message):
    __slots__ = ("kind", "order_id", "contra_order_id", "symbol", "price", "quantity", "reason", "extra")
    class ExtraEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    KIND_FIELD_NUMBER: _ClassVar[int]
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    CONTRA_ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    PRICE_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    EXTRA_FIELD_NUMBER: _ClassVar[int]
    kind: str
    order_id: str
    contra_order_id: str
    symbol: str
    price: int
    quantity: int
    reason: str
    extra: _containers.ScalarMap[str, str]
    def __init__(self, kind: _Optional[str] = ..., order_id: _Optional[str] = ..., contra_order_id: _Optional[str] = ..., symbol: _Optional[str] = ..., price: _Optional[int] = ..., quantity: _Optional[int] = ..., reason: _Optional[str] = ..., extra: _Optional[_Mapping[str, str]] = ...) -> None: ...

class OrderReply(_message.Message):
    __slots__ = ("client_id", "seq", "order_id", "events", "log_index", "duplicate", "replica_id", "unsolicited")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    LOG_INDEX_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_FIELD_NUMBER: _ClassVar[int]
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    UNSOLICITED_FIELD_NUMBER: _ClassVar[int]
    client_id: int
    seq: int
    order_id: str
    events: _containers.RepeatedCompositeFieldContainer[OrderEvent]
    log_index: int
    duplicate: bool
    replica_id: int
    unsolicited: bool
    def __init__(self, client_id: _Optional[int] = ..., seq: _Optional[int] = ..., order_id: _Optional[str] = ..., events: _Optional[_Iterable[_Union[OrderEvent, _Mapping]]] = ..., log_index: _Optional[int] = ..., duplicate: _Optional[bool] = ..., replica_id: _Optional[int] = ..., unsolicited: _Optional[bool] = ...) -> None: ...

class SessionOrder(_message.Message):
    __slots__ = ("submit", "cancel", "replace")
    SUBMIT_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    REPLACE_FIELD_NUMBER: _ClassVar[int]
    submit: SubmitOrderRequest
    cancel: CancelRequest
    replace: ReplaceRequest
    def __init__(self, submit: _Optional[_Union[SubmitOrderRequest, _Mapping]] = ..., cancel: _Optional[_Union[CancelRequest, _Mapping]] = ..., replace: _Optional[_Union[ReplaceRequest, _Mapping]] = ...) -> None: ...

class SessionRequest(_message.Message):
    __slots__ = ("orders",)
    ORDERS_FIELD_NUMBER: _ClassVar[int]
    orders: _containers.RepeatedCompositeFieldContainer[SessionOrder]
    def __init__(self, orders: _Optional[_Iterable[_Union[SessionOrder, _Mapping]]] = ...) -> None: ...

class SessionResponse(_message.Message):
    __slots__ = ("reports",)
    REPORTS_FIELD_NUMBER: _ClassVar[int]
    reports: _containers.RepeatedCompositeFieldContainer[OrderReply]
    def __init__(self, reports: _Optional[_Iterable[_Union[OrderReply, _Mapping]]] = ...) -> None: ...

class MarketDataRequest(_message.Message):
    __slots__ = ("symbols", "include_depth")
    SYMBOLS_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    symbols: _containers.RepeatedScalarFieldContainer[str]
    include_depth: bool
    def __init__(self, symbols: _Optional[_Iterable[str]] = ..., include_depth: _Optional[bool] = ...) -> None: ...

class PriceLevel(_message.Message):
    __slots__ = ("price", "quantity", "order_count")
    PRICE_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    ORDER_COUNT_FIELD_NUMBER: _ClassVar[int]
    price: int
    quantity: int
    order_count: int
    def __init__(self, price: _Optional[int] = ..., quantity: _Optional[int] = ..., order_count: _Optional[int] = ...) -> None: ...

class TradeUpdate(_message.Message):
    __slots__ = ("price", "quantity")
    PRICE_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    price: int
    quantity: int
    def __init__(self, price: _Optional[int] = ..., quantity: _Optional[int] = ...) -> None: ...

class BboUpdate(_message.Message):
    __slots__ = ("bid_price", "bid_quantity", "ask_price", "ask_quantity")
    BID_PRICE_FIELD_NUMBER: _ClassVar[int]
    BID_QUANTITY_FIELD_NUMBER: _ClassVar[int]
    ASK_PRICE_FIELD_NUMBER: _ClassVar[int]
    ASK_QUANTITY_FIELD_NUMBER: _ClassVar[int]
    bid_price: int
    bid_quantity: int
    ask_price: int
    ask_quantity: int
    def __init__(self, bid_price: _Optional[int] = ..., bid_quantity: _Optional[int] = ..., ask_price: _Optional[int] = ..., ask_quantity: _Optional[int] = ...) -> None: ...

class DepthUpdate(_message.Message):
    __slots__ = ("bids", "asks")
    BIDS_FIELD_NUMBER: _ClassVar[int]
    ASKS_FIELD_NUMBER: _ClassVar[int]
    bids: _containers.RepeatedCompositeFieldContainer[PriceLevel]
    asks: _containers.RepeatedCompositeFieldContainer[PriceLevel]
    def __init__(self, bids: _Optional[_Iterable[_Union[PriceLevel, _Mapping]]] = ..., asks: _Optional[_Iterable[_Union[PriceLevel, _Mapping]]] = ...) -> None: ...

class MarketDataUpdate(_message.Message):
    __slots__ = ("log_index", "symbol", "trade", "bbo", "depth", "conflated")
    LOG_INDEX_FIELD_NUMBER: _ClassVar[int]
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    TRADE_FIELD_NUMBER: _ClassVar[int]
    BBO_FIELD_NUMBER: _ClassVar[int]
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    CONFLATED_FIELD_NUMBER: _ClassVar[int]
    log_index: int
    symbol: str
    trade: TradeUpdate
    bbo: BboUpdate
    depth: DepthUpdate
    conflated: bool
    def __init__(self, log_index: _Optional[int] = ..., symbol: _Optional[str] = ..., trade: _Optional[_Union[TradeUpdate, _Mapping]] = ..., bbo: _Optional[_Union[BboUpdate, _Mapping]] = ..., depth: _Optional[_Union[DepthUpdate, _Mapping]] = ..., conflated: _Optional[bool] = ...) -> None: ...

class MarketDataBatch(_message.Message):
    __slots__ = ("updates", "conflated_count")
    UPDATES_FIELD_NUMBER: _ClassVar[int]
    CONFLATED_COUNT_FIELD_NUMBER: _ClassVar[int]
    updates: _containers.RepeatedCompositeFieldContainer[MarketDataUpdate]
    conflated_count: int
    def __init__(self, updates: _Optional[_Iterable[_Union[MarketDataUpdate, _Mapping]]] = ..., conflated_count: _Optional[int] = ...) -> None: ...

class BookSnapshotRequest(_message.Message):
    __slots__ = ("symbol", "levels")
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    LEVELS_FIELD_NUMBER: _ClassVar[int]
    symbol: str
    levels: int
    def __init__(self, symbol: _Optional[str] = ..., levels: _Optional[int] = ...) -> None: ...

class BookSnapshot(_message.Message):
    __slots__ = ("symbol", "bids", "asks", "last_trade_price", "applied_index", "replica_id")
    SYMBOL_FIELD_NUMBER: _ClassVar[int]
    BIDS_FIELD_NUMBER: _ClassVar[int]
    ASKS_FIELD_NUMBER: _ClassVar[int]
    LAST_TRADE_PRICE_FIELD_NUMBER: _ClassVar[int]
    APPLIED_INDEX_FIELD_NUMBER: _ClassVar[int]
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    symbol: str
    bids: _containers.RepeatedCompositeFieldContainer[PriceLevel]
    asks: _containers.RepeatedCompositeFieldContainer[PriceLevel]
    last_trade_price: int
    applied_index: int
    replica_id: int
    def __init__(self, symbol: _Optional[str] = ..., bids: _Optional[_Iterable[_Union[PriceLevel, _Mapping]]] = ..., asks: _Optional[_Iterable[_Union[PriceLevel, _Mapping]]] = ..., last_trade_price: _Optional[int] = ..., applied_index: _Optional[int] = ..., replica_id: _Optional[int] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Status(_message.Message):
    __slots__ = ("replica_id", "role", "leader_id", "leader_address", "commit_index", "applied_index", "book_digest", "state_digest", "symbols", "orders_applied", "duplicates_replayed", "replicas", "error", "recovery_snapshot_index", "recovery_bytes_done", "recovery_bytes_total", "recovery_entries_left", "instruments", "warning")
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    LEADER_ID_FIELD_NUMBER: _ClassVar[int]
    LEADER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    COMMIT_INDEX_FIELD_NUMBER: _ClassVar[int]
    APPLIED_INDEX_FIELD_NUMBER: _ClassVar[int]
    BOOK_DIGEST_FIELD_NUMBER: _ClassVar[int]
    STATE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    SYMBOLS_FIELD_NUMBER: _ClassVar[int]
    ORDERS_APPLIED_FIELD_NUMBER: _ClassVar[int]
    DUPLICATES_REPLAYED_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    RECOVERY_SNAPSHOT_INDEX_FIELD_NUMBER: _ClassVar[int]
    RECOVERY_BYTES_DONE_FIELD_NUMBER: _ClassVar[int]
    RECOVERY_BYTES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    RECOVERY_ENTRIES_LEFT_FIELD_NUMBER: _ClassVar[int]
    INSTRUMENTS_FIELD_NUMBER: _ClassVar[int]
    WARNING_FIELD_NUMBER: _ClassVar[int]
    replica_id: int
    role: str
    leader_id: int
    leader_address: str
    commit_index: int
    applied_index: int
    book_digest: str
    state_digest: str
    symbols: _containers.RepeatedScalarFieldContainer[str]
    orders_applied: int
    duplicates_replayed: int
    replicas: int
    error: str
    recovery_snapshot_index: int
    recovery_bytes_done: int
    recovery_bytes_total: int
    recovery_entries_left: int
    instruments: _containers.RepeatedScalarFieldContainer[str]
    warning: str
    def __init__(self, replica_id: _Optional[int] = ..., role: _Optional[str] = ..., leader_id: _Optional[int] = ..., leader_address: _Optional[str] = ..., commit_index: _Optional[int] = ..., applied_index: _Optional[int] = ..., book_digest: _Optional[str] = ..., state_digest: _Optional[str] = ..., symbols: _Optional[_Iterable[str]] = ..., orders_applied: _Optional[int] = ..., duplicates_replayed: _Optional[int] = ..., replicas: _Optional[int] = ..., error: _Optional[str] = ..., recovery_snapshot_index: _Optional[int] = ..., recovery_bytes_done: _Optional[int] = ..., recovery_bytes_total: _Optional[int] = ..., recovery_entries_left: _Optional[int] = ..., instruments: _Optional[_Iterable[str]] = ..., warning: _Optional[str] = ...) -> None: ...

class SnapshotRequest(_message.Message):
    __slots__ = ("requester_id",)
    REQUESTER_ID_FIELD_NUMBER: _ClassVar[int]
    requester_id: int
    def __init__(self, requester_id: _Optional[int] = ...) -> None: ...

class SnapshotChunk(_message.Message):
    __slots__ = ("index", "total_bytes", "data")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    index: int
    total_bytes: int
    data: bytes
    def __init__(self, index: _Optional[int] = ..., total_bytes: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...
