"""Fixtures for the server/client tests: a real untrained model, a tiny real index, real servers.

The index holds three synthetic "masters" (hum-like melodies, 20 s each) embedded with the untrained
exported model, so a query cut from a master at an even second matches its master windows exactly
(score ~1): a real end-to-end check of decoding, windowing, embedding, search and aggregation that
does not depend on the model being trained.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from data_gen import constants as C

MASTER_SECONDS = 20.0
TRACK_IDS = ("t-alpha", "t-beta", "t-gamma")


@pytest.fixture(scope="session")
def masters() -> dict[str, np.ndarray]:
    from data_gen.synth.test_signals import hum_like_audio

    return {tid: hum_like_audio(MASTER_SECONDS, seed=100 + i) for i, tid in enumerate(TRACK_IDS)}


@pytest.fixture(scope="session")
def embedder(untrained_model_dir):
    from serving.embedder import Embedder

    return Embedder(untrained_model_dir)


@pytest.fixture(scope="session")
def master_embeddings(embedder, masters) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {tid: embedder.embed_master(audio) for tid, audio in masters.items()}


@pytest.fixture(scope="session")
def make_index(embedder, master_embeddings) -> Callable[..., object]:
    """make_index(title_suffix="", model_version=None, track_ids=TRACK_IDS) -> WindowIndex."""
    from serving.index import TrackInfo, WindowIndex

    def build(title_suffix: str = "", model_version: str | None = None, track_ids=TRACK_IDS):
        embs, rows, offs = [], [], []
        for row, tid in enumerate(track_ids):
            e, o = master_embeddings[tid]
            embs.append(e)
            rows.append(np.full(e.shape[0], row, np.int32))
            offs.append(o)
        tracks = [TrackInfo(tid, f"Title {tid}{title_suffix}", f"Artist {tid}") for tid in track_ids]
        return WindowIndex.build(np.concatenate(embs), np.concatenate(rows), np.concatenate(offs), tracks,
                                 model_version=model_version or embedder.version)

    return build


@pytest.fixture(scope="session")
def index_dir(make_index, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("index") / "index"
    make_index().save(path)
    return path


@pytest.fixture(scope="session")
def base_config(untrained_model_dir, index_dir):
    from serving.server import ServerConfig

    return ServerConfig(model_dir=untrained_model_dir, index_dir=index_dir, host="127.0.0.1", port=0,
                        workers=8, watch_index_seconds=0)


def loader_for(embedder, index, retrieval_config=None, embed_windows=None, retriever=None):
    """A loader that re-uses already loaded parts (loading TF models per test would be slow)."""
    from serving.retrieval import Retriever
    from serving.retrieval_types import RetrievalConfig
    from serving.server import Components

    class _Embedder:
        version = embedder.version

        def embed_windows(self, windows):
            return (embed_windows or embedder.embed_windows)(windows)

    def load(_config):
        r = retriever or Retriever(embedder, index, retrieval_config or RetrievalConfig())
        return Components(_Embedder(), index, r)

    return load


@pytest.fixture(scope="session")
def server_factory(base_config) -> Iterator[Callable[..., tuple[object, str]]]:
    """start(loader=None, wait=True, servicer=None, **config_changes) -> (EarwormServer, "host:port")."""
    from serving.server import create_server, load_components

    started = []

    def start(loader=None, wait=True, servicer=None, **changes):
        config = replace(base_config, **changes)
        if servicer:
            config = replace(config, servicer=replace(config.servicer, **servicer))
        server, port = create_server(config, loader or load_components, wait=wait)
        started.append(server)
        return server, f"127.0.0.1:{port}"

    yield start
    for s in started:
        s.stop(grace=0)


@pytest.fixture(scope="session")
def live_server(server_factory, embedder, index_dir):
    """The shared server (real loader: Embedder + WindowIndex.load + Retriever)."""
    return server_factory()


@pytest.fixture(scope="session")
def target(live_server) -> str:
    return live_server[1]


@pytest.fixture(scope="session")
def client(target):
    from serving.client import RecognizerClient

    with RecognizerClient(target, timeout=20) as c:
        yield c


def run_cli(argv: list[str]) -> int:
    """Run an `earworm` subcommand of serving.cli or serving.apps.cli (parsed exactly as the console
    command does, but without importing other packages' commands)."""
    import argparse

    from serving import cli
    from serving.apps import cli as apps_cli

    parser = argparse.ArgumentParser(prog="earworm")
    subparsers = parser.add_subparsers(dest="command")
    cli.register(subparsers)
    apps_cli.register(subparsers)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


@pytest.fixture(scope="session")
def good_query(masters) -> np.ndarray:
    """10 s of the second track starting at 4 s: its windows coincide with master windows."""
    audio = masters[TRACK_IDS[1]]
    return audio[4 * C.SAMPLE_RATE : 14 * C.SAMPLE_RATE].copy()


@pytest.fixture(scope="session")
def catalogue_manifest(masters, tmp_path_factory) -> Path:
    """The index's masters as a catalogue on disk (WAV files; the first track also has a melody MIDI)."""
    import pretty_midi

    from data_gen.audio import write_audio
    from data_gen.manifest import Track, write_catalogue

    root = tmp_path_factory.mktemp("catalogue")
    tracks = []
    for i, (tid, audio) in enumerate(masters.items()):
        path = root / f"{tid}.wav"
        write_audio(path, audio)
        midi_path = None
        if i == 0:
            pm = pretty_midi.PrettyMIDI()
            lead = pretty_midi.Instrument(program=73)
            lead.notes = [pretty_midi.Note(90, 60 + (k % 5) * 2, k * 0.5, k * 0.5 + 0.45) for k in range(40)]
            pm.instruments.append(lead)
            midi_path = root / f"{tid}.mid"
            pm.write(str(midi_path))
        tracks.append(Track(tid, f"Title {tid}", f"Artist {tid}", path, midi_path))
    manifest = root / "manifest.csv"
    write_catalogue(manifest, tracks)
    return manifest


@pytest.fixture
def tls_pair(tmp_path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost / 127.0.0.1 and its key: (cert.pem, key.pem)."""
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: cannot make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                    "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key
