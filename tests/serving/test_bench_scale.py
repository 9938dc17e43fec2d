"""`earworm bench-scale` end to end on a small catalogue: the figures it prints are measured."""

import json

from serving.apps.earworm import main


def test_bench_scale_measures_a_sharded_tree_index_of_embedding_like_windows(tmp_path, capsys):
    out = tmp_path / "scale.json"
    # 3,000 tracks x 10 windows: above the brute-force limit (tree + AH), in two shards
    rc = main(["bench-scale", "--tracks", "3000", "--windows-per-track", "10", "--queries", "60",
               "--max-shard-windows", "16000", "--store-dtype", "int8", "--work-dir", str(tmp_path / "work"),
               "--json", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())["results"][0]
    assert res["windows"] == 30_000 and res["searcher"]["kind"] == "tree_ah" and res["searcher"]["shards"] == 2
    assert 1 <= res["searcher"]["leaves_to_search"] <= res["searcher"]["num_leaves"]
    assert res["recall_at_10"]["0.6"] >= 0.9  # tuned for recall@10 0.95 on queries like these
    assert 0 < res["recall_at_100"]["0.6"] <= 1
    assert res["loaded_matches_built"] is True
    assert 100 < res["bytes_per_window"]["total"] < 400  # int8 store (132 B) + tree and AH codes
    assert res["retrieval_ms_10s_query"]["top1_accuracy"] >= 0.9
    printed = capsys.readouterr().out
    assert "bench-scale: tracks (3000,)" in printed and "recall" in printed
