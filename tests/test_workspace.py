"""The workspace itself: generated code is current, the console command dispatches."""

import subprocess
import sys

from protos import build


def test_generated_grpc_code_is_current():
    assert build.is_current(), "run `python -m protos.build` and commit the generated code"


def test_generated_service_has_both_rpcs():
    from protos.earworm.v1 import recognizer_pb2

    svc = recognizer_pb2.DESCRIPTOR.services_by_name["Recognizer"]
    assert svc.full_name == "earworm.v1.Recognizer"
    assert {m.name for m in svc.methods} == {"Identify", "StreamIdentify"}
    stream = svc.methods_by_name["StreamIdentify"]
    assert stream.client_streaming and stream.server_streaming


def test_earworm_help_lists_subcommands():
    out = subprocess.run([sys.executable, "-m", "data_gen.cli", "--help"], capture_output=True,
                         text=True, check=True).stdout
    assert "catalogue" in out
