"""The example notebooks (examples/*.ipynb): committed without outputs, and each one runs.

``test_notebook_runs`` (slow tier: it loads the real SmolLM2 model) executes a notebook with
nbclient in a temporary working folder, with ``POSTTRAIN_NOTEBOOK_QUICK=1`` (each notebook's
one knob for a 1-2 minute run), one torch thread and the hub offline, then reads the
``RESULTS {...}`` line the notebook's last cell prints.

The kernel is ipykernel's own ``python3`` spec (``KernelSpecManager(kernel_dirs=[])`` finds no
installed spec, so it falls back to ipykernel's, which runs ``sys.executable``): the notebook
runs on the interpreter and environment of pytest, whatever ``jupyter kernelspec list`` says.
No kernelspec needs to be installed.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
NOTEBOOKS = ["01_sft", "02_dpo_identity", "03_reward_model", "04_grpo_math", "05_ppo",
             "06_code_rewards"]
# keys each notebook's RESULTS line must hold (numbers, besides "quick")
EXPECTED = {
    "01_sft": ["accuracy_before", "accuracy_after", "boxed_before", "boxed_after",
               "eval_loss_before", "eval_loss_after"],
    "02_dpo_identity": ["identity_rate_before", "identity_rate_after", "pair_accuracy_after",
                        "eval_loss_before", "eval_loss_after"],
    "03_reward_model": ["pair_accuracy_before", "pair_accuracy_after",
                        "arithmetic_accuracy_after", "helpfulness_accuracy_after"],
    "04_grpo_math": ["accuracy_before", "accuracy_after", "reward_first", "reward_last"],
    "05_ppo": ["accuracy_before", "accuracy_after", "reward_first", "reward_last",
               "value_loss_last"],
    "06_code_rewards": ["pass_rate_before", "pass_rate_after", "mean_sample_reward",
                        "mean_best_of_k_reward", "kept"],
}
RATES = ("accuracy", "rate", "fraction", "reward")  # keys holding values in [0, 1]


def _notebook(name: str):
    return nbformat.read(EXAMPLES / f"{name}.ipynb", as_version=4)


def test_the_six_notebooks_exist():
    found = sorted(p.stem for p in EXAMPLES.glob("*.ipynb"))
    assert found == NOTEBOOKS


def test_notebook_outputs_are_stripped():
    for path in sorted(EXAMPLES.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        assert "widgets" not in nb.metadata, f"{path.name}: widget state in the metadata"
        for i, cell in enumerate(nb.cells):
            assert "widgets" not in cell.metadata, f"{path.name} cell {i}: widget state"
            assert "execution" not in cell.metadata, f"{path.name} cell {i}: execution times"
            if cell.cell_type == "code":
                assert cell.outputs == [], f"{path.name} cell {i} has outputs: strip them"
                assert cell.execution_count is None, f"{path.name} cell {i}: execution_count"


def test_each_notebook_has_the_quick_knob_first():
    for name in NOTEBOOKS:
        first = next(c for c in _notebook(name).cells if c.cell_type == "code")
        assert 'QUICK = os.environ.get("POSTTRAIN_NOTEBOOK_QUICK", "0") == "1"' in first.source
        assert "fresh_output_dir(" in first.source, f"{name}: re-runs need a fresh output_dir"


def _stdout(nb) -> str:
    return "".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code"
                   for out in cell.outputs if out.output_type == "stream")


def _has_image(nb) -> bool:
    return any("image/png" in out.get("data", {}) for cell in nb.cells
               if cell.cell_type == "code" for out in cell.outputs)


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name, tmp_path):
    pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient

    from posttrain.notebook import parse_results

    workdir = tmp_path / "work"
    workdir.mkdir()
    shutil.copy(EXAMPLES / f"{name}.ipynb", workdir)
    nb = nbformat.read(workdir / f"{name}.ipynb", as_version=4)
    env = {**os.environ,
           "POSTTRAIN_NOTEBOOK_QUICK": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "MPLBACKEND": "Agg",
           "POSTTRAIN_REPO_ROOT": str(ROOT),                       # recipes/ and their data
           "POSTTRAIN_NOTEBOOK_OUTPUT": str(tmp_path / "outputs"),  # runs go here, not the repo
           "POSTTRAIN_CACHE": os.environ["POSTTRAIN_CACHE"]}       # the converted model, once
    manager = KernelManager(kernel_name="python3",
                            kernel_spec_manager=KernelSpecManager(kernel_dirs=[]))
    assert manager.kernel_spec.argv[0] == sys.executable
    client = NotebookClient(nb, km=manager, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(workdir)}})
    start = time.perf_counter()
    try:
        client.execute(env=env)
    finally:
        nbformat.write(nb, tmp_path / f"{name}.executed.ipynb")  # to read when it fails
        # nbclient leaves a kernel it did not start alive: each would keep its model (GBs)
        if manager.has_kernel:
            manager.shutdown_kernel(now=True)
    print(f"{name}: executed in {time.perf_counter() - start:.0f} s")

    results = parse_results(_stdout(nb))
    assert results["quick"] is True
    for key in EXPECTED[name]:
        value = results[key]
        assert isinstance(value, (int, float)) and math.isfinite(value), (key, value)
        if any(word in key for word in RATES):
            assert 0.0 <= value <= 1.0, (key, value)
    if name == "06_code_rewards":  # the sandboxed reward on hand-written programs
        scores = results["hand_written_rewards"]
        assert scores.pop("right") == 1.0 and 0.0 < scores.pop("partly wrong") < 1.0, scores
        assert set(scores.values()) == {0.0}, scores  # errors, loops and hacks earn nothing
    assert _has_image(nb), "the live plot showed no figure"
    assert (tmp_path / "outputs" / name).is_dir()
