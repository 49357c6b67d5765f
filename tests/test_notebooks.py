"""The notebooks in studies/notebooks (jupytext percent format) execute top to bottom, quickly."""
import os
import sys
from pathlib import Path

import pytest

jupytext = pytest.importorskip("jupytext")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "studies" / "notebooks").glob("*.py"))
DRAWS = {"error_study", "codebook_lab", "outliers", "kbit_3bit", "minilm_4bit"}  # notebooks with a figure cell


def test_there_are_the_four_notebooks():
    assert {p.stem for p in NOTEBOOKS} >= {"error_study", "codebook_lab", "outliers", "parity"}


def test_python3_kernelspec_resolves_to_this_interpreter():
    """nbclient starts the kernel named in the notebook; 'python3' must run an interpreter that has
    workbench and ipykernel (jupyter_client substitutes sys.executable for a bare 'python')."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager
    spec = KernelSpecManager().get_kernel_spec("python3")
    km = KernelManager(kernel_name="python3")
    cmd = km.format_kernel_cmd()
    assert spec.language == "python"
    assert Path(cmd[0]).resolve() == Path(sys.executable).resolve(), cmd


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_executes(path, monkeypatch):
    monkeypatch.setenv("KBIT_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("KBIT_PROGRESS", "0")
    monkeypatch.setenv("NUMBA_NUM_THREADS", os.environ.get("NUMBA_NUM_THREADS", "2"))
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's own (inline) backend, as in JupyterLab
    nb = jupytext.read(path)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    assert any(c.cell_type == "code" for c in nb.cells)
    client = nbclient.NotebookClient(nb, timeout=150, kernel_name="python3",
                                     resources={"metadata": {"path": str(path.parent)}})
    client.execute()  # raises CellExecutionError on the first failing cell
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    # every code cell ran, in order
    counts = [c.execution_count for c in nb.cells if c.cell_type == "code"]
    assert counts == list(range(1, len(counts) + 1))
    # figures are embedded: no study code switched the kernel away from the inline backend
    pngs = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    if path.stem in DRAWS:
        assert pngs >= 1, f"{path.name}: no image/png output"
    if path.stem == "error_study":   # the user's code (KBIT_CODEBOOKS, default linspace(-1,1,12)) is in its tables
        text = "".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/html", ""))
                       for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
        assert "linspace(-1,1,12)" in text, "error_study notebook: the custom code is missing from its tables"
