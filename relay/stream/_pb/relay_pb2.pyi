import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SubscribeRequest(_message.Message):
    __slots__ = ("modules", "cpos", "object_ids", "subscriptions", "after_seq", "since", "earliest", "latest", "consumer")
    MODULES_FIELD_NUMBER: _ClassVar[int]
    CPOS_FIELD_NUMBER: _ClassVar[int]
    OBJECT_IDS_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIPTIONS_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    EARLIEST_FIELD_NUMBER: _ClassVar[int]
    LATEST_FIELD_NUMBER: _ClassVar[int]
    CONSUMER_FIELD_NUMBER: _ClassVar[int]
    modules: _containers.RepeatedScalarFieldContainer[str]
    cpos: _containers.RepeatedScalarFieldContainer[str]
    object_ids: _containers.RepeatedScalarFieldContainer[str]
    subscriptions: _containers.RepeatedScalarFieldContainer[str]
    after_seq: int
    since: _timestamp_pb2.Timestamp
    earliest: bool
    latest: bool
    consumer: str
    def __init__(self, modules: _Optional[_Iterable[str]] = ..., cpos: _Optional[_Iterable[str]] = ..., object_ids: _Optional[_Iterable[str]] = ..., subscriptions: _Optional[_Iterable[str]] = ..., after_seq: _Optional[int] = ..., since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., earliest: _Optional[bool] = ..., latest: _Optional[bool] = ..., consumer: _Optional[str] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("seq", "module", "action", "country_code", "party_id", "object_id", "evse_uid", "connector_id", "last_updated", "received_at", "body", "object", "origin", "request_id", "truncated", "subscription")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    MODULE_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    COUNTRY_CODE_FIELD_NUMBER: _ClassVar[int]
    PARTY_ID_FIELD_NUMBER: _ClassVar[int]
    OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    EVSE_UID_FIELD_NUMBER: _ClassVar[int]
    CONNECTOR_ID_FIELD_NUMBER: _ClassVar[int]
    LAST_UPDATED_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_AT_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    OBJECT_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIPTION_FIELD_NUMBER: _ClassVar[int]
    seq: int
    module: str
    action: str
    country_code: str
    party_id: str
    object_id: str
    evse_uid: str
    connector_id: str
    last_updated: _timestamp_pb2.Timestamp
    received_at: _timestamp_pb2.Timestamp
    body: bytes
    object: bytes
    origin: str
    request_id: str
    truncated: bool
    subscription: str
    def __init__(self, seq: _Optional[int] = ..., module: _Optional[str] = ..., action: _Optional[str] = ..., country_code: _Optional[str] = ..., party_id: _Optional[str] = ..., object_id: _Optional[str] = ..., evse_uid: _Optional[str] = ..., connector_id: _Optional[str] = ..., last_updated: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., received_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., body: _Optional[bytes] = ..., object: _Optional[bytes] = ..., origin: _Optional[str] = ..., request_id: _Optional[str] = ..., truncated: _Optional[bool] = ..., subscription: _Optional[str] = ...) -> None: ...

class CommitRequest(_message.Message):
    __slots__ = ("consumer", "seq")
    CONSUMER_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    consumer: str
    seq: int
    def __init__(self, consumer: _Optional[str] = ..., seq: _Optional[int] = ...) -> None: ...

class CommitResponse(_message.Message):
    __slots__ = ("seq",)
    SEQ_FIELD_NUMBER: _ClassVar[int]
    seq: int
    def __init__(self, seq: _Optional[int] = ...) -> None: ...

class GetObjectRequest(_message.Message):
    __slots__ = ("module", "country_code", "party_id", "id")
    MODULE_FIELD_NUMBER: _ClassVar[int]
    COUNTRY_CODE_FIELD_NUMBER: _ClassVar[int]
    PARTY_ID_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    module: str
    country_code: str
    party_id: str
    id: str
    def __init__(self, module: _Optional[str] = ..., country_code: _Optional[str] = ..., party_id: _Optional[str] = ..., id: _Optional[str] = ...) -> None: ...

class Object(_message.Message):
    __slots__ = ("module", "country_code", "party_id", "id", "object", "last_updated", "last_seq")
    MODULE_FIELD_NUMBER: _ClassVar[int]
    COUNTRY_CODE_FIELD_NUMBER: _ClassVar[int]
    PARTY_ID_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    OBJECT_FIELD_NUMBER: _ClassVar[int]
    LAST_UPDATED_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    module: str
    country_code: str
    party_id: str
    id: str
    object: bytes
    last_updated: _timestamp_pb2.Timestamp
    last_seq: int
    def __init__(self, module: _Optional[str] = ..., country_code: _Optional[str] = ..., party_id: _Optional[str] = ..., id: _Optional[str] = ..., object: _Optional[bytes] = ..., last_updated: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_seq: _Optional[int] = ...) -> None: ...

class ListObjectsRequest(_message.Message):
    __slots__ = ("module", "cpos", "page_size", "page_token")
    MODULE_FIELD_NUMBER: _ClassVar[int]
    CPOS_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    module: str
    cpos: _containers.RepeatedScalarFieldContainer[str]
    page_size: int
    page_token: str
    def __init__(self, module: _Optional[str] = ..., cpos: _Optional[_Iterable[str]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListObjectsResponse(_message.Message):
    __slots__ = ("objects", "next_page_token")
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    objects: _containers.RepeatedCompositeFieldContainer[Object]
    next_page_token: str
    def __init__(self, objects: _Optional[_Iterable[_Union[Object, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...
