"""Applications on top of the serving core: the demo and the benchmarks.

They import the core (`serving.embedder`, `index`, `retrieval`, `indexer`, `server`, ...); the core
never imports them (tests/test_import_graph.py checks it).
"""
