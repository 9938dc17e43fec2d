"""The Python client and `earworm identify` against a real test server."""

from __future__ import annotations

import json
import socket

import grpc
import numpy as np
import pytest

from data_gen import constants as C
from data_gen.audio import write_audio
from serving.client import ClientError, ClientMatch, Identification, RecognizerClient, format_offset, format_table
from tests.serving.conftest import TRACK_IDS, loader_for, run_cli


@pytest.fixture(scope="module")
def hum_file(good_query, tmp_path_factory):
    path = tmp_path_factory.mktemp("queries") / "hum.wav"
    write_audio(path, good_query)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_identify_file(client, hum_file):
    result = client.identify_file(hum_file, top_k=2)
    assert [m.rank for m in result.matches] == [1, 2]
    assert result.best is not None and result.best.track_id == TRACK_IDS[1]
    assert result.audio_seconds == pytest.approx(10.0, abs=0.01)


def test_identify_missing_file_is_a_client_error(client, tmp_path):
    with pytest.raises(ClientError, match="cannot read"):
        client.identify_file(tmp_path / "nope.wav")


def test_stream_yields_interims_then_one_final(client, masters):
    answers = list(client.stream(masters[TRACK_IDS[2]][: 5 * C.SAMPLE_RATE], chunk_seconds=0.5))
    assert answers[-1].is_final and not any(a.is_final for a in answers[:-1])
    assert answers[-1].matches[0].track_id == TRACK_IDS[2]


def test_cli_identify_json(target, hum_file, capsys):
    rc = run_cli(["identify", str(hum_file), "--server", target, "--top-k", "2", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["matches"][0]["track_id"] == TRACK_IDS[1]
    assert out["matches"][0]["rank"] == 1 and len(out["matches"]) == 2
    assert out["no_match"] is False
    assert out["model_version"] and out["index_version"]


def test_cli_identify_table(target, hum_file, capsys):
    assert run_cli(["identify", str(hum_file), "--server", target]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split() == ["rank", "title", "artist", "score", "offset"]
    assert lines[1].split()[:3] == ["1", "Title", TRACK_IDS[1]]
    assert "0:04" in lines[1]  # the query starts 4 s into the master
    assert "No match" not in out


def test_cli_says_no_match_explicitly(server_factory, embedder, index_dir, hum_file, capsys):
    from serving.index import WindowIndex
    from serving.retrieval_types import RetrievalConfig

    _, target = server_factory(loader=loader_for(embedder, WindowIndex.load(index_dir),
                                                 retrieval_config=RetrievalConfig(no_match_threshold=1.5)))
    assert run_cli(["identify", str(hum_file), "--server", target]) == 0
    out = capsys.readouterr().out
    assert out.startswith("No match")
    assert run_cli(["identify", str(hum_file), "--server", target, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["no_match"] is True


def test_cli_unreachable_server_is_one_clear_line(hum_file, capsys):
    rc = run_cli(["identify", str(hum_file), "--server", f"127.0.0.1:{_free_port()}", "--timeout", "3"])
    assert rc != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("earworm identify: cannot reach the Earworm server at 127.0.0.1:")
    assert len(err.splitlines()) == 1


def test_cli_invalid_recording_is_one_clear_line(target, tmp_path, capsys):
    silent = tmp_path / "silent.wav"
    write_audio(silent, np.zeros(3 * C.SAMPLE_RATE, np.float32))
    rc = run_cli(["identify", str(silent), "--server", target])
    assert rc != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("earworm identify: the server refused the recording:") and "silent" in err
    assert len(err.splitlines()) == 1


def test_client_error_keeps_the_status_code(target):
    with RecognizerClient(target) as c:
        with pytest.raises(ClientError) as info:
            c.identify_bytes(b"")
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_format_table_and_offsets():
    assert [format_offset(s) for s in (0, 59.4, 59.6, 83.4, 600)] == ["0:00", "0:59", "1:00", "1:23", "10:00"]
    match = ClientMatch(1, "t1", "Ode to Joy", "Beethoven", 0.812, 83.4)
    confident = Identification([match], False, 0.4, "m", "i", 9.5)
    table = format_table(confident)
    assert "Ode to Joy" in table and "1:23" in table and "0.812" in table and "No match" not in table
    rejected = Identification([match], True, 0.9, "m", "i", 9.5)
    assert format_table(rejected).startswith("No match")
    assert format_table(Identification([], True, 0.9, "m", "i", 9.5)).startswith("No match")
    silent_tune = Identification([], True, 0.9, "m", "i", 9.5, no_match_reason="no_melody",
                                 melody={"explanation": "no melody heard: it holds 1 distinct note"})
    assert silent_tune.no_melody
    assert format_table(silent_tune).startswith("No melody heard: it holds 1 distinct note.")


def test_client_reports_no_melody(client, tmp_path):
    from data_gen.audio import write_audio
    from data_gen.synth.no_melody import signals

    path = tmp_path / "tone.wav"
    write_audio(path, signals(seconds=6.0)["sine_440hz"])
    result = client.identify_file(path)
    assert result.no_match and result.no_melody and result.matches == []
    assert result.melody["distinct_notes"] == 1 and "distinct note" in result.melody["explanation"]


def test_demo_table_marks_right_and_wrong_answers(client, hum_file, tmp_path, capsys):
    from serving.apps.demo import identify_examples

    class T:
        def __init__(self, title):
            self.title = title

    tracks = {tid: T(f"Title {tid}") for tid in TRACK_IDS}
    from data_gen.audio import write_audio
    from data_gen.synth.no_melody import signals

    tone = tmp_path / "tone.wav"
    write_audio(tone, signals(seconds=6.0)["sine_440hz"])
    queries = [(hum_file, "hum", TRACK_IDS[1]), (hum_file, "whistle", TRACK_IDS[0]), (tone, "tone", None)]
    correct, ranked_first, threshold = identify_examples(client, queries, tracks, top_k=3)
    assert correct == 2 and threshold > 0
    assert ranked_first == 1  # one hum file: its top candidate is the first query's song only
    rows = capsys.readouterr().out.splitlines()[2:]
    assert rows[0].endswith("yes") and rows[1].endswith("NO")
    assert "no melody" in rows[2] and rows[2].endswith("yes")
    assert f"Title {TRACK_IDS[0]}" in rows[1] and f"Title {TRACK_IDS[1]}" in rows[1]  # expected vs answer
