"""``posttrain report``: real tiny runs (SFT, GRPO) and a hand-written pipeline folder become
PNGs that decode and one self-contained HTML page; a headless browser shows every plot."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import ARITHMETIC_PAIRS, write_jsonl

from posttrain.cli import main
from posttrain.report.runs import Run, read_metrics

EXPECTED_PLOTS = {"loss", "rewards", "kl", "eval", "completion_length", "learning_rate"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A tiny SFT run and a tiny GRPO run, both with evaluations, made through the CLI."""
    root = tmp_path_factory.mktemp("report-runs")
    chats = write_jsonl(root / "chats.jsonl", [
        {"messages": [{"role": "user", "content": f"What is {a} + {b}?"},
                      {"role": "assistant", "content": f"The answer is {a + b}."}]}
        for a, b in ARITHMETIC_PAIRS])
    prompts = write_jsonl(root / "prompts.jsonl", [
        {"prompt": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(8)])
    common = ["model=random:tiny", "progress=false", "eval_steps=2"]
    assert main(["sft", *common, f"train_data={chats}", f"eval_data={chats}",
                 f"output_dir={root / 'sft'}", "max_steps=4", "per_device_batch_size=4"]) == 0
    assert main(["grpo", *common, f"train_data={prompts}", f"eval_data={prompts}",
                 f"output_dir={root / 'grpo'}", "max_steps=4", "max_new_tokens=4",
                 "num_generations=2", "prompts_per_step=2", "eval_max_samples=2"]) == 0
    return {"sft": root / "sft", "grpo": root / "grpo"}


def copy_run(source: Path, target: Path, config: bool = True) -> Path:
    """A run dir with just what the report reads (no weights)."""
    target.mkdir(parents=True)
    shutil.copy(source / "metrics.jsonl", target / "metrics.jsonl")
    if config:
        shutil.copy(source / "posttrain_config.yaml", target / "posttrain_config.yaml")
    return target


@pytest.fixture(scope="module")
def pipeline(runs, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pipeline") / "course"
    copy_run(runs["sft"], folder / "sft")
    copy_run(runs["grpo"], folder / "grpo", config=False)  # as if still running
    summary = {
        "name": "course",
        "columns": ["base", "sft", "dpo", "grpo"],
        "rows": [{"metric": "arithmetic/accuracy", "values": [0.215, 0.3, None, 0.4]},
                 {"metric": "identity/identity_rate", "values": [0.0, 0.0, 1.0, 0.94]}],
        "stages": [{"name": "sft", "type": "sft", "output": "sft", "status": "done",
                    "seconds": 301.2},
                   {"name": "dpo", "type": "dpo", "output": "dpo", "status": "failed"},
                   {"name": "grpo", "type": "grpo", "output": "grpo", "status": "done",
                    "seconds": 4000}],
        "model": "random:tiny",
        "answers": [{"suite": "arithmetic", "prompt": "What is 2+3?", "base": "5",
                     "sft": "The answer is 5.",
                     "dpo": "<script>alert(1)</script>", "grpo": "5 & done"}],
    }
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


@pytest.fixture(scope="module")
def report(runs, pipeline, tmp_path_factory) -> Path:
    """One report over both runs and the pipeline (4 runs overlaid)."""
    out = tmp_path_factory.mktemp("report")
    code = main(["report", str(runs["sft"]), str(runs["grpo"]), str(pipeline),
                 "--output", str(out), "--title", "Tiny <runs> & co"])
    assert code == 0
    return out / "index.html"


def test_report_writes_decodable_pngs_one_img_each(report):
    from matplotlib.image import imread

    pngs = sorted(report.parent.glob("*.png"))
    assert {p.stem for p in pngs} == EXPECTED_PLOTS
    for png in pngs:
        pixels = imread(png)
        assert pixels.shape[0] > 100 and pixels.shape[1] > 500
    page = report.read_text()
    embedded = re.findall(r'<img class="plot"[^>]*src="data:image/png;base64,([^"]+)"', page)
    assert len(embedded) == len(pngs)
    assert {base64.b64decode(data) for data in embedded} == {p.read_bytes() for p in pngs}


def test_page_is_self_contained_and_escaped(report, runs):
    page = report.read_text()
    assert "<title>Tiny &lt;runs&gt; &amp; co</title>" in page
    assert not re.search(r'(src|href)="(https?:)?//', page) and "<link" not in page
    assert '<p id="plots-status">' in page
    # per-run summary, config and eval table
    for name in ("sft", "grpo", "course/sft", "course/grpo"):
        assert f">{name}</a>" in page
    assert page.count("<details><summary>config (posttrain_config.yaml)</summary>") == 3
    assert "train_data:" in page and "No posttrain_config.yaml yet" in page
    assert "<th>eval/loss</th>" in page and "<th>eval/rewards/math/mean</th>" in page
    # the pipeline: before/after with change vs base, stages, escaped answers
    assert "Pipeline course" in page and "Before / after" in page and "random:tiny" in page
    assert "0.3 <span class=\"up\">(+0.085)</span>" in page
    assert "0.94 <span class=\"up\">(+0.94)</span>" in page
    assert "train) for: dpo." in page and "<th>suite</th>" in page
    assert "1 h 06 min" in page  # the grpo stage's 4000 s
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>alert" not in page
    assert "5 &amp; done" in page


def test_torn_line_default_output_and_stale_plots(runs, tmp_path, capsys):
    run = copy_run(runs["sft"], tmp_path / "live")
    with (run / "metrics.jsonl").open("a") as handle:
        handle.write('{"step": 5, "elapsed_s": 1.2, "lo')  # a run being written
    records, skipped = read_metrics(run / "metrics.jsonl")
    assert skipped == 1 and records[-1]["step"] == 4
    (run / "report").mkdir()
    (run / "report" / "kl.png").write_bytes(b"left from an earlier report")
    capsys.readouterr()
    assert main(["report", str(run)]) == 0
    index = run / "report" / "index.html"
    assert capsys.readouterr().out.strip() == str(index)
    assert {p.stem for p in index.parent.glob("*.png")} == {"loss", "learning_rate"}
    assert "1 invalid line(s) in metrics.jsonl skipped" in index.read_text()


def test_wall_time_keeps_rising_across_a_resume():
    records = [{"step": 1, "elapsed_s": 60.0, "loss": 3.0},
               {"step": 2, "elapsed_s": 120.0, "loss": 2.0},
               {"step": 2, "elapsed_s": 6.0, "loss": 1.5},  # resumed: the clock restarted
               {"step": 3, "elapsed_s": 66.0, "loss": float("nan")},
               {"step": 4, "elapsed_s": 126.0, "loss": 1.0}]
    run = Run("r", Path("r"), records)
    assert [(p.step, p.minutes, p.value) for p in run.series("loss")] == [
        (1, 1.0, 3.0), (2, 2.1, 1.5), (4, 4.1, 1.0)]
    assert run.wall_s == pytest.approx(246.0) and run.last_step == 4


def test_mistakes_exit_2_naming_the_folder(runs, tmp_path, capsys):
    missing = tmp_path / "no-such-run"
    assert main(["report", str(missing)]) == 2
    err = capsys.readouterr().err.strip()
    assert str(missing) in err and "does not exist" in err and "\n" not in err
    copy_run(runs["sft"], tmp_path / "parent" / "child")
    assert main(["report", str(tmp_path / "parent")]) == 2
    err = capsys.readouterr().err
    assert "neither metrics.jsonl" in err and str(tmp_path / "parent" / "child") in err
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "summary.json").write_text('{"name": "x", "col')
    assert main(["report", str(tmp_path / "half")]) == 2
    assert "summary.json is not valid JSON" in capsys.readouterr().err


def find_browser() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def test_browser_shows_every_plot(report, tmp_path):
    from matplotlib.image import imread

    browser = find_browser()
    if browser is None:
        if os.environ.get("POSTTRAIN_REQUIRE_BROWSER") == "1":
            pytest.fail("POSTTRAIN_REQUIRE_BROWSER=1 but no chromium binary on PATH "
                        "(apt-get install -y chromium)")
        pytest.skip("no chromium binary (apt-get install -y chromium)")
    base = [browser, "--headless", "--no-sandbox", "--disable-gpu",
            f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,2000"]
    url = report.resolve().as_uri()
    shot = tmp_path / "shot.png"
    subprocess.run([*base, f"--screenshot={shot}", url], check=True, timeout=120,
                   capture_output=True)
    assert imread(shot).shape[:2] == (2000, 1280)
    dom = subprocess.run([*base, "--dump-dom", url], check=True, timeout=120,
                         capture_output=True, text=True).stdout
    n = len(list(report.parent.glob("*.png")))
    assert n == len(EXPECTED_PLOTS)
    assert f'<p id="plots-status">{n} of {n} plots shown</p>' in dom
