"""bench/week.py at a tiny size (a few slaves, one day), so the simulated week cannot rot."""

from __future__ import annotations

import importlib.util
import json
import os
import struct
import sys
import zlib
from pathlib import Path

import pytest

WEEK = Path(__file__).resolve().parents[2] / "bench" / "week.py"


@pytest.fixture(scope="module")
def week():
    spec = importlib.util.spec_from_file_location("bench_week", WEEK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


def _png_pixels(data: bytes) -> tuple[int, int, bytes]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    assert (depth, colour) == (8, 2)
    pos, idat = 8, b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        tag, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        assert struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])[0] == zlib.crc32(tag + body)
        if tag == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompress(idat)
    assert len(raw) == height * (1 + 3 * width)
    rows = [raw[y * (1 + 3 * width) + 1:(y + 1) * (1 + 3 * width)] for y in range(height)]
    return width, height, b"".join(rows)


def test_a_tiny_week_runs_every_scenario_and_keeps_its_promises(week, tmp_path, monkeypatch):
    monkeypatch.setenv("VCL_NOW", "2000-01-01 00:00")
    args = ["--slaves", "4", "--days", "1", "--tick", "30", "--classes", "3", "--rate", "4", "--failures", "3",
            "--seed", "7", "--out", str(tmp_path)]
    assert week.main(args) == 0
    assert os.environ["VCL_NOW"] == "2000-01-01 00:00"  # the simulated clock is put back

    report = json.loads((tmp_path / "week.json").read_text())
    assert report["seed"] == 7 and report["pool_cores"] == 8 + 16 + 8 + 16
    runs = report["scenarios"]
    assert list(runs) == ["reserved", "failures", "baseline"]
    for run in runs.values():
        assert run["violations"] == 0, run["violation_examples"]
        assert run["be_requests"] == report["workload"]["be_requests"]
        assert run["be_served"] + run["be_never_served"] + run["be_refused"] == run["be_requests"]
        assert run["calls"]["dispatch"] >= 48  # a dispatch every 30 minutes, one day
    reserved, failures, baseline = runs["reserved"], runs["failures"], runs["baseline"]
    # Without failures every accepted booking has all its seats running at its first dispatch.
    assert reserved["occurrences_checked"] == reserved["occurrences"] >= 1
    assert reserved["on_time_pct"] == 100.0 and reserved["seat_core_hours_delivered_pct"] == 100.0
    # The failures really happen: VMs are lost and requeued, and a slave that comes back has every domain it
    # still had reported as an orphan (checked per return: a mismatch is a violation).
    assert failures["failures"] + failures["failures_skipped"] == 3 and failures["failures"] >= 1
    assert failures["lost"] >= 1 and failures["requeued_seats"] + failures["requeued_be"] >= 1
    assert failures["returns"] >= 1 and failures["orphans_reported"] >= 1
    # The baseline books nothing, never preempts, and checks every class of the timetable.
    assert baseline["bookings"] is None and baseline["preemptions"] == 0
    assert baseline["occurrences_checked"] == report["workload"]["class_bookings"]
    assert baseline["calls"]["reserve"] == 0

    width, height, pixels = _png_pixels((tmp_path / "week.png").read_bytes())
    assert width > 900 and height > 3 * 150
    for colour in (week.SEATS, week.BEST_EFFORT, week.IDLE):
        assert bytes(colour) in pixels  # each band of the stacked plot is drawn


@pytest.mark.parametrize("args, field", [(["--slaves", "0"], "--slaves"), (["--days", "x"], "--days"),
                                         (["--scenarios", "reserved,nope"], "--scenarios"),
                                         (["--rate", "nan"], "--rate"),
                                         (["--db-url", "sqlite:///x.sqlite"], "--db-url"),
                                         (["--db-url", "postgresql+psycopg://nobody@127.0.0.1:1/x"], "--db-url")])
def test_bad_input_is_one_line_naming_the_option_and_writes_nothing(week, tmp_path, capsys, args, field):
    with pytest.raises(SystemExit) as exit_info:
        week.main([*args, "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and field in err
    assert not (tmp_path / "out").exists()


def test_an_out_that_is_a_file_is_refused(week, tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("keep\n")
    with pytest.raises(SystemExit) as exit_info:
        week.main(["--out", str(target)])
    assert exit_info.value.code == 1
    assert "--out" in capsys.readouterr().err and target.read_text() == "keep\n"
