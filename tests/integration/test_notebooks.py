"""Notebooks stay runnable: each runs as a fresh Python process, as a user's kernel would run it,
started at the beginning of the suite beside the in-process tests (conftest's ``background`` marker)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import BACKGROUND, SHORT_JVM

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def run_notebooks() -> dict[str, subprocess.CompletedProcess]:
    """Every notebook, one process each, at the lowest priority (they run beside the suite)."""
    command = ["nice", "-n", "19", sys.executable, str(REPO / "tests" / "notebook_kernel.py")]
    return {
        notebook.stem: subprocess.run(
            [*command, str(notebook)], cwd=REPO, capture_output=True, text=True, env=SHORT_JVM
        )
        for notebook in NOTEBOOKS
    }


@pytest.mark.slow
@pytest.mark.background.with_args(run_notebooks)
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(notebook, request):
    code = "".join("".join(c["source"]) for c in json.loads(notebook.read_text())["cells"] if c["cell_type"] == "code")
    assert "import seg_spark" in code or "from seg_spark" in code
    done = request.node.stash[BACKGROUND].result(timeout=1800)[notebook.stem]
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    agreement = float(done.stdout.split("truth_adjusted_rand_index")[-1])
    assert agreement > 0.6
