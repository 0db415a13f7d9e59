"""The tour notebook (notebooks/pathfm_tour.ipynb): stored without outputs, and executed end to
end on its tiny configuration in a Jupyter kernel running this interpreter."""

import json
import sys

import nbformat
import pytest
from nbclient import NotebookClient
from testutil import REPO, xla_flags

NOTEBOOK = REPO / "notebooks" / "pathfm_tour.ipynb"
KERNEL = "pathfm-tour-test"
SECTIONS = ("install", "settings", "slides", "mags", "crops", "train", "attention", "pca", "export")


def _read():
    return nbformat.read(NOTEBOOK, as_version=nbformat.NO_CONVERT)


def test_notebook_is_stored_valid_and_without_outputs():
    nb = _read()
    nbformat.validate(nb)
    assert nb.nbformat == 4
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert all(cell.outputs == [] and cell.execution_count is None for cell in code)
    assert {cell.id for cell in nb.cells} >= set(SECTIONS)
    install = next(cell.source for cell in code if cell.id == "install")
    assert "google.colab" in install and "pip install" in install


def _kernel_spec(root):
    """A kernel spec for this interpreter, found first on JUPYTER_PATH (no global install)."""
    spec = root / "kernels" / KERNEL
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    kernel = {"argv": argv, "display_name": "pathfm test", "language": "python"}
    (spec / "kernel.json").write_text(json.dumps(kernel))


@pytest.mark.slow
def test_notebook_runs_end_to_end_on_the_tiny_configuration(tmp_path, monkeypatch):
    _kernel_spec(tmp_path / "jupyter")
    workdir = tmp_path / "run"
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("PATHFM_NOTEBOOK_TINY", "1")
    monkeypatch.setenv("PATHFM_NOTEBOOK_WORKDIR", str(workdir))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    # One CPU device, not the eight the test session emulates: the tiny run compiles faster.
    monkeypatch.setenv("XLA_FLAGS", xla_flags())
    nb = _read()
    client = NotebookClient(
        nb,
        kernel_name=KERNEL,
        timeout=300,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()  # raises CellExecutionError naming the cell on any error

    outputs = {cell.id: cell.outputs for cell in nb.cells if cell.cell_type == "code"}
    images = lambda cid: [o for o in outputs[cid] if "image/png" in o.get("data", {})]
    text = lambda cid: "".join(o.get("text", "") for o in outputs[cid])
    for cid in ("slides", "mags", "crops", "train", "attention", "pca"):
        assert images(cid), f"cell {cid!r} drew no figure"
    assert len(images("train")) == 1  # the live plot is one display, updated in place

    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 12
    assert sum("rankme" in r and "odcorr" in r for r in records) == 3  # every 4 steps
    assert "step 12" in text("train")

    export = workdir / "export"
    description = json.loads((export / "vit_tiny_patch16_224.json").read_text())
    assert description["step"] == 12 and description["backbone"] == "teacher"
    for name in ("vit_tiny_patch16_224.safetensors", "vit_tiny_patch16_224.pth", "hubconf.py"):
        assert (export / name).is_file()
    assert "largest |timm - pathfm|" in text("timm")
