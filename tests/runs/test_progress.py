"""What a training run prints (issue 18): the progress line, the end summary, `--help`."""

import subprocess
import sys

import pytest
from testutil import REPO

from pathfm.main import config_lines, main
from pathfm.train.progress import (
    already_complete,
    eta_seconds,
    format_duration,
    headline,
    next_commands,
    progress_line,
    summary,
)


def test_durations():
    assert format_duration(0) == "0:00"
    assert format_duration(37.4) == "0:37"
    assert format_duration(59.6) == "1:00"
    assert format_duration(3725) == "1:02:05"


def test_eta_is_the_remaining_steps_at_the_measured_rate():
    assert eta_seconds(120, 300, 0.31) == 180 * 0.31
    assert eta_seconds(300, 300, 0.31) == 0


def test_progress_line():
    line = progress_line(120, 300, "loss 6.912", 37.0, 0.31, 32)
    assert line == "step 120/300 (40%) loss 6.912 | 0.31 s/step 103 img/s | 0:37 elapsed, ETA 0:56"
    assert progress_line(299, 300, "loss 1", 5, 0.5, 8).startswith("step 299/300 (99%) loss 1 |")
    # the first (compiling) step has no rate yet, so no ETA either
    assert progress_line(1, 300, "loss 6.93", 42.0) == "step 1/300 (0%) loss 6.93 | 0:42 elapsed"


def test_plain_text_for_redirected_output():
    line = progress_line(3, 12, headline({"loss": 2.0}), 1.0, 0.2, 8)
    assert line.isprintable()  # no carriage returns, no escape codes
    assert "\x1b" not in summary("runs/x", 12, 60.0, {"loss": 2.0})


def test_headline_and_summary():
    last = {"loss": 6.9123, "rankme": 6.5, "odcorr": "nan", "online_knn_balanced_accuracy": 0.85}
    assert headline(last) == "loss 6.912, RankMe 6.5, ODCorr nan, online_knn_balanced_accuracy 0.85"
    assert headline({"rankme": 6.5, "batch_id": 3}) == "RankMe 6.5"
    text = summary("runs/my run", 300, 95.0, last)
    assert text.startswith("pathfm: finished 300 steps in 1:35: loss 6.912, RankMe 6.5")
    assert "checkpoints: runs/my run/checkpoints (step 300)" in text
    for command in next_commands("runs/my run"):
        assert f"  {command}" in text.splitlines()
    assert "--config.checkpoint='runs/my run'" in next_commands("runs/my run")[1]  # quoted


def test_next_commands_are_the_ones_readme_gives():
    report, probe, export = next_commands("runs/quickstart")
    assert report == "python -m pathfm.report --workdir runs/quickstart"
    assert probe == (
        "python -m pathfm.main --config configs/eval/linear_probe.py --workdir "
        "runs/quickstart/eval --config.checkpoint=runs/quickstart"
    )
    assert export == (
        "python -m pathfm.main --config configs/export.py --config.checkpoint=runs/quickstart "
        "--config.output=runs/quickstart/export"
    )
    readme = (REPO / "README.md").read_text()
    for start in ("python -m pathfm.report --workdir", "--config configs/eval/linear_probe.py"):
        assert start in readme


def test_already_complete_names_the_checkpoint_and_what_next():
    text = already_complete("runs/q", 300, 300)
    assert "already complete: checkpoint 300 of 300 steps in runs/q/checkpoints" in text
    assert next_commands("runs/q")[0] in text


def test_config_lines_take_each_docstring_first_line(tmp_path):
    (tmp_path / "eval").mkdir()
    (tmp_path / "a.py").write_text('"""First line.\n\nMore."""\nx = 1\n')
    (tmp_path / "eval" / "b.py").write_text("x = 1\n")
    assert config_lines(tmp_path) == [
        f"  {tmp_path.name}/a.py       First line.",
        f"  {tmp_path.name}/eval/b.py",
    ]


def test_help_exits_zero_listing_configs_keys_and_overrides(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["pathfm", "-h"])
    assert exit_.value.code == 0
    short = capsys.readouterr().out
    out = subprocess.run(
        [sys.executable, "-m", "pathfm.main", "--help"], cwd=REPO, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout
    assert short.strip() == text.strip()
    assert "usage: python -m pathfm.main --config" in text
    assert "configs/quickstart.py" in text and "Quick start: DINO" in text
    assert "configs/eval/linear_probe.py" in text
    for group in ("model", "data", "optim", "monitor"):
        assert group in text.split("groups", 1)[1]
    for override in ("--config.data.slides=DIR", "--config.batch_size=N", "--config.epochs=N"):
        assert override in text
    assert "README.md" in text and "docs/" in text
    assert "python -m pathfm.preview --slides DIR --out DIR" in text
