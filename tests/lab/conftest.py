"""The simulated lab as pytest fixtures.

``lab`` (session scope) brings a lab up once — master, 2 slaves and a client, as systemd-nspawn
machines — and tears it down at the end. ``run_playbook(lab, playbook, *extra)`` runs
``ansible-playbook -i <lab inventory>`` and returns the parsed PLAY RECAP (a ``Recap``: per host
ok / changed / unreachable / failed / skipped / rescued / ignored).

The lab is named ``vcltest`` (``VCL_TEST_LAB`` overrides it), so a `vcl0` lab an admin runs is
never touched. On a machine without the tools (or without root) the tests fail and say what to
install; they never skip silently.
"""

from __future__ import annotations

import os

import pytest

from vcl_lab import LabError, preflight
from vcl_lab.testing import Lab, lab_down, lab_up, run_playbook

__all__ = ["LAB_NAME", "Lab", "require_lab_tools", "run_playbook"]

LAB_NAME = os.environ.get("VCL_TEST_LAB", "vcltest")


def require_lab_tools() -> None:
    """Fail (not skip) with the fix when this machine cannot run the lab."""
    try:
        preflight()
        return
    except LabError as err:
        problem = str(err)
    pytest.fail(
        f"the simulated lab cannot run here: {problem}. Run the tests through scripts/test.sh "
        "(it installs requirements/apt-lab.txt), as root.",
        pytrace=False,
    )


def start_lab(name: str, slaves: int = 2) -> Lab:
    require_lab_tools()
    try:
        return lab_up(name, slaves=slaves)
    except LabError as err:
        problem = str(err)
    pytest.fail(problem, pytrace=False)


@pytest.fixture(scope="session")
def lab():
    """A lab (master, 2 slaves, client) for the whole session; torn down at the end."""
    handle = start_lab(LAB_NAME)
    try:
        yield handle
    finally:
        result = lab_down(LAB_NAME)
        if not result.get("ok"):
            pytest.fail(f"`vcl lab down --name {LAB_NAME}` left things behind: {result}", pytrace=False)


@pytest.fixture
def other_lab(lab):
    """A second, smaller lab (master, 1 slave, client) next to the session lab; always removed."""
    name = LAB_NAME[:10] + "b"
    lab_down(name)
    handle = start_lab(name, slaves=1)
    try:
        yield handle
    finally:
        lab_down(name)
