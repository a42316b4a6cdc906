"""The vlminterp command dispatches to every subcommand's own parser."""

from __future__ import annotations

import pytest

from vlminterp.cli import SUBCOMMANDS, main


def test_top_level_help(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in SUBCOMMANDS)
    assert main([]) == 2


@pytest.mark.parametrize("command", sorted(SUBCOMMANDS))
def test_each_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage" in capsys.readouterr().out.lower()


def test_unknown_subcommand_is_rejected(capsys):
    with pytest.raises(SystemExit):
        main(["stear"])
    assert "invalid choice" in capsys.readouterr().err
