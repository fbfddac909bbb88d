"""`vcl` commands from other distributions: the entry point group vcl.commands (vcl_sched.cli).

`vcl lab ...` comes from vcl-lab (lab/ in the checkout) this way, so vcl_sched imports nothing of it;
a known command that is absent, or an extension that fails to load, answers with what to do."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

from vcl_sched import cli

VCL = Path(sys.executable).parent / "vcl"


def test_vcl_lab_comes_from_the_vcl_lab_distribution():
    entries = [e for e in metadata.entry_points(group=cli.COMMANDS_GROUP) if e.name == "lab"]
    assert [(e.value, e.dist.name) for e in entries] == [("vcl_lab.cli:register", "vcl-lab")]
    from vcl_lab import cli as lab_cli

    args = cli.build_parser().parse_args(["--json", "lab", "status", "--name", "lab7", "--no-probe"])
    assert args.func is lab_cli.cmd_status and (args.name, args.json, args.no_probe) == ("lab7", True, True)


def test_vcl_lab_runs_from_the_vcl_command():
    help_text = subprocess.run([VCL, "--help"], text=True, capture_output=True, check=True).stdout
    assert "lab" in help_text.split() and "the simulated lab" in help_text
    proc = subprocess.run([VCL, "lab", "--help"], text=True, capture_output=True, check=True)
    assert "usage: vcl lab" in proc.stdout and "{up,down,status,guest}" in proc.stdout


def test_a_known_command_that_is_not_installed_says_what_to_install(monkeypatch, capsys):
    monkeypatch.setitem(cli.OPTIONAL_COMMANDS, "zzlab", "install the zz distribution: pip install -e ./zz")
    parser = cli.build_parser()
    assert "zzlab" not in parser.format_help()  # absent from the help...
    assert cli.main(["zzlab", "up", "--name", "x"]) == cli.EXIT_USAGE  # ...but typed, it explains itself
    err = capsys.readouterr().err
    assert err == "vcl: `vcl zzlab` is not installed: install the zz distribution: pip install -e ./zz\n"


def _distribution(where: Path, name: str, entry_points: str, module: str | None = None) -> None:
    """A real (tiny) installed distribution on a sys.path entry: dist-info metadata and entry points."""
    info = where / f"{name}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(entry_points)
    if module is not None:
        (where / f"{name}.py").write_text(module)


def test_an_extension_that_fails_to_load_does_not_take_the_other_commands(tmp_path, monkeypatch, capsys):
    _distribution(tmp_path, "vclbroken", "[vcl.commands]\nbroken = vclbroken:register\n",
                  "raise ImportError('needs libfoo')\n")
    _distribution(tmp_path, "vclextra", "[vcl.commands]\nextra = vclextra:register\n",
                  "def register(sub):\n"
                  "    p = sub.add_parser('extra', help='an extra command')\n"
                  "    p.set_defaults(func=lambda args: print('extra ran') or 0)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    parser = cli.build_parser()
    assert parser.parse_args(["config", "show"]).func is cli.cmd_config_show
    assert "an extra command" in parser.format_help() and "broken" not in parser.format_help()
    assert cli.main(["extra"]) == 0 and capsys.readouterr().out == "extra ran\n"
    assert cli.main(["broken", "anything"]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("vcl: vclbroken:register (vclbroken) failed to load: needs libfoo"), err


def test_an_extension_must_register_the_command_it_is_named_after(tmp_path, monkeypatch, capsys):
    _distribution(tmp_path, "vclmisnamed", "[vcl.commands]\nwanted = vclmisnamed:register\n",
                  "def register(sub):\n    sub.add_parser('other')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert cli.main(["wanted"]) == cli.EXIT_USAGE
    assert "did not register a command named wanted" in capsys.readouterr().err
