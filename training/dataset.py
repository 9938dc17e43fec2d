"""tf.data input from the sharded training-pair TFRecords (schema: data_gen/examples.py).

Layout read: DATA_DIR/train/*.tfrecord.gz and DATA_DIR/validation/*.tfrecord.gz (GZIP; plain
*.tfrecord also accepted). The split is by melody id upstream; here every record's `split`
feature must equal its folder's split, otherwise reading fails with DatasetError (a mixed-up
folder would leak validation melodies into training).

Per example the expensive part -- int16 decoding and the front-end's STFT + filterbank of both
6 s clips -- runs once and is cached (in memory as float16, or on disk); every epoch then draws
fresh augmented 4 s views from the cache (`training.augment`). Elements of the training dataset:
{"query": [batch, frames, bins, 1], "master": [batch, frames, bins, 1], "label": [batch] int64
melody hash}.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from data_gen import constants as C
from data_gen.examples import feature_spec
from training import augment as A
from training.config import TrainConfig
from training.frontend import FrontendConfig, filterbank_matrix, log_power, normalize

log = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")


class DatasetError(RuntimeError):
    """The training data folder is missing, empty or inconsistent."""


DataDirs = str | Path | Sequence[str | Path]


def data_dirs(data_dir: DataDirs) -> list[Path]:
    """One data folder or several (e.g. one `earworm datagen` output per source) as a list."""
    if isinstance(data_dir, (str, Path)):
        return [Path(data_dir)]
    return [Path(d) for d in data_dir]


def list_shards(data_dir: DataDirs, split: str) -> list[str]:
    """Sorted shard paths of one split across the data folder(s); DatasetError if there are none."""
    shards: list[str] = []
    for root in data_dirs(data_dir):
        d = root / split
        shards += [str(p) for p in sorted([*d.glob("*.tfrecord.gz"), *d.glob("*.tfrecord")])]
    if not shards:
        raise DatasetError(f"no *.tfrecord(.gz) shards in {split}/ of {', '.join(map(str, data_dirs(data_dir)))}")
    return shards


def _reader(shards: list[str]) -> tf.data.Dataset:
    """Records of all shards, interleaved round-robin (deterministic), so a prefix of the stream --
    and the shuffle buffer -- mixes every shard (source) instead of draining one file after another."""
    ds = None
    for comp in ("GZIP", ""):
        files = [s for s in shards if s.endswith(".gz") == (comp == "GZIP")]
        if not files:
            continue
        part = tf.data.Dataset.from_tensor_slices(files).interleave(
            lambda f, c=comp: tf.data.TFRecordDataset(f, compression_type=c),
            cycle_length=min(len(files), 64), block_length=1)
        ds = part if ds is None else ds.concatenate(part)
    return ds


def melody_label(melody_id: tf.Tensor) -> tf.Tensor:
    """Stable int64 label of a melody id string (equal ids -> equal labels)."""
    return tf.strings.to_hash_bucket_fast(melody_id, 2**62)


def featurize_split(data_dir: DataDirs, split: str, fe: FrontendConfig, max_examples: int = 0,
                    parallel_calls: int = 2) -> tf.data.Dataset:
    """Records of one split -> {"q", "m": [clip_frames, bins] float16 log power, "label", "melody_id",
    "query_kind", "source"}; fails with DatasetError (at iteration) if a record's split differs."""
    fb = tf.constant(filterbank_matrix(fe))
    spec = feature_spec()

    def parse(serialized):
        ex = tf.io.parse_single_example(serialized, spec)
        check = tf.debugging.assert_equal(
            ex["split"], tf.constant(split),
            message=f"a record in the {split}/ folder belongs to another split")
        with tf.control_dependencies([check]):
            audio = tf.stack([tf.io.decode_raw(ex["query_audio"], tf.int16),
                              tf.io.decode_raw(ex["master_audio"], tf.int16)])
        audio = tf.cast(audio, tf.float32) / 32767.0
        audio = tf.ensure_shape(audio, [2, C.EXAMPLE_SAMPLES])
        lp = tf.cast(log_power(audio, fe, fb), tf.float16)
        return {"q": lp[0], "m": lp[1], "label": melody_label(ex["melody_id"]),
                "melody_id": ex["melody_id"], "query_kind": ex["query_kind"], "source": ex["source"]}

    ds = _reader(list_shards(data_dir, split))
    if max_examples:
        ds = ds.take(max_examples)
    return ds.map(parse, num_parallel_calls=parallel_calls, deterministic=True)


def _cached(ds: tf.data.Dataset, cache: str, cache_dir: Path | None, name: str) -> tf.data.Dataset:
    if cache == "memory":
        return ds.cache()
    if cache == "disk":
        if cache_dir is None:
            raise DatasetError("cache='disk' needs a cache directory")
        cache_dir.mkdir(parents=True, exist_ok=True)
        return ds.cache(str(cache_dir / name))
    if cache == "none":
        return ds
    raise DatasetError(f"unknown cache mode {cache!r}; use memory, disk or none")


def training_dataset(data_dir: DataDirs, cfg: TrainConfig, cache_dir: Path | None = None,
                     epoch_seed: int = 0) -> tf.data.Dataset:
    """Endless batches of augmented views of the train split (see module docstring)."""
    fe = cfg.encoder.frontend
    aug = cfg.augment
    out_frames = fe.window_frames
    clip_frames = fe.frames(C.EXAMPLE_SAMPLES)
    margin = clip_frames - out_frames
    jitter = int(round(aug.query_jitter_s * C.SAMPLE_RATE / fe.hop))
    ds = featurize_split(data_dir, "train", fe, cfg.data.max_train_examples, cfg.data.parallel_calls)
    ds = _cached(ds, cfg.data.cache, cache_dir, "train")
    ds = ds.shuffle(cfg.data.shuffle_buffer, seed=cfg.seed + 7919 * epoch_seed,
                    reshuffle_each_iteration=True).repeat()
    ds = ds.enumerate()
    base = tf.constant([cfg.seed, epoch_seed], tf.int64)

    def view(i, ex):
        seed = tf.random.experimental.stateless_fold_in(base, i)
        s = tf.unstack(tf.random.experimental.stateless_split(seed, 4))
        q = tf.cast(ex["q"], tf.float32)
        m = tf.cast(ex["m"], tf.float32)
        if aug.enabled:
            m_start = tf.random.stateless_uniform([], s[0], 0, margin + 1, dtype=tf.int32)
            q_start = m_start + tf.random.stateless_uniform([], s[1], -jitter, jitter + 1, dtype=tf.int32)
            q = A.augment_side(q, s[2], q_start, aug.query, fe)
            m = A.augment_side(m, s[3], m_start, aug.master, fe)
        else:
            q = q[margin // 2: margin // 2 + out_frames]
            m = m[margin // 2: margin // 2 + out_frames]
        return {"query": normalize(q, fe.floor_db)[..., tf.newaxis],
                "master": normalize(m, fe.floor_db)[..., tf.newaxis],
                "label": ex["label"]}

    ds = ds.map(view, num_parallel_calls=cfg.data.parallel_calls, deterministic=True)
    return ds.batch(cfg.data.batch_size, drop_remainder=True).prefetch(2)


@dataclass
class ValidationSet:
    """Centre 4 s crops of validation pairs, un-augmented: [n, frames, bins, 1] float32 each."""

    query: np.ndarray
    master: np.ndarray
    melody_ids: np.ndarray  # [n] str
    query_kinds: np.ndarray  # [n] str
    sources: np.ndarray  # [n] str

    def __len__(self) -> int:
        return int(self.query.shape[0])


def validation_set(data_dir: DataDirs, cfg: TrainConfig, split: str = "validation") -> ValidationSet:
    fe = cfg.encoder.frontend
    out_frames = fe.window_frames
    start = (fe.frames(C.EXAMPLE_SAMPLES) - out_frames) // 2
    ds = featurize_split(data_dir, split, fe, cfg.data.max_val_examples, cfg.data.parallel_calls)

    def crop(ex):
        q = normalize(tf.cast(ex["q"][start:start + out_frames], tf.float32), fe.floor_db)
        m = normalize(tf.cast(ex["m"][start:start + out_frames], tf.float32), fe.floor_db)
        return q[..., tf.newaxis], m[..., tf.newaxis], ex["melody_id"], ex["query_kind"], ex["source"]

    parts: list[list] = [[], [], [], [], []]
    try:
        for batch in ds.map(crop).batch(256):
            for p, t in zip(parts, batch):
                p.append(t.numpy())
    except tf.errors.InvalidArgumentError as e:
        raise DatasetError(f"{split}/: {e.message.splitlines()[0]}") from e
    if not parts[0]:
        raise DatasetError(f"{split}/ holds no examples")
    q, m, mel, kind, src = (np.concatenate(p) for p in parts)
    dec = np.vectorize(lambda b: b.decode())
    return ValidationSet(q, m, dec(mel), dec(kind), dec(src))


def summarize_split(data_dir: DataDirs, split: str) -> dict:
    """Counts of one split (examples, melodies, per source and query kind) for the model's metadata."""
    spec = {k: tf.io.FixedLenFeature([], tf.string) for k in ("melody_id", "query_kind", "source", "split")}
    melodies: set[str] = set()
    kinds: Counter = Counter()
    sources: Counter = Counter()
    n = 0
    for rec in _reader(list_shards(data_dir, split)).map(
            lambda s: tf.io.parse_single_example(s, spec)).batch(1024):
        n += int(rec["melody_id"].shape[0])
        melodies.update(v.decode() for v in rec["melody_id"].numpy())
        kinds.update(v.decode() for v in rec["query_kind"].numpy())
        sources.update(v.decode() for v in rec["source"].numpy())
    return {"examples": n, "melodies": len(melodies), "query_kinds": dict(kinds), "sources": dict(sources)}
