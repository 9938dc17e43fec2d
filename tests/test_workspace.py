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
    out = subprocess.run([sys.executable, "-m", "serving.apps.earworm", "--help"], capture_output=True,
                         text=True, check=True).stdout
    assert "catalogue" in out


def _workspace_commands() -> list[str]:
    """The `earworm` commands named in the first column of WORKSPACE.md's command table."""
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "WORKSPACE.md").read_text(encoding="utf-8")
    table = text.split("## Commands", 1)[1].split("\n\n", 2)[1]
    names = []
    for row in table.splitlines()[2:]:
        first_cell = row.split(" | ")[0]
        for segment in re.findall(r"`([^`]+)`", first_cell):
            words = segment.split()
            if words and words[0] == "earworm":
                words = words[1:]
            if words and re.fullmatch(r"[a-z][a-z0-9-]*", words[0]) and words[0] not in names:
                names.append(words[0])
    return names


def test_every_command_of_workspace_md_is_registered_and_prints_its_help(capsys):
    import pytest

    from serving.apps.earworm import build_parser

    names = _workspace_commands()
    assert {"demo", "serve", "identify", "calibrate", "datagen", "train", "eval", "bench-page"} <= set(names)
    parser = build_parser()
    for name in names:
        with pytest.raises(SystemExit) as exit_:
            parser.parse_args([name, "--help"])
        assert exit_.value.code == 0, name
        assert "usage: earworm " + name in capsys.readouterr().out, name


def test_a_broken_command_module_is_an_error_not_a_missing_command():
    """The dispatcher imports each package's commands explicitly: one that cannot be imported stops
    `earworm` with its cause instead of silently dropping the command."""
    code = ("import sys; sys.modules['training.evaluation.cli'] = None\n"
            "import serving.apps.earworm")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode != 0
    assert "ModuleNotFoundError: import of training.evaluation.cli" in out.stderr


def test_the_dispatcher_registers_every_package_s_commands():
    from serving.apps.earworm import COMMAND_MODULES, build_parser

    assert len({m.__name__ for m in COMMAND_MODULES}) == len(COMMAND_MODULES)
    commands = set(build_parser()._subparsers._group_actions[0].choices)
    assert {"catalogue", "datagen", "index", "train", "eval", "serve", "identify", "calibrate",
            "gate-check", "demo", "bench-load", "bench-query"} <= commands
