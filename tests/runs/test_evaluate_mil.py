"""Slide-level MIL runs: the synthetic slide task, slide-label manifests and the config checks.
(The end-to-end run on a pre-trained checkpoint is in test_pretraining_helps.py.)"""

import csv

import pytest

from pathfm.data import slides as slides_lib
from pathfm.data.synthetic import TISSUE_CLASSES, load_annotation
from pathfm.errors import ConfigError, DataError
from pathfm.evaluation.synthetic_slide_task import synthetic_slide_task
from pathfm.runs.evaluate_mil import _labels, mil_config, validate_mil


def test_synthetic_slide_task_labels_slides_by_tumour_presence(tmp_path):
    manifest = synthetic_slide_task(tmp_path / "slides", n_slides=6, size=512, mpp=0.5)
    with open(manifest) as f:
        rows = list(csv.DictReader(f))
    assert [r["label"] for r in rows] == ["normal"] * 3 + ["tumor"] * 3
    for row in rows:
        classes = {r.label for r in load_annotation(manifest.parent / row["path"]).regions}
        expected = set(TISSUE_CLASSES) - ({"tumor"} if row["label"] == "normal" else set())
        assert classes == expected
    stamp = manifest.parent.joinpath(rows[0]["path"]).stat().st_mtime_ns
    assert synthetic_slide_task(tmp_path / "slides", n_slides=6, size=512, mpp=0.5) == manifest
    assert manifest.parent.joinpath(rows[0]["path"]).stat().st_mtime_ns == stamp  # kept
    with pytest.raises(DataError, match="even"):
        synthetic_slide_task(tmp_path / "odd", n_slides=3)


def _manifest(tmp_path, rows, header=("path", "label")):
    for path, *_ in rows:
        (tmp_path / path).write_bytes(b"")
    file = tmp_path / "labels.csv"
    with open(file, "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    return file


def test_manifest_labels_follow_the_slide_order_and_class_list(tmp_path):
    file = _manifest(tmp_path, [("b.svs", "pos"), ("a.svs", "neg"), ("c.svs", "pos")])
    config = mil_config()
    by_path, classes = _labels(config, file)
    assert classes == ("neg", "pos")
    assert by_path == {
        str(tmp_path / n): lab for n, lab in (("b.svs", "pos"), ("a.svs", "neg"), ("c.svs", "pos"))
    }
    linked = tmp_path.parent / f"{tmp_path.name}-link"  # keys stay unresolved, as stored
    linked.symlink_to(tmp_path)
    assert set(_labels(config, linked / "labels.csv")[0]) == {
        str(linked / n) for n in ("a.svs", "b.svs", "c.svs")
    }
    config.classes = ("pos", "neg")  # the second class is the AUC's positive one
    assert _labels(config, file)[1] == ("pos", "neg")
    config.classes = ("pos", "other")
    with pytest.raises(ConfigError, match="lacks the manifest's labels"):
        _labels(config, file)


def test_manifest_label_errors_name_the_column_and_line(tmp_path):
    file = _manifest(tmp_path, [("a.svs", "x")], header=("path", "diagnosis"))
    with pytest.raises(DataError, match="no 'label' column"):
        _labels(mil_config(), file)
    file = _manifest(tmp_path, [("a.svs", "x"), ("b.svs", "")])
    with pytest.raises(DataError, match="line 3: empty 'label'"):
        slides_lib.manifest_column(str(file), "label")
    file = _manifest(tmp_path, [("a.svs", "x"), ("b.svs", "x")])
    with pytest.raises(DataError, match="one class"):
        _labels(mil_config(), file)


def test_bad_mil_configs_are_named(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    config = mil_config()
    config.checkpoint = str(tmp_path)
    with pytest.raises(ConfigError, match="has no complete checkpoint yet"):
        validate_mil(config)  # before any work (it used to fail after creating the workdir)
    (tmp_path / "checkpoints" / "5").mkdir(parents=True)  # a committed step, as orbax names it
    for overrides, key in (
        ({"checkpoint": ""}, "config.checkpoint"),
        ({"manifest": str(tmp_path / "missing.csv")}, "config.manifest"),
        ({"features": "pooled"}, "config.features"),
        ({"tile_mpp": -1.0}, "tile_mpp"),
        ({"min_tissue_fraction": 2.0}, "min_tissue_fraction"),
    ):
        config = mil_config()
        config.checkpoint = str(tmp_path)
        config.update(overrides)
        with pytest.raises(ConfigError, match=key):
            validate_mil(config)
    config = mil_config()
    config.checkpoint = str(tmp_path)
    config.mil.selection = "best_train"
    with pytest.raises(ConfigError, match=r"config\.mil"):
        validate_mil(config)
