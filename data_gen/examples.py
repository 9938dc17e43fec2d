"""The training-example schema: one aligned (query, master) pair as a `tf.train.Example`.

Written as sharded TFRecords by `beam_pipelines.training_pairs`, read by `training.dataset`.

| feature          | type   | meaning                                                            |
|------------------|--------|--------------------------------------------------------------------|
| example_id       | bytes  | deterministic id (`<melody_id>/<kind>/<n>`): reruns do not duplicate |
| melody_id        | bytes  | the song/melody; splits are by this id, never by example           |
| split            | bytes  | train / validation / test                                          |
| source           | bytes  | where the pair comes from: `mir1k` or `catalogue`                  |
| query_kind       | bytes  | hum / whistle / tone / sung / voice                                |
| query_audio      | bytes  | int16 little-endian PCM, mono, SAMPLE_RATE, EXAMPLE_SAMPLES long   |
| master_audio     | bytes  | same format; the master audio holding the same melody              |
| query_offset_s   | float  | where the query window starts in its source performance            |
| master_offset_s  | float  | where the master window starts in the master recording             |
| tempo_factor     | float  | query tempo / master tempo (1.0 = same)                            |
| transpose        | float  | semitones the query was shifted relative to the master             |
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from data_gen import constants as C

STRING_FEATURES = ("example_id", "melody_id", "split", "source", "query_kind")
AUDIO_FEATURES = ("query_audio", "master_audio")
FLOAT_FEATURES = ("query_offset_s", "master_offset_s", "tempo_factor", "transpose")


@dataclass(frozen=True)
class PairExample:
    example_id: str
    melody_id: str
    split: str
    source: str
    query_kind: str
    query_audio: np.ndarray  # [EXAMPLE_SAMPLES] float32
    master_audio: np.ndarray  # [EXAMPLE_SAMPLES] float32
    query_offset_s: float = 0.0
    master_offset_s: float = 0.0
    tempo_factor: float = 1.0
    transpose: float = 0.0


def fit_length(audio: np.ndarray, n: int = C.EXAMPLE_SAMPLES) -> np.ndarray:
    """Crop or zero-pad [time] to exactly n samples."""
    if audio.shape[0] >= n:
        return audio[:n]
    return np.pad(audio, (0, n - audio.shape[0]))


def pcm16_bytes(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()


def pcm16_array(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32767.0


def to_tf_example(ex: PairExample) -> bytes:
    """PairExample -> serialized tf.train.Example."""
    import tensorflow as tf

    def b(v: bytes) -> tf.train.Feature:
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v]))

    def f(v: float) -> tf.train.Feature:
        return tf.train.Feature(float_list=tf.train.FloatList(value=[float(v)]))

    feats = {k: b(getattr(ex, k).encode()) for k in STRING_FEATURES}
    feats.update({k: b(pcm16_bytes(fit_length(getattr(ex, k)))) for k in AUDIO_FEATURES})
    feats.update({k: f(getattr(ex, k)) for k in FLOAT_FEATURES})
    # deterministic=True: map fields in key order, so the bytes do not depend on the process
    return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString(deterministic=True)


def from_tf_example(data: bytes) -> PairExample:
    """Serialized tf.train.Example -> PairExample (numpy; for tests and inspection)."""
    import tensorflow as tf

    ex = tf.train.Example.FromString(data)
    fm = ex.features.feature
    kw: dict = {k: fm[k].bytes_list.value[0].decode() for k in STRING_FEATURES}
    kw.update({k: pcm16_array(fm[k].bytes_list.value[0]) for k in AUDIO_FEATURES})
    kw.update({k: float(fm[k].float_list.value[0]) for k in FLOAT_FEATURES})
    return PairExample(**kw)


def feature_spec() -> dict:
    """The `tf.io.parse_example` spec (audio stays bytes; decode with `tf.io.decode_raw(x, tf.int16)`)."""
    import tensorflow as tf

    spec = {k: tf.io.FixedLenFeature([], tf.string) for k in (*STRING_FEATURES, *AUDIO_FEATURES)}
    spec.update({k: tf.io.FixedLenFeature([], tf.float32, default_value=0.0) for k in FLOAT_FEATURES})
    return spec
