"""Baselines scored by the same metrics code as the learned model, on the same queries.

- `note_histogram`: 128-bin MIDI-note histograms of query and master pitch tracks, cosine similarity
  (the popular vector-database hum-to-search demo).
- `melody_dtw`: classic query-by-humming, key-normalised subsequence DTW of the query's pitch contour
  against each master's *known* melody (melody_midi): a privilege the learned model does not have.
"""

BASELINES = ("note_histogram", "melody_dtw")
