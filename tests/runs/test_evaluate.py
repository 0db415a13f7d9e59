"""Evaluation runs end to end: a real training run's checkpoint, the synthetic patch task, the
linear probe and kNN, results on disk; and the command line's checks."""

import json
import subprocess
import sys

import pytest
from testutil import REPO, tiny_dino_config

from pathfm.errors import ConfigError
from pathfm.runs.evaluate import eval_config, evaluate, validate_eval
from pathfm.train.loop import train
from pathfm.train.metrics_log import read_metrics


@pytest.fixture(scope="module")
def run(tmp_path_factory, synthetic_slide_dir):
    workdir = tmp_path_factory.mktemp("pretrain")
    config = tiny_dino_config(epochs=2, steps_per_epoch=2)
    config.data.slides = str(synthetic_slide_dir)
    config.monitor.update(every_steps=2, online_task="synthetic", online_per_class=8)
    config.monitor.online_protocols = ("knn", "linear_probe")
    train(config, workdir)
    return workdir


def test_online_knn_and_probe_are_logged_during_pretraining(run):
    records = [r for r in read_metrics(run / "metrics.jsonl") if "rankme" in r]
    assert [r["step"] for r in records] == [2, 4]
    for r in records:  # a 4-step model is near chance (0.2): test_pretraining_helps.py learns
        for key in ("online_knn_balanced_accuracy", "online_probe_balanced_accuracy"):
            assert 0.0 <= r[key] <= 1.0 and abs(r[key] * 40 - round(r[key] * 40)) < 1e-4  # 40 tests


def _config(run, slides, **overrides):
    c = eval_config()
    c.checkpoint, c.data_root = str(run), str(slides)
    c.linear_probe.update(max_steps=300, patience_steps=100, eval_every=50, seeds=(0, 1))
    c.synthetic.per_class = 8
    c.update(overrides)
    return c


def test_probe_and_knn_of_a_checkpoint_write_json_and_markdown(
    run, synthetic_slide_dir, tmp_path, capsys
):
    results = evaluate(_config(run, synthetic_slide_dir), tmp_path)
    assert results["step"] == 4 and results["backbone"] == "teacher"
    assert results["splits"] == {"train": "train", "val": "val", "test": "test"}
    probe = results["protocols"]["linear_probe"]
    knn = results["protocols"]["knn"]["mean"]["balanced_accuracy"]
    assert 0.0 <= probe["mean"]["balanced_accuracy"] <= 1.0
    assert probe["std"]["balanced_accuracy"] >= 0.0
    # The same task (per_class 8 at the run's online_mpp, seed 0) and the same step-4 teacher as
    # the run's online kNN: the same score.
    online = read_metrics(run / "metrics.jsonl")[-1]["online_knn_balanced_accuracy"]
    assert knn == pytest.approx(online, abs=1e-6)
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["protocols"]["knn"]["mean"]["balanced_accuracy"] == knn
    table = (tmp_path / "results.md").read_text()
    assert "| linear_probe | balanced_accuracy |" in table and "step 4" in table
    assert table in capsys.readouterr().out  # printed when done


def test_colour_alone_cannot_solve_the_embedded_synthetic_task(run, synthetic_slide_dir, tmp_path):
    """The embedded synthetic classes share their colour statistics and differ in morphology
    (pathfm/data/synthetic.py): a probe on colour histograms alone stays near chance (0.2)."""
    config = _config(run, synthetic_slide_dir, protocols=("colour_baseline",))
    results = evaluate(config, tmp_path)
    colour = results["protocols"]["colour_baseline"]["mean"]["balanced_accuracy"]
    assert 0.0 <= colour <= 0.45
    assert results["mpp"] == 0.5  # synthetic.mpp 0: the run's monitor.online_mpp
    assert "| colour_baseline | balanced_accuracy |" in (tmp_path / "results.md").read_text()


def test_random_init_baseline_uses_the_same_architecture_untrained(
    run, synthetic_slide_dir, tmp_path
):
    config = _config(run, synthetic_slide_dir, random_init=True, protocols=("knn",))
    results = evaluate(config, tmp_path)
    assert results["random_init"] and results["step"] == 0
    assert "random init" in (tmp_path / "results.md").read_text()


def test_bad_evaluation_configs_are_named(run, tmp_path):
    for overrides, key in (
        ({"checkpoint": str(tmp_path)}, "config.checkpoint"),
        ({"task": "imagenet"}, "config.task"),
        ({"task": "crc", "data_root": ""}, "config.data_root"),
        ({"protocols": ("svm",)}, "config.protocols"),
    ):
        config = _config(run, tmp_path)
        config.update(overrides)
        with pytest.raises(ConfigError, match=key):
            validate_eval(config)


def test_command_line_stops_on_a_missing_checkpoint(tmp_path):
    cmd = [
        sys.executable, "-m", "pathfm.main", "--config", "configs/eval/linear_probe.py:quick",
        "--workdir", str(tmp_path / "out"), f"--config.checkpoint={tmp_path / 'none'}",
    ]  # fmt: skip
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 2 and "config.checkpoint" in out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "out").exists()
