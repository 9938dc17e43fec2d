"""Running a CREPE extractor on every n-th 10 ms frame, for throughput.

The pipeline only needs the melody contour (to re-synthesize it), for which 20 ms resolution is
ample (MIR-1K's own pitch labels use a 20 ms hop), and CREPE's network cost is per frame: a stride
of 2 halves the pitch stage, the most expensive step of the pipeline. This wraps the pitch helper's
`CrepeExtractor` (its framing, network, decoder and `resample_to_pitch_grid`), it does not
re-implement it; the result is an ordinary PitchTrack on the 10 ms grid.
"""

from __future__ import annotations

import numpy as np

from data_gen import constants as C


class StridedCrepe:
    """`extract(audio)` like a PitchExtractor, computing CREPE every `stride` frames."""

    def __init__(self, inner, stride: int):
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        self.inner, self.stride = inner, stride
        self.name = f"{inner.name}/stride{stride}"

    def extract(self, audio: np.ndarray):
        from data_gen.pitch import num_pitch_frames, resample_to_pitch_grid
        from data_gen.pitch.base import check_audio
        from data_gen.pitch.crepe import FRAME_LENGTH, NUM_BINS, normalized_frames

        if self.stride == 1:
            return self.inner.extract(audio)
        audio = check_audio(audio)
        n = num_pitch_frames(audio.shape[0])
        hop = C.PITCH_HOP * self.stride
        padded = np.pad(audio, FRAME_LENGTH // 2)
        coarse = (audio.shape[0] // hop) + 1
        act = np.empty((coarse, NUM_BINS), np.float32)
        batch = self.inner.config.batch_size
        for start in range(0, coarse, batch):
            stop = min(start + batch, coarse)
            act[start:stop] = self.inner._forward(normalized_frames(padded, start, stop, hop)).numpy()
        track = self.inner.decode(act)
        times = np.arange(coarse) * hop / C.SAMPLE_RATE
        return resample_to_pitch_grid(times, track.f0_hz, track.confidence, n,
                                      self.inner.config.voicing_threshold)


def make_pipeline_extractor(name: str, stride: int = 1):
    """data_gen.pitch.make_extractor(name), strided when it is CREPE and stride > 1."""
    from data_gen.pitch import make_extractor

    ex = make_extractor(name)
    if stride > 1 and getattr(ex, "name", "") == "crepe":
        return StridedCrepe(ex, stride)
    return ex
