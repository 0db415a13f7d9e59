"""`python -m pathfm.preview`: the QC gallery of a slide set, without a run, on the real CC0 slide,
the two odd fixtures and synthetic slides. No headless browser can be installed here without a
download, so the page is checked as a browser would load it: parsed, every image it references
decoded, every QC field and rejection shown."""

import json
import shutil
from html.parser import HTMLParser

import cv2
import numpy as np
from testutil import TEST_SLIDES

from pathfm import preview
from pathfm.data import slide_qc
from pathfm.data import slides as slides_lib
from pathfm.data.sampler import PatchSampler
from pathfm.data.tissue_index import TissueIndex

MPPS = "0.25,0.5,2"
GRID = 4 * (preview.PATCH_CELL + 2) + 2  # 16 patches: 4 x 4 cells of PATCH_CELL px, 2 px padding


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.links, self.text = [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs)
        if tag == "a":
            self.links.append(attrs["href"])

    def handle_data(self, data):
        self.text.append(data)


def test_gallery_of_real_odd_and_synthetic_slides(
    synthetic_slide_dir, tmp_path, capsys, monkeypatch
):
    # As with more than 20 slides: the run's QC report does not reopen them; the preview does.
    monkeypatch.setattr(slide_qc, "OPENED", 0)
    slides = tmp_path / "slides"
    slides.mkdir()
    for name in ("CMU-1-Small-Region.svs", "small.svs", "boxes.tiff"):
        shutil.copy(TEST_SLIDES / name, slides / name)
    synthetic = sorted(synthetic_slide_dir.glob("*.tiff"))[0]
    shutil.copy(synthetic, slides / "synthetic.tiff")
    out = tmp_path / "preview"

    argv = ["--slides", str(slides), "--out", str(out), "--mpps", MPPS, "--patch-size", "96"]
    assert preview.main([*argv, "--workers", "2"]) == 0
    assert "2 usable, 2 rejected slide(s)" in capsys.readouterr().out

    report = json.loads((out / "slides.json").read_text())
    by_name = {s["path"].rsplit("/", 1)[-1]: s for s in report["slides"]}
    assert by_name["CMU-1-Small-Region.svs"]["dropped"] == {
        "0.25": "needs upscaling: base 0.499 um/px"
    }
    assert by_name["synthetic.tiff"]["served"] == {"0.25": 0, "0.5": 1, "2": 3}
    assert by_name["CMU-1-Small-Region.svs"]["mpp_source"] == "openslide.mpp-x"
    assert by_name["CMU-1-Small-Region.svs"]["levels"][0]["size"] == [2220, 2967]
    assert [lv["size"] for lv in by_name["synthetic.tiff"]["levels"]] == [
        [2048, 2048],
        [1024, 1024],
        [512, 512],
        [256, 256],
    ]
    assert "implausible resolution" in by_name["boxes.tiff"]["reason"]
    assert "no tissue" in by_name["small.svs"]["reason"]

    page = _Page()
    page.feed((out / "index.html").read_text())
    text = " ".join(page.text)
    for expected in (
        "2 usable and 2 rejected",
        "CMU-1-Small-Region.svs",
        "0.499 um/px (openslide.mpp-x)",
        "drops 0.25 um/px: needs upscaling",
        "not served",  # the CMU slide's 0.25 um/px column
        "implausible resolution",
        "no tissue found",
    ):
        assert expected in text, expected
    assert page.links == ["slides.json"]
    # The real slide: a thumbnail and 2 grids (0.25 is not served); the synthetic one: 1 + 3.
    sources = [img["src"] for img in page.images]
    assert len(sources) == 3 + 4 and all(img["loading"] == "lazy" for img in page.images)
    for src in sources:
        image = cv2.imread(str(out / src))
        assert image is not None, src
        if "patches_" in src:
            assert image.shape == (GRID, GRID, 3), src
        else:  # the thumbnail: longer side THUMB_SIDE, the tissue mask tinted blue
            assert max(image.shape[:2]) == preview.THUMB_SIDE, src
            blue = (image[..., 0].astype(int) - image[..., 2]) > 60
            assert 0.03 < blue.mean() < 0.97, src

    # The pool's grids are the in-process ones: the draws depend on (seed, slide, mpp) only.
    index = TissueIndex.load(next((out / "slide_index").glob("index-*")).as_posix())
    sampler = PatchSampler(index, 96, (0.25, 0.5, 2.0))
    cmu = next(i for i in range(len(index)) if index.path(i).endswith(".svs"))
    again = preview.patch_grid(sampler, cmu, 0.5, 16, seed=0)
    stored = cv2.cvtColor(cv2.imread(str(out / sources[1])), cv2.COLOR_BGR2RGB)
    assert "patches_0.5" in sources[1]
    error = np.abs(again.astype(int) - stored).mean()
    assert error < 15, error  # JPEG round trip (~5); another draw differs by ~65

    # Each grid cell is a patch the sampler could train on: mostly tissue, read at its mpp.
    cell = again[2 : 2 + preview.PATCH_CELL, 2 : 2 + preview.PATCH_CELL]
    handle = sampler.handles.get(index.path(cmu))
    assert cell.std() > 10 and handle.dimensions == (2220, 2967)
    assert slides_lib.slide_mpp(handle.properties) == 0.499


def test_bad_arguments_stop_with_a_clear_error(tmp_path, capsys):
    missing = tmp_path / "nothing"
    assert preview.main(["--slides", str(missing), "--out", str(tmp_path / "o")]) == 2
    assert str(missing) in capsys.readouterr().err
    config = ["--slides", str(TEST_SLIDES), "--out", str(tmp_path / "o"), "--config", "nope.py"]
    assert preview.main(config) == 2
    assert "no such config file" in capsys.readouterr().err
