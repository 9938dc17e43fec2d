"""Audio constants shared by data_gen, training and serving.

One source of truth: every derived value is computed from the few base values here, so the
pitch tracker, the synthesizers, the encoder's front-end and the server cannot drift apart.
"""

from __future__ import annotations

# --- Base values -------------------------------------------------------------------------------
SAMPLE_RATE = 16_000
"""Hz. Every waveform inside Earworm is mono float32 at this rate."""

PITCH_HOP_SECONDS = 0.010
"""Pitch contours (f0 + voicing/confidence) have one frame every 10 ms."""

WINDOW_SECONDS = 4.0
"""Length of the audio window the encoder embeds (masters and queries alike)."""

MASTER_WINDOW_HOP_SECONDS = 1.0
"""Hop between the overlapping windows cut from catalogue masters. Measured with the stage-E model
(`earworm eval`, MRR@10): 2 s gave 0.507 on synthetic-1k and 0.267 on synthetic-10k, 1 s gave 0.564
and 0.346 (the index is twice as large), 0.5 s (with 0.5 s query hop) 0.571 on synthetic-1k."""

QUERY_WINDOW_HOP_SECONDS = 1.0
"""Hop between the overlapping windows cut from a query (the same as the masters': a query window
lands at most half a hop from a master window holding the same melody)."""

TEMPO_VIEW_WINDOW_HOP_SECONDS = 2.0
"""Hop between the windows of a query's other tempo views (played 0.8x and 1.25x as long; the view as
sung keeps QUERY_WINDOW_HOP_SECONDS): 16 windows per 10 s query instead of 22. Measured 2026-12-04
(`earworm eval`, MRR@10, the default model, each set's cached index), 1 / 1.5 / 2 / 2.5 / 3 s:
synthetic-1k 0.812 / 0.820 / 0.812 / 0.818 / 0.809, mir1k-cross 0.841 / 0.841 / 0.844 / 0.844 / 0.844,
zalo + 300 0.609 / 0.634 / 0.634 / 0.634 / 0.609, zalo + 1,000 0.594 / 0.594 / 0.631 / 0.631 / 0.586,
adc2004 + 300 0.616 / 0.607 / 0.627 / 0.624 / 0.633, adc2004 + 1,000 0.478 / 0.484 / 0.484 / 0.482 /
0.476: at 2 s no set loses, and a query costs ~6 ms less (`earworm bench-query`). (A 2 s hop for the
view as sung too loses: adc2004 + 300 0.574.)"""

EMBEDDING_DIM = 128
"""Size of the unit-norm embedding of one window."""

MIN_QUERY_SECONDS = 2.0
"""Shorter recordings carry too little melody to identify."""

MAX_QUERY_SECONDS = 60.0
"""Longer recordings are refused (the service is for snippets, not whole songs)."""

MAX_MASTER_SECONDS = 600.0
"""Catalogue recordings longer than this are refused at indexing time."""

SILENCE_RMS = 1e-4
"""A recording whose overall RMS is below this (about -80 dBFS) is considered silent."""

# --- Derived values ----------------------------------------------------------------------------
PITCH_HOP = int(round(SAMPLE_RATE * PITCH_HOP_SECONDS))  # 160 samples
PITCH_FRAME_RATE = SAMPLE_RATE // PITCH_HOP  # 100 frames per second
WINDOW_SAMPLES = int(round(SAMPLE_RATE * WINDOW_SECONDS))
MASTER_WINDOW_HOP = int(round(SAMPLE_RATE * MASTER_WINDOW_HOP_SECONDS))
QUERY_WINDOW_HOP = int(round(SAMPLE_RATE * QUERY_WINDOW_HOP_SECONDS))
TEMPO_VIEW_WINDOW_HOP = int(round(SAMPLE_RATE * TEMPO_VIEW_WINDOW_HOP_SECONDS))
MIN_QUERY_SAMPLES = int(round(SAMPLE_RATE * MIN_QUERY_SECONDS))
MAX_QUERY_SAMPLES = int(round(SAMPLE_RATE * MAX_QUERY_SECONDS))

# --- Training examples (TFRecords written by beam_pipelines.training_pairs) ---------------------
EXAMPLE_SECONDS = 6.0
"""Length of the aligned (query, master) audio pair in one training example; the trainer crops
WINDOW_SECONDS from it (the margin leaves room for time-shift and tempo augmentation)."""
EXAMPLE_SAMPLES = int(round(SAMPLE_RATE * EXAMPLE_SECONDS))
