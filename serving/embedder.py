"""Loading an exported encoder and embedding audio with it.

An exported model is a SavedModel directory with an `embed` signature
(`audio`: float32 [batch, WINDOW_SAMPLES] at SAMPLE_RATE -> `embedding`: float32 [batch, dim],
unit-norm) and a `metadata.json` beside `saved_model.pb` (see `training.export`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from data_gen import constants as C
from data_gen.windows import cut_query_views, cut_windows, tempo_fraction, view_window_hop, window_starts
from serving.frontend import NumpyFrontend
from serving.retrieval_types import QueryEmbedding

log = logging.getLogger(__name__)

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "default_model"
"""The shipped encoder (package data: also there in an installed wheel)."""
METADATA_FILE = "metadata.json"
MODEL_FORMAT = "earworm-encoder/1"
SIGNATURE = "embed"
LOG_POWER_SIGNATURE = "log_power"
EMBED_LOG_POWER_SIGNATURE = "embed_log_power"
BODY_TFLITE_FILE = "body_int8.tflite"
"""The `embed_log_power` half as a LiteRT (TFLite) flatbuffer with int8 weights (dynamic-range
quantization), written beside the SavedModel by `training.export`: 2.6x faster on this CPU than the
SavedModel (22 query windows: 26 -> 10 ms), embeddings within cosine 0.999 of it."""
TFLITE_BATCH = 4
"""Windows per LiteRT call: each interpreter keeps an arena for the largest batch it ran
(about 13 MB at 16 windows, 51 MB at 64). On its own the body costs the same per window at 4, 8 or 16
(0.38-0.41 ms, 208 windows); inside a request, after the melody gate, the front-end and the rest have
left the caches cold, 4 beats 16 by 3.4 ms per 10 s query (the whole Identify handler 33.9 against
37.3 ms, three alternated runs of 150 requests each, 2026-12-04): a 4-window arena stays in the
core's cache."""
RUNTIMES = ("auto", "tflite", "tensorflow")
RUNTIME_ENV = "EARWORM_EMBEDDER_RUNTIME"
"""Environment variable: the default `Embedder` runtime of every command (servers, indexers, evaluation)."""


def single_threaded_tensorflow() -> bool:
    """One thread in each of this process's TensorFlow pools (intra-op and inter-op), set before
    TensorFlow starts; False (nothing changed) when it has already started with other pool sizes.

    For a server: its parallelism is between requests (worker threads, `serve --processes`), and the
    only TensorFlow work in a request is the front-end (~2 ms; LiteRT runs the body on one thread of
    the caller's). The default pools (one thread per core each, in every process) only add hand-offs
    and spinning threads: measured 2026-12-05, 3 processes and 4 clients at 10k tracks, 25.3-26.7
    against 26.7-27.9 ms of CPU per request, 71-75 against 66-71 req/s (README)."""
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # TensorFlow already started in this process with other pools (a caller's own use)
        return False
    return True


class ModelError(RuntimeError):
    """The model directory is missing, incomplete or incompatible with this code."""


@dataclass(frozen=True)
class ModelMetadata:
    version: str
    sample_rate: int
    window_samples: int
    embedding_dim: int
    raw: dict

    @staticmethod
    def read(model_dir: str | Path) -> "ModelMetadata":
        path = Path(model_dir) / METADATA_FILE
        if not path.is_file():
            raise ModelError(f"{model_dir} is not an exported Earworm model: {METADATA_FILE} missing")
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ModelError(f"{path}: invalid JSON ({e})") from e
        if raw.get("format") != MODEL_FORMAT:
            raise ModelError(f"{path}: format {raw.get('format')!r}, expected {MODEL_FORMAT!r}")
        md = ModelMetadata(raw["version"], int(raw["sample_rate"]), int(raw["window_samples"]),
                           int(raw["embedding_dim"]), raw)
        if md.sample_rate != C.SAMPLE_RATE or md.window_samples != C.WINDOW_SAMPLES:
            raise ModelError(
                f"{model_dir}: model expects {md.window_samples} samples at {md.sample_rate} Hz; this "
                f"code uses {C.WINDOW_SAMPLES} at {C.SAMPLE_RATE} Hz"
            )
        return md


class Embedder:
    """Embeds windows with an exported model; thread-safe, loads the SavedModel once.

    A model exported with the `log_power` and `embed_log_power` signatures (every export since
    2026-12-04; `training.export.refresh_signatures` adds them to an older one) is run in two halves:
    the front-end once over each whole recording (a query's tempo view, a master), its windows sliced
    from that spectrogram, then the body over all windows in one batch. Overlapping windows then share
    their spectrogram frames instead of computing each frame up to four times. Windows that do not start
    on a frame boundary (the end-aligned last one) or that are shorter than a window get their own
    front-end pass. Older exports use `embed` on raw windows.

    The body runs on LiteRT with int8 weights (`BODY_TFLITE_FILE`, single-threaded interpreters, one
    per concurrent call, the most recently used first) where the export has that file, else on the
    SavedModel, and the front-end on SciPy (`serving.frontend`, checked against the signature at load):
    `runtime` "auto" (that choice), "tflite" (refuse an export without the LiteRT body) or "tensorflow"
    (always the SavedModel: the exact float32 body that training validates, and its front-end); None
    reads `RUNTIME_ENV` (default "auto"). Index masters and queries with the same runtime."""

    def __init__(self, model_dir: str | Path, batch_size: int = 64, runtime: str | None = None):
        import tensorflow as tf

        runtime = runtime or os.environ.get(RUNTIME_ENV) or "auto"
        if runtime not in RUNTIMES:
            raise ValueError(f"unknown embedder runtime {runtime!r}; choose from {', '.join(RUNTIMES)}")

        self.model_dir = Path(model_dir)
        self.metadata = ModelMetadata.read(self.model_dir)
        try:
            self._loaded = tf.saved_model.load(str(self.model_dir))
            self._fn = self._loaded.signatures[SIGNATURE]
        except (OSError, KeyError, ValueError) as e:
            raise ModelError(f"cannot load the SavedModel in {self.model_dir}: {e}") from e
        sigs = self._loaded.signatures
        self._log_power_fn = sigs.get(LOG_POWER_SIGNATURE)  # None for exports made before the split
        self._body_fn = sigs.get(EMBED_LOG_POWER_SIGNATURE)
        frontend = self.metadata.raw.get("config", {}).get("frontend", {})
        self._frame_hop = int(frontend.get("hop", 0))
        self._n_fft = int(frontend.get("n_fft", 0))
        self.batch_size = batch_size
        self._frontend = None if self._log_power_fn is None or runtime == "tensorflow" else (
            NumpyFrontend.for_signature(self._log_power_fn, self._n_fft, self._frame_hop))
        self._tflite_body = self._read_tflite_body(runtime)
        self._runners: list[tuple[Any, Any]] = []  # idle LiteRT interpreters and their runners
        self._runners_lock = threading.Lock()
        log.info("loaded model %s from %s (body on %s)%s", self.version, self.model_dir, self.runtime,
                 "" if self.splits_frontend else " (no front-end signature: windows embedded one by one)")

    def _read_tflite_body(self, runtime: str) -> bytes | None:
        if runtime == "tensorflow":
            return None
        path = self.model_dir / BODY_TFLITE_FILE
        if self._body_fn is not None and path.is_file():
            return path.read_bytes()
        if runtime == "tflite":
            raise ModelError(f"{self.model_dir} has no {BODY_TFLITE_FILE} (export it again, or "
                             "`python -m training.export --add-tflite MODEL_DIR`)")
        return None

    @property
    def runtime(self) -> str:
        """What runs the body: "tflite-int8" or "tensorflow"."""
        return "tflite-int8" if self._tflite_body is not None else "tensorflow"

    @contextlib.contextmanager
    def _tflite_runner(self):
        """A LiteRT signature runner for the caller's use alone (an interpreter is not safe to share
        between threads): the one returned last, else a new one. Last in, first out: a server's worker
        threads take turns on requests, and the most recently used interpreter's weights and arena are the
        ones still in the core's cache; one interpreter per thread would let each go cold between its
        turns. There are never more interpreters than calls at once."""
        with self._runners_lock:
            runner = self._runners.pop() if self._runners else None
        if runner is None:
            from ai_edge_litert.interpreter import Interpreter

            interpreter = Interpreter(model_content=self._tflite_body, num_threads=1)
            runner = (interpreter, interpreter.get_signature_runner())  # the runner needs its interpreter alive
        try:
            yield runner[1]
        finally:
            with self._runners_lock:
                self._runners.append(runner)

    @property
    def version(self) -> str:
        return self.metadata.version

    @property
    def dim(self) -> int:
        return self.metadata.embedding_dim

    @property
    def splits_frontend(self) -> bool:
        """Whether windows' spectrograms are sliced from one front-end pass per recording."""
        return self._log_power_fn is not None and self._body_fn is not None and self._frame_hop > 0

    def embed_windows(self, windows: np.ndarray) -> np.ndarray:
        """[n, WINDOW_SAMPLES] float32 -> [n, dim] float32 unit-norm embeddings."""
        if windows.ndim != 2 or windows.shape[1] != C.WINDOW_SAMPLES:
            raise ValueError(f"windows must be [n, {C.WINDOW_SAMPLES}], got {windows.shape}")
        return self._batched(self._fn, "audio", windows)

    def _batched(self, fn, name: str, x: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        out = [fn(**{name: tf.constant(x[i : i + self.batch_size], dtype=tf.float32)})["embedding"].numpy()
               for i in range(0, x.shape[0], self.batch_size)]
        if not out:
            return np.zeros((0, self.dim), np.float32)
        return np.concatenate(out).astype(np.float32)

    # -- the two halves ----------------------------------------------------------------------------
    def log_power(self, audio: np.ndarray) -> np.ndarray:
        """[time] or [batch, time] float32 -> the front-end's log filterbank power [(batch,) frames, bins]."""
        import tensorflow as tf

        if self._log_power_fn is None:
            raise ModelError(f"{self.model_dir} has no {LOG_POWER_SIGNATURE!r} signature")
        x = np.asarray(audio, np.float32)
        if self._frontend is not None:  # the same signature on SciPy, checked against it at load
            return self._frontend(x)
        out = self._log_power_fn(audio=tf.constant(x if x.ndim == 2 else x[None]))["log_power"].numpy()
        return out if x.ndim == 2 else out[0]

    def embed_log_power(self, logp: np.ndarray) -> np.ndarray:
        """[n, window_frames, bins] log power (from `window_log_power`) -> [n, dim] unit-norm embeddings."""
        if self._body_fn is None:
            raise ModelError(f"{self.model_dir} has no {EMBED_LOG_POWER_SIGNATURE!r} signature")
        if logp.ndim != 3:
            raise ValueError(f"log power must be [n, frames, bins], got {logp.shape}")
        if self._tflite_body is None:
            return self._batched(self._body_fn, "log_power", logp)
        x = np.asarray(logp, np.float32)
        step = min(self.batch_size, TFLITE_BATCH)
        with self._tflite_runner() as runner:
            out = [runner(log_power=x[i : i + step])["embedding"] for i in range(0, x.shape[0], step)]
        if not out:
            return np.zeros((0, self.dim), np.float32)
        return np.concatenate(out).astype(np.float32, copy=False)

    @property
    def _window_frames(self) -> int:
        """Front-end frames in one window."""
        return 1 + (C.WINDOW_SAMPLES - self._n_fft) // self._frame_hop

    def window_log_power(self, recordings: Sequence[np.ndarray], hop: int,
                         wholes: Sequence[np.ndarray | None] | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
        """The log power of every window (`window_starts(len, hop)`) of each recording, from one front-end
        pass per recording (or its `wholes[i]`, already computed: the log power of the recording, or of
        the recording followed by anything): (log power [n, window_frames, bins] in recording order,
        start samples per recording)."""
        starts_of = [window_starts(r.shape[0], hop) for r in recordings]
        frames_per_window = self._window_frames
        parts: list[np.ndarray] = []
        own: list[np.ndarray] = []  # windows off the frame grid or shorter than a window
        slots: list[tuple[int, int]] = []  # (position in parts, index in own)
        for i, (rec, starts) in enumerate(zip(recordings, starts_of)):
            on_grid = (starts % self._frame_hop == 0) & (starts + C.WINDOW_SAMPLES <= rec.shape[0])
            whole = wholes[i] if wholes is not None and wholes[i] is not None else (
                self.log_power(rec) if on_grid.any() else None)
            for st, ok in zip(starts.tolist(), on_grid.tolist()):
                if ok:
                    f = st // self._frame_hop
                    parts.append(whole[f : f + frames_per_window])
                else:
                    seg = rec[st : st + C.WINDOW_SAMPLES]
                    own.append(np.pad(seg, (0, C.WINDOW_SAMPLES - seg.shape[0])))
                    slots.append((len(parts), len(own) - 1))
                    parts.append(None)  # type: ignore[arg-type]
        if own:
            own_logp = self.log_power(np.stack(own))
            for pos, j in slots:
                parts[pos] = own_logp[j]
        if not parts:
            return np.zeros((0, frames_per_window, 0), np.float32), starts_of
        return np.stack(parts).astype(np.float32, copy=False), starts_of

    def query_log_power(self, audio: np.ndarray, tempo_rates: Sequence[float] = (1.0,)
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A query's windows in each tempo view, as log power (the windows, offsets and order of
        `cut_query_views`; the views other than 1x stretched from the spectrogram, `_tempo_views`):
        (log power [n, frames, bins], offsets_s [n] float32 in their view's time, views [n] int64)."""
        logp, starts_of = self._tempo_views(audio, [float(r) for r in tempo_rates])
        offsets = np.concatenate([s / C.SAMPLE_RATE for s in starts_of]).astype(np.float32)
        view_ids = np.concatenate([np.full(s.shape[0], v, np.int64) for v, s in enumerate(starts_of)])
        return logp, offsets, view_ids

    def _tempo_views(self, audio: np.ndarray, rates: list[float]) -> tuple[np.ndarray, list[np.ndarray]]:
        """Every tempo view's windows as log power, in `rates` order, with their start samples (view time).

        One front-end pass over the recording and some silence (`stretch_source`): the 1x view's
        windows are sliced from it (`window_log_power`), the other views stretched along time from it
        (`stretched_view`) instead of
        resampling the audio and running the front-end on each: measured 2026-12-04 on synthetic-1k,
        mir1k-cross, zalo and adc2004, the same MRR@10 within 0.003 for about 9 ms less per 10 s query
        (README, Results)."""
        parts: list[np.ndarray] = []
        starts_of: list[np.ndarray] = []
        # one front-end pass serves every view: its frames over the recording are the 1x view's
        source = self.stretch_source(audio, rates) if any(tempo_fraction(r) != 1 for r in rates) else None
        for rate in rates:
            if tempo_fraction(rate) == 1:
                logp, (starts,) = self.window_log_power([audio], view_window_hop(rate), wholes=[source])
            else:
                logp, starts, _ = self.stretched_view(source, audio.shape[0], rate)
            parts.append(logp)
            starts_of.append(starts)
        return np.concatenate(parts).astype(np.float32, copy=False), starts_of

    def stretch_source(self, audio: np.ndarray, rates: Sequence[float]) -> np.ndarray:
        """What the stretched tempo views `rates` read: the log power [frames, bins] of one front-end
        pass over the recording followed by as much silence as their windows read past its end. A view
        played r times as long spans max(r x the recording, one window) of its own time, i.e. up to one
        window / r of the recording's (a short query's shorter views reach past its end), and a frame
        reads up to half an FFT and a hop beyond its position. (Until 2026-12-04 one window of silence
        was always added: 40 % more front-end work for a 10 s query, the same frames.)"""
        audio = np.asarray(audio, np.float32)
        reach = max([audio.shape[0]] + [math.ceil(C.WINDOW_SAMPLES / tempo_fraction(r)) for r in rates])
        return self.log_power(np.pad(audio, (0, reach - audio.shape[0] + self._n_fft + self._frame_hop)))

    def stretched_view(self, source: np.ndarray, num_samples: int, rate: float
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The tempo view `rate` (`rate` times as long, as `tempo_view`) of a recording of `num_samples`
        samples, from its `stretch_source`: each window frame is interpolated linearly along time
        between the two source frames around the instant it hears. Returns (log power [n,
        window_frames, bins], window starts [n] in view samples (`window_starts` of the view's length,
        every `view_window_hop(rate)`), reads_to [n]: the recording samples each window's frames read up to; a window is final once the
        recording holds that many samples)."""
        frac = tempo_fraction(rate)
        hop, n_fft = self._frame_hop, self._n_fft
        frames_per_window = self._window_frames
        view_len = -(-num_samples * frac.numerator // frac.denominator)  # resample_poly's output length
        starts = window_starts(view_len, view_window_hop(rate))
        centres = starts[:, None] + np.arange(frames_per_window)[None, :] * hop + n_fft / 2  # view samples
        pos = np.clip((centres * (frac.denominator / frac.numerator) - n_fft / 2) / hop, 0, source.shape[0] - 1)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, source.shape[0] - 1)
        w = (pos - lo).astype(np.float32)[..., None]
        logp = (source[lo] * (1 - w) + source[hi] * w).astype(np.float32, copy=False)
        reads_to = hi[:, -1] * hop + n_fft
        return logp, starts, reads_to

    # -- recordings ------------------------------------------------------------------------------
    def embed_master(self, audio: np.ndarray, hop_seconds: float = C.MASTER_WINDOW_HOP_SECONDS
                     ) -> tuple[np.ndarray, np.ndarray]:
        """Whole master [time] -> (embeddings [n, dim], window offsets in seconds [n])."""
        return self.embed_masters([audio], hop_seconds)[0]

    def embed_masters(self, audios: Sequence[np.ndarray], hop_seconds: float = C.MASTER_WINDOW_HOP_SECONDS
                      ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Whole masters [time] -> per master (embeddings [n, dim], window offsets in seconds [n]),
        windows starting every `hop_seconds` (the index's master hop: 2 s halves the windows).

        The one master-embedding path (in-process indexer and Beam workers): the front-end runs once
        per master, the body over all the masters' windows in shared batches (cross-track batching);
        an export without the split signatures embeds the cut windows instead."""
        hop = master_hop_samples(hop_seconds)
        if self.splits_frontend:
            logp, starts_of = self.window_log_power(audios, hop)
            emb = self.embed_log_power(logp)
            offsets = [(s / C.SAMPLE_RATE).astype(np.float32) for s in starts_of]
        else:
            cut = [cut_windows(a, hop) for a in audios]
            emb = self.embed_windows(np.concatenate([w for w, _ in cut]) if cut
                                     else np.zeros((0, C.WINDOW_SAMPLES), np.float32))
            offsets = [o for _, o in cut]
        return _split_rows(emb, offsets)

    def embed_query(self, audio: np.ndarray, tempo_rates: Sequence[float] = (1.0,)) -> QueryEmbedding:
        """Whole query [time] -> its windows in each tempo view (`cut_query_views`), embedded in one
        batch: QueryEmbedding(emb [n, dim], offsets_s [n], views [n])."""
        if self.splits_frontend:
            logp, offsets, views = self.query_log_power(audio, tempo_rates)
            return QueryEmbedding(self.embed_log_power(logp), offsets, views)
        windows, offsets, views = cut_query_views(audio, tuple(tempo_rates))
        return QueryEmbedding(self.embed_windows(windows), offsets, views)


def master_hop_samples(hop_seconds: float) -> int:
    """A master hop in seconds -> samples (ValueError unless it is at least one sample)."""
    seconds = float(hop_seconds)
    if not math.isfinite(seconds) or round(seconds * C.SAMPLE_RATE) < 1:
        raise ValueError(f"the master hop must be a positive number of seconds, got {hop_seconds!r}")
    return int(round(seconds * C.SAMPLE_RATE))


def _split_rows(emb: np.ndarray, offsets: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Consecutive rows of `emb` [sum n_i, dim] paired with each recording's offsets [n_i]."""
    out, start = [], 0
    for o in offsets:
        out.append((emb[start : start + o.shape[0]], o))
        start += o.shape[0]
    return out
