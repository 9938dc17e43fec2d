"""The apps' commands: `earworm demo` and the benchmarks (`bench-load`, `bench-query`, `bench-soak`,
`bench-page`, `bench-scale`, `bench-aggregation`), each registered by its own module."""

from __future__ import annotations

import argparse

from serving.apps import bench_aggregation, bench_load, bench_page, bench_query, bench_scale, bench_soak, demo


def register(subparsers: argparse._SubParsersAction) -> None:
    demo.register(subparsers)
    bench_load.register(subparsers)
    bench_query.register(subparsers)
    bench_soak.register(subparsers)
    bench_page.register(subparsers)
    bench_scale.register(subparsers)
    bench_aggregation.register(subparsers)
