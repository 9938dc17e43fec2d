"""The encoder's work per window, as `earworm bench-query` reports it."""

from __future__ import annotations


def test_body_flops_counts_every_convolution_and_the_projection_per_window():
    from training.encoder import EncoderConfig, body_flops
    from training.frontend import FrontendConfig

    fe = FrontendConfig(bins=24)
    cfg = EncoderConfig(frontend=fe, channels=(4, 6), pools=((2, 1), (1, 2)), temporal_channels=(8,),
                        temporal_dilations=(2,), embedding_dim=16)
    t, f = fe.window_frames, 24  # 97 frames x 24 bins
    t1 = -(-t // 2)  # "same" max-pooling by 2 in time rounds up: 49
    expected = 2 * (t * f * 4 * 1 * 9  # conv0: 3x3, 1 -> 4 channels
                    + t1 * f * 6 * 4 * 9  # conv1 after pooling time: 4 -> 6 (its freq pool comes after)
                    + t1 * 8 * 6 * 3  # tconv0 over time after the max over frequency: 6 -> 8
                    + t1 * 8 * 8 * 3  # the dilated residual block: 8 -> 8
                    + 2 * 8 * 16)  # projection of mean and max over time
    assert body_flops(cfg) == expected


def test_the_default_body_is_about_a_hundred_mflop_per_window():
    from training.encoder import EncoderConfig, body_flops

    assert 60e6 < body_flops(EncoderConfig(temporal_dilations=(2, 4, 8, 2))) < 120e6
