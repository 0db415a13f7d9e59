"""Slide quality control (slides.json and the start-up log): per slide its mpp and source, levels,
magnifications served and dropped with the reason, tissue fraction, or why it was rejected."""

import json

import numpy as np
import openslide
from testutil import TEST_SLIDES

from pathfm.data import slide_qc, slides, tissue
from pathfm.data.mask_cache import SlideInfo
from pathfm.data.sampler import SlideIndex
from pathfm.data.tissue_index import TissueIndex

CMU = TEST_SLIDES / "CMU-1-Small-Region.svs"
MPPS = (0.25, 0.5, 1.0, 2.0)  # data.mpps' default


def test_real_and_synthetic_slides_report_mpp_levels_magnifications_and_rejections(
    synthetic_slide_dir, tmp_path
):
    synthetic = sorted(synthetic_slide_dir.glob("*.tiff"))[0]
    small = TEST_SLIDES / "small.svs"
    manifest = tmp_path / "slides.csv"
    manifest.write_text(f"path,mpp\n{CMU},\n{synthetic},\n{small},\n")
    built = SlideIndex.build(slides.find_slides(str(manifest)), tissue.TissueConfig(), max(MPPS))
    index = TissueIndex.from_slide_infos(built.slides, built.rejected)

    lines = slide_qc.write_report(index, MPPS, tmp_path / "slides.json", str(manifest))
    report = json.loads((tmp_path / "slides.json").read_text())

    assert report["usable"] == [str(CMU), str(synthetic)]  # the keys readers had keep working
    assert [path for path, _ in report["rejected"]] == [str(small)]
    cmu, synth, rejected = report["slides"]
    assert cmu["mpp"] == 0.499 and cmu["mpp_source"] == "openslide.mpp-x"
    assert cmu["levels"] == [{"size": [2220, 2967], "downsample": 1.0, "mpp": 0.499}]
    assert cmu["served"] == {"0.5": 0, "1": 0, "2": 0}
    assert cmu["dropped"] == {"0.25": "needs upscaling: base 0.499 um/px"}
    assert 0.05 < cmu["tissue_fraction"] < 0.95  # H&E tissue on a white background
    assert synth["mpp"] == 0.25 and synth["dropped"] == {}
    assert synth["served"] == {"0.25": 0, "0.5": 1, "1": 2, "2": 3}
    assert [level["size"] for level in synth["levels"]] == [[2048, 2048], [1024, 1024],
                                                           [512, 512], [256, 256]]  # fmt: skip
    assert rejected["path"] == str(small) and "no tissue" in rejected["reason"]
    assert lines[0].startswith(
        "CMU-1-Small-Region.svs: 0.499 um/px (openslide.mpp-x), 1 level(s), tissue "
    )
    assert lines[0].endswith(
        "serves 0.5/1/2 um/px, drops 0.25 um/px (needs upscaling: base 0.499 um/px)"
    )
    assert lines[2].startswith("small.svs: rejected: no tissue")
    assert lines[3] == f"slide report: {tmp_path / 'slides.json'}"


def test_mpp_source_names_what_gave_the_resolution():
    assert slide_qc.mpp_source(openslide.OpenSlide(CMU).properties, 0.5) == "manifest"
    assert slide_qc.mpp_source({"tiff.ResolutionUnit": "centimeter", "tiff.XResolution": "4e4"}) \
        == "TIFF resolution"  # fmt: skip
    assert slide_qc.mpp_source({"openslide.objective-power": "20"}) == "objective power"
    assert slide_qc.mpp_source({"tiff.ResolutionUnit": "inch"}) is None


def test_many_slides_log_a_summary_and_are_not_opened(tmp_path):
    mask = np.ones((4, 4), bool)
    fine = [SlideInfo(f"/nowhere/{i}.svs", 0.25, 800, 400, (0.25, 1.0), mask, 8.0)
            for i in range(20)]  # fmt: skip
    coarse = SlideInfo("/nowhere/coarse.svs", 0.5, 800, 400, (0.5,), mask, 8.0)
    index = TissueIndex.from_slide_infos([*fine, coarse], [("/nowhere/bad.svs", "unreadable")])

    lines = slide_qc.write_report(index, (0.25, 1.0), tmp_path / "slides.json")

    assert lines == [
        "21 usable slides serve 0.25 um/px by 20, 1 um/px by 21; 1 drop a magnification (too "
        f"coarse); 1 rejected; per slide: {tmp_path / 'slides.json'}"
    ]
    first = json.loads((tmp_path / "slides.json").read_text())["slides"][0]
    assert first["mpp_source"] is None  # the slide (which does not exist) was not opened
    assert [level["size"] for level in first["levels"]] == [[800, 400], [200, 100]]
    assert first["tissue_fraction"] == 1.0
