from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PcmEncoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PCM_ENCODING_UNSPECIFIED: _ClassVar[PcmEncoding]
    PCM_ENCODING_S16LE: _ClassVar[PcmEncoding]
    PCM_ENCODING_F32LE: _ClassVar[PcmEncoding]

class NoMatchReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NO_MATCH_REASON_UNSPECIFIED: _ClassVar[NoMatchReason]
    NO_MATCH_REASON_BELOW_THRESHOLD: _ClassVar[NoMatchReason]
    NO_MATCH_REASON_NO_MELODY: _ClassVar[NoMatchReason]
PCM_ENCODING_UNSPECIFIED: PcmEncoding
PCM_ENCODING_S16LE: PcmEncoding
PCM_ENCODING_F32LE: PcmEncoding
NO_MATCH_REASON_UNSPECIFIED: NoMatchReason
NO_MATCH_REASON_BELOW_THRESHOLD: NoMatchReason
NO_MATCH_REASON_NO_MELODY: NoMatchReason

class RawPcm(_message.Message):
    __slots__ = ("data", "sample_rate_hz", "channels", "encoding")
    DATA_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_HZ_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    sample_rate_hz: int
    channels: int
    encoding: PcmEncoding
    def __init__(self, data: _Optional[bytes] = ..., sample_rate_hz: _Optional[int] = ..., channels: _Optional[int] = ..., encoding: _Optional[_Union[PcmEncoding, str]] = ...) -> None: ...

class Audio(_message.Message):
    __slots__ = ("encoded", "pcm")
    ENCODED_FIELD_NUMBER: _ClassVar[int]
    PCM_FIELD_NUMBER: _ClassVar[int]
    encoded: bytes
    pcm: RawPcm
    def __init__(self, encoded: _Optional[bytes] = ..., pcm: _Optional[_Union[RawPcm, _Mapping]] = ...) -> None: ...

class IdentifyRequest(_message.Message):
    __slots__ = ("audio", "top_k", "include_pitch")
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_PITCH_FIELD_NUMBER: _ClassVar[int]
    audio: Audio
    top_k: int
    include_pitch: bool
    def __init__(self, audio: _Optional[_Union[Audio, _Mapping]] = ..., top_k: _Optional[int] = ..., include_pitch: _Optional[bool] = ...) -> None: ...

class PitchTrack(_message.Message):
    __slots__ = ("start_seconds", "hop_seconds", "midi", "source")
    START_SECONDS_FIELD_NUMBER: _ClassVar[int]
    HOP_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MIDI_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    start_seconds: float
    hop_seconds: float
    midi: _containers.RepeatedScalarFieldContainer[float]
    source: str
    def __init__(self, start_seconds: _Optional[float] = ..., hop_seconds: _Optional[float] = ..., midi: _Optional[_Iterable[float]] = ..., source: _Optional[str] = ...) -> None: ...

class Match(_message.Message):
    __slots__ = ("track_id", "title", "artist", "score", "offset_seconds", "rank", "tempo_ratio", "master_pitch")
    TRACK_ID_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    ARTIST_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_SECONDS_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    TEMPO_RATIO_FIELD_NUMBER: _ClassVar[int]
    MASTER_PITCH_FIELD_NUMBER: _ClassVar[int]
    track_id: str
    title: str
    artist: str
    score: float
    offset_seconds: float
    rank: int
    tempo_ratio: float
    master_pitch: PitchTrack
    def __init__(self, track_id: _Optional[str] = ..., title: _Optional[str] = ..., artist: _Optional[str] = ..., score: _Optional[float] = ..., offset_seconds: _Optional[float] = ..., rank: _Optional[int] = ..., tempo_ratio: _Optional[float] = ..., master_pitch: _Optional[_Union[PitchTrack, _Mapping]] = ...) -> None: ...

class MelodyQuality(_message.Message):
    __slots__ = ("voiced_seconds", "voiced_fraction", "pitch_range_semitones", "distinct_notes", "phrase_seconds", "explanation")
    VOICED_SECONDS_FIELD_NUMBER: _ClassVar[int]
    VOICED_FRACTION_FIELD_NUMBER: _ClassVar[int]
    PITCH_RANGE_SEMITONES_FIELD_NUMBER: _ClassVar[int]
    DISTINCT_NOTES_FIELD_NUMBER: _ClassVar[int]
    PHRASE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    EXPLANATION_FIELD_NUMBER: _ClassVar[int]
    voiced_seconds: float
    voiced_fraction: float
    pitch_range_semitones: float
    distinct_notes: int
    phrase_seconds: float
    explanation: str
    def __init__(self, voiced_seconds: _Optional[float] = ..., voiced_fraction: _Optional[float] = ..., pitch_range_semitones: _Optional[float] = ..., distinct_notes: _Optional[int] = ..., phrase_seconds: _Optional[float] = ..., explanation: _Optional[str] = ...) -> None: ...

class IdentifyResponse(_message.Message):
    __slots__ = ("matches", "no_match", "no_match_threshold", "model_version", "index_version", "audio_seconds", "no_match_reason", "melody", "query_pitch")
    MATCHES_FIELD_NUMBER: _ClassVar[int]
    NO_MATCH_FIELD_NUMBER: _ClassVar[int]
    NO_MATCH_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    INDEX_VERSION_FIELD_NUMBER: _ClassVar[int]
    AUDIO_SECONDS_FIELD_NUMBER: _ClassVar[int]
    NO_MATCH_REASON_FIELD_NUMBER: _ClassVar[int]
    MELODY_FIELD_NUMBER: _ClassVar[int]
    QUERY_PITCH_FIELD_NUMBER: _ClassVar[int]
    matches: _containers.RepeatedCompositeFieldContainer[Match]
    no_match: bool
    no_match_threshold: float
    model_version: str
    index_version: str
    audio_seconds: float
    no_match_reason: NoMatchReason
    melody: MelodyQuality
    query_pitch: PitchTrack
    def __init__(self, matches: _Optional[_Iterable[_Union[Match, _Mapping]]] = ..., no_match: _Optional[bool] = ..., no_match_threshold: _Optional[float] = ..., model_version: _Optional[str] = ..., index_version: _Optional[str] = ..., audio_seconds: _Optional[float] = ..., no_match_reason: _Optional[_Union[NoMatchReason, str]] = ..., melody: _Optional[_Union[MelodyQuality, _Mapping]] = ..., query_pitch: _Optional[_Union[PitchTrack, _Mapping]] = ...) -> None: ...

class StreamIdentifyRequest(_message.Message):
    __slots__ = ("config", "audio_chunk")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    AUDIO_CHUNK_FIELD_NUMBER: _ClassVar[int]
    config: StreamConfig
    audio_chunk: bytes
    def __init__(self, config: _Optional[_Union[StreamConfig, _Mapping]] = ..., audio_chunk: _Optional[bytes] = ...) -> None: ...

class StreamConfig(_message.Message):
    __slots__ = ("sample_rate_hz", "channels", "encoding", "top_k", "interim_interval_seconds", "include_pitch")
    SAMPLE_RATE_HZ_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    INTERIM_INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_PITCH_FIELD_NUMBER: _ClassVar[int]
    sample_rate_hz: int
    channels: int
    encoding: PcmEncoding
    top_k: int
    interim_interval_seconds: float
    include_pitch: bool
    def __init__(self, sample_rate_hz: _Optional[int] = ..., channels: _Optional[int] = ..., encoding: _Optional[_Union[PcmEncoding, str]] = ..., top_k: _Optional[int] = ..., interim_interval_seconds: _Optional[float] = ..., include_pitch: _Optional[bool] = ...) -> None: ...

class StreamIdentifyResponse(_message.Message):
    __slots__ = ("result", "is_final")
    RESULT_FIELD_NUMBER: _ClassVar[int]
    IS_FINAL_FIELD_NUMBER: _ClassVar[int]
    result: IdentifyResponse
    is_final: bool
    def __init__(self, result: _Optional[_Union[IdentifyResponse, _Mapping]] = ..., is_final: _Optional[bool] = ...) -> None: ...
