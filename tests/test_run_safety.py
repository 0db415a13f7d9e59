"""Runs that never lose or mix data (issue 14), through the real command line: a rerun with
another architecture is refused and touches nothing; allowed changes resume and are recorded;
export and evaluation skip a damaged newest checkpoint; a read-only or full disk, a bad key and
bad data each end with one line and exit code 2, and a refused run leaves no workdir behind."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from testutil import REPO, TEST_SLIDES, cli_command, run_cli

from pathfm.main import main
from pathfm.train.metrics_log import read_metrics

CMU = TEST_SLIDES / "CMU-1-Small-Region.svs"
QUICKSTART = str(REPO / "configs" / "quickstart.py")
SHORT = ["--config.steps_per_epoch=12", "--config.checkpoint.every_steps=4"]


def _one_line_error(stderr: str) -> str:
    """The run's one error line; fails on a traceback or several error lines."""
    assert "Traceback" not in stderr and "Event loop is closed" not in stderr, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("pathfm: error:")]
    assert len(errors) == 1, stderr[-3000:]
    return errors[0]


def _snapshot(folder: Path) -> dict[str, str]:
    """{relative path: sha1} of every file (the lock file is rewritten by each run)."""
    return {
        str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".pathfm.lock"
    }


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("jax_cache")


@pytest.fixture(scope="module")
def finished(tmp_path_factory, synthetic_slide_dir, cache):
    """A finished 12-step run with checkpoints 4, 8 and 12."""
    workdir = tmp_path_factory.mktemp("finished") / "run"
    done = run_cli(cli_command(workdir, synthetic_slide_dir, *SHORT), cache)
    assert done.returncode == 0, done.stderr[-3000:]
    return workdir


@pytest.fixture
def run(finished, tmp_path):
    """A copy of the finished run to attack."""
    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    return copy


@pytest.mark.slow
def test_a_changed_architecture_is_refused_and_touches_nothing(
    run, finished, synthetic_slide_dir, cache
):
    before = _snapshot(run)
    extra = [*SHORT, "--config.model.embed_dim=64", "--config.seed=1", "--config.epochs=2"]
    refused = run_cli(cli_command(run, synthetic_slide_dir, *extra), cache)
    assert refused.returncode == 2
    line = _one_line_error(refused.stderr)
    assert "model.embed_dim: 32 -> 64" in line and "seed: 0 -> 1" in line
    assert "epochs" not in line  # an allowed change is not a reason to refuse
    assert "--workdir" in line
    assert _snapshot(run) == before  # checkpoints, config.json, metrics.jsonl, events untouched
    assert not (run / "checkpoints_damaged").exists()

    # Without config.json to compare with, the checkpoint itself tells: still never "damaged".
    (run / "config.json").unlink()
    refused = run_cli(cli_command(run, synthetic_slide_dir, *extra), cache)
    assert refused.returncode == 2
    assert "checkpoint 12" in _one_line_error(refused.stderr) and "another model" in refused.stderr
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["12", "4", "8"]
    assert not (run / "checkpoints_damaged").exists()
    assert read_metrics(run / "metrics.jsonl") == read_metrics(finished / "metrics.jsonl")


@pytest.mark.slow
def test_allowed_changes_resume_and_are_recorded(run, synthetic_slide_dir, cache):
    extra = ["--config.steps_per_epoch=16", "--config.checkpoint.every_steps=4"]
    resumed = run_cli(cli_command(run, synthetic_slide_dir, *extra), cache)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from step 12" in resumed.stderr
    assert "steps_per_epoch: 12 -> 16" in resumed.stderr
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == list(range(1, 17))
    (change,) = [
        json.loads(line) for line in (run / "config_changes.jsonl").read_text().splitlines()
    ]
    assert change["from_step"] == 12 and change["changes"] == {"steps_per_epoch": [12, 16]}
    assert json.loads((run / "config.json").read_text())["steps_per_epoch"] == 16


def _truncate_newest(run: Path) -> None:
    """Cuts every array file of checkpoint 12 short, as a full disk or a bad copy would."""
    files = [p for p in (run / "checkpoints" / "12" / "state").rglob("d/*") if p.is_file()]
    assert files
    for path in files:
        os.truncate(path, 100)


@pytest.mark.slow
def test_export_and_eval_skip_a_damaged_newest_checkpoint(
    run, tmp_path, synthetic_slide_dir, cache
):
    _truncate_newest(run)
    export = [sys.executable, "-m", "pathfm.main", "--config", "configs/export.py"]
    out = tmp_path / "export"
    # the former key name is still accepted
    done = run_cli([*export, f"--config.checkpoint_dir={run}", f"--config.output={out}"], cache)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "Event loop is closed" not in done.stderr
    warned = [line for line in done.stderr.splitlines() if "cannot be read" in line]
    assert len(warned) == 1 and "checkpoint 12" in warned[0] and "--config.step" in warned[0]
    (meta,) = out.glob("*.json")
    assert json.loads(meta.read_text())["step"] == 8

    evaluate = [sys.executable, "-m", "pathfm.main", "--config", "configs/eval/knn.py"]
    evaluated = run_cli(
        [*evaluate, f"--config.checkpoint={run}", "--workdir", str(tmp_path / "eval"),
         f"--config.data_root={synthetic_slide_dir}", "--config.synthetic.per_class=4"],
        cache,
    )  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert "Traceback" not in evaluated.stderr and "checkpoint 12" in evaluated.stderr
    assert json.loads((tmp_path / "eval" / "results.json").read_text())["step"] == 8

    chosen = run_cli(
        [*export, f"--config.checkpoint={run}", f"--config.output={out}2", "--config.step=12"],
        cache,
    )
    assert chosen.returncode == 2
    line = _one_line_error(chosen.stderr)
    assert "checkpoint 12" in line and "cannot be read" in line and "[12, 8, 4]" in line
    assert not (tmp_path / "export2").exists()


def _mount_tmpfs(path: Path, options: str) -> None:
    """Mounts a tmpfs at `path`, or skips the test where the platform does not allow it."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.decode().strip()}")


@pytest.fixture
def mount_point(tmp_path):
    point = tmp_path / f"mnt-{uuid.uuid4().hex[:6]}"
    yield point
    subprocess.run(["umount", str(point)], capture_output=True)


def test_a_read_only_workdir_is_one_line(mount_point, synthetic_slide_dir, cache):
    if os.geteuid() == 0:
        _mount_tmpfs(mount_point, "ro,size=1m")  # root writes anywhere a chmod forbids
    else:
        mount_point.mkdir()
        mount_point.chmod(0o555)
    refused = run_cli(cli_command(mount_point / "run", synthetic_slide_dir), cache)
    assert refused.returncode == 2
    line = _one_line_error(refused.stderr)
    assert str(mount_point / "run") in line and "writable --workdir" in line


@pytest.mark.slow
def test_a_full_disk_stops_with_one_line_and_the_rerun_resumes(
    finished, mount_point, synthetic_slide_dir, cache
):
    _mount_tmpfs(mount_point, "size=24m")
    run = mount_point / "run"
    shutil.copytree(finished, run)
    filler = mount_point / "filler"
    with open(filler, "wb") as f:  # leave about 64 KB: log lines fit, a checkpoint does not
        free = shutil.disk_usage(mount_point).free
        f.write(b"\0" * max(free - 64 * 1024, 0))
    extra = ["--config.steps_per_epoch=20", "--config.checkpoint.every_steps=4"]
    full = run_cli(cli_command(run, synthetic_slide_dir, *extra), cache)
    assert full.returncode == 2, full.stderr[-3000:]
    line = _one_line_error(full.stderr)
    assert "no space left" in line and "rerun the same command to resume" in line
    assert {"4", "8", "12"} <= {p.name for p in (run / "checkpoints").iterdir()}

    filler.unlink()
    resumed = run_cli(cli_command(run, synthetic_slide_dir, *extra), cache)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from step 12" in resumed.stderr
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == list(range(1, 21))
    assert not list((run / "checkpoints").glob("*.orbax-checkpoint-tmp*"))


def _readme_own_slides_command() -> list[str]:
    """The README's command that trains the quick start on one's own slides."""
    readme = (REPO / "README.md").read_text()
    block = readme.split("## Training on your own slides", 1)[1].split("```bash", 1)[1]
    lines = block.split("```", 1)[0].replace("\\\n", " ").splitlines()
    (command,) = [line for line in lines if "configs/quickstart.py" in line]
    return command.split("#", 1)[0].split()


@pytest.mark.slow
def test_the_readme_own_slides_command_runs_the_quickstart_on_a_real_slide(tmp_path, cache):
    argv = _readme_own_slides_command()
    assert argv[:3] == ["python", "-m", "pathfm.main"]
    argv = [
        a.replace("/data/slides", str(CMU)).replace("runs/mine", str(tmp_path / "mine"))
        for a in argv
    ]
    shorter = [
        "--config.epochs=1", "--config.steps_per_epoch=4", "--config.monitor.every_steps=4",
        "--config.model.depth=1", "--config.monitor.num_patches=16",
        "--config.monitor.batch_size=16",
    ]  # fmt: skip
    done = run_cli([sys.executable, *argv[1:], *shorter], cache)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "online kNN is off" in done.stderr
    records = read_metrics(tmp_path / "mine" / "metrics.jsonl")
    assert records[-1]["step"] == 4 and "rankme" in records[-1]
    assert json.loads((tmp_path / "mine" / "slides.json").read_text())["usable"] == [str(CMU)]


def test_unusable_slides_stop_before_a_workdir_is_left(tmp_path, cache):
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("a.svs", "b.tif"):
        (bad / name).write_bytes(os.urandom(5000))
    refused = run_cli(cli_command(tmp_path / "run", bad), cache)
    assert refused.returncode == 2
    assert "None of the 2 slide(s) is usable" in refused.stderr
    assert not (tmp_path / "run").exists()

    coarse = run_cli(cli_command(tmp_path / "run", CMU, "--config.data.mpps=(0.25,)"), cache)
    assert coarse.returncode == 2
    line = _one_line_error(coarse.stderr)
    assert "config.data.mpps" in line and "0.499 um/px (1 slide)" in line
    # what was computed for the slide stays for the next run; nothing else does
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["slide_index"]


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--config.bogus_key=1"], "unknown config key config.bogus_key (--config.bogus_key=1)"),
        (["--config.data.slide=x"], "did you mean config.data.slides?"),
        (["--config.data.mpps=abc"], "config.data.mpps: expected numbers"),
        (["--config.data.mpps=(0.5,abc)"], "config.data.mpps: expected numbers"),
        (["--config.model.size=huge"], "use one of tiny, small, base, large, giant"),
        (["--config.crops.global_size=128", "--config.model.img_size=128"], "data.patch_size"),
        (["--config.data.slides=/nonexistent/slides"], "/nonexistent/slides does not exist"),
    ],
)
def test_bad_input_is_one_clean_line_and_creates_nothing(
    args, expected, tmp_path, capsys, monkeypatch
):
    workdir = tmp_path / "run"
    argv = ["pathfm", "--config", QUICKSTART, "--workdir", str(workdir), *args]
    monkeypatch.setattr(sys, "argv", argv)  # ml_collections reads config overrides from it
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    line = _one_line_error(capsys.readouterr().err)
    assert expected in line
    assert "'\\n" not in line and "\"'" not in line  # no raw reprs
    assert not workdir.exists()


def test_a_bad_config_argument_names_the_file_and_the_choices(tmp_path, capsys, monkeypatch):
    config = f"{REPO / 'configs' / 'dino_vits16.py'}:bogus"
    argv = ["pathfm", "--config", config, "--workdir", str(tmp_path / "w")]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit):
        main(argv)
    line = _one_line_error(capsys.readouterr().err)
    assert line == (
        f"pathfm: error: --config={REPO / 'configs' / 'dino_vits16.py'}: unknown config "
        "argument 'bogus'; use 'quick' or nothing"
    )
    assert not (tmp_path / "w").exists()
