"""One flag style across the tools: --config-file, --checkpoint, --no-<step>; old spellings refused by name."""

import runpy
from pathlib import Path

import pytest

from unidet2.engine.cli import reject_renamed_flags

REPO = Path(__file__).resolve().parents[2]


def _parser(tool: str):
    return runpy.run_path(str(REPO / "tools" / tool), run_name="cli_test")["build_parser"]()


def test_old_spelling_is_refused_with_the_new_name(capsys):
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--config-file")
    reject_renamed_flags(parser)
    assert parser.parse_args(["--config-file", "a.py"]).config_file == "a.py"
    with pytest.raises(SystemExit):
        parser.parse_args(["--config", "a.py"])  # argparse alone would take it as an abbreviation of --config-file
    assert "--config is no longer accepted: use --config-file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args(["--ckpt", "m.pth"])
    assert "use --checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("tool", "argv", "message"),
    [
        ("evaluate.py", ["--config-file", "c.py", "--ckpt", "m.pth"], "use --checkpoint"),
        ("scaledet_demo.py", ["--config", "c.py"], "use --config-file"),
        ("scaledet_demo.py", ["--finetune", "full"], "--no-finetune"),
    ],
)
def test_tools_refuse_old_flags(tool, argv, message, capsys):
    with pytest.raises(SystemExit):
        _parser(tool).parse_args(argv)
    assert message in capsys.readouterr().err


def test_demo_flags_do_not_swallow_overrides():
    args = _parser("scaledet_demo.py").parse_args(["--finetune-settings", "full,10", "train.max_iter=300"])
    assert args.finetune_settings == "full,10" and args.overrides == ["train.max_iter=300"]
    args = _parser("scaledet_demo.py").parse_args(["--no-finetune", "train.max_iter=300"])
    assert args.no_finetune and args.overrides == ["train.max_iter=300"] and not args.full
    assert _parser("evaluate.py").parse_args(["--config-file", "c.py", "--checkpoint", "m.pth"]).checkpoint == "m.pth"
