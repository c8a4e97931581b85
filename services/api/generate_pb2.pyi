from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GenerateRequest(_message.Message):
    __slots__ = ("question", "k", "max_new_tokens")
    QUESTION_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    question: str
    k: int
    max_new_tokens: int
    def __init__(self, question: _Optional[str] = ..., k: _Optional[int] = ..., max_new_tokens: _Optional[int] = ...) -> None: ...

class RetrievedChunk(_message.Message):
    __slots__ = ("chunk_id", "score", "rank")
    CHUNK_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    chunk_id: str
    score: float
    rank: int
    def __init__(self, chunk_id: _Optional[str] = ..., score: _Optional[float] = ..., rank: _Optional[int] = ...) -> None: ...

class CacheStats(_message.Message):
    __slots__ = ("policy", "prompt_tokens", "prefill_tokens", "reused_tokens", "chunk_hits", "chunk_misses", "ttft_ms", "total_ms", "new_tokens")
    class ChunkHitsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    POLICY_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PREFILL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    REUSED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CHUNK_HITS_FIELD_NUMBER: _ClassVar[int]
    CHUNK_MISSES_FIELD_NUMBER: _ClassVar[int]
    TTFT_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    policy: str
    prompt_tokens: int
    prefill_tokens: int
    reused_tokens: int
    chunk_hits: _containers.ScalarMap[str, int]
    chunk_misses: int
    ttft_ms: float
    total_ms: float
    new_tokens: int
    def __init__(self, policy: _Optional[str] = ..., prompt_tokens: _Optional[int] = ..., prefill_tokens: _Optional[int] = ..., reused_tokens: _Optional[int] = ..., chunk_hits: _Optional[_Mapping[str, int]] = ..., chunk_misses: _Optional[int] = ..., ttft_ms: _Optional[float] = ..., total_ms: _Optional[float] = ..., new_tokens: _Optional[int] = ...) -> None: ...

class GenerateSummary(_message.Message):
    __slots__ = ("chunks", "answer", "cache")
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    CACHE_FIELD_NUMBER: _ClassVar[int]
    chunks: _containers.RepeatedCompositeFieldContainer[RetrievedChunk]
    answer: str
    cache: CacheStats
    def __init__(self, chunks: _Optional[_Iterable[_Union[RetrievedChunk, _Mapping]]] = ..., answer: _Optional[str] = ..., cache: _Optional[_Union[CacheStats, _Mapping]] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("text", "summary")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    text: str
    summary: GenerateSummary
    def __init__(self, text: _Optional[str] = ..., summary: _Optional[_Union[GenerateSummary, _Mapping]] = ...) -> None: ...
