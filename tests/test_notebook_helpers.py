"""posttrain.notebook: the example notebooks' helpers, without a model or a kernel."""

from __future__ import annotations

import math

import pytest

from posttrain import notebook
from posttrain.notebook import (
    LivePlot,
    Table,
    answers_table,
    format_value,
    fresh_output_dir,
    marked,
    numbers_table,
    parse_results,
    quick_mode,
    repo_root,
    results_line,
    shorten,
)
from posttrain.train.trainer import Callback


def test_quick_mode_reads_the_one_variable():
    assert quick_mode({"POSTTRAIN_NOTEBOOK_QUICK": "1"}) is True
    assert quick_mode({"POSTTRAIN_NOTEBOOK_QUICK": "0"}) is False
    assert quick_mode({}) is False


def test_repo_root_walks_up_to_recipes(tmp_path, monkeypatch):
    monkeypatch.delenv(notebook.ROOT_ENV, raising=False)
    (tmp_path / "recipes").mkdir()
    deep = tmp_path / "examples" / "sub"
    deep.mkdir(parents=True)
    assert repo_root(deep) == tmp_path.resolve()
    monkeypatch.chdir(deep)
    assert repo_root() == tmp_path.resolve()


def test_repo_root_env_wins_and_missing_root_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv(notebook.ROOT_ENV, str(tmp_path))
    assert repo_root("/") == tmp_path.resolve()
    monkeypatch.delenv(notebook.ROOT_ENV)
    with pytest.raises(FileNotFoundError, match=notebook.ROOT_ENV):
        repo_root(tmp_path, marker="no-such-folder-anywhere")


def test_fresh_output_dir_removes_a_previous_run_only(tmp_path, monkeypatch):
    monkeypatch.setenv(notebook.OUTPUT_ENV, str(tmp_path / "runs"))
    folder = fresh_output_dir("01_sft")
    assert folder == tmp_path / "runs" / "01_sft" and not folder.exists()
    (folder / "checkpoints" / "step-000002").mkdir(parents=True)
    (folder / "metrics.jsonl").write_text("{}\n")
    assert not fresh_output_dir("01_sft").exists()  # a re-run starts clean
    other = tmp_path / "runs" / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        fresh_output_dir("mine")
    assert (other / "notes.txt").exists()


def test_fresh_output_dir_defaults_under_the_repository(tmp_path, monkeypatch):
    monkeypatch.delenv(notebook.OUTPUT_ENV, raising=False)
    assert fresh_output_dir("x", root=tmp_path) == tmp_path / "outputs" / "notebooks" / "x"


def test_table_renders_escaped_html_and_markdown():
    table = Table(["prompt", "answer"], [["1 < 2?", "yes | no\nmaybe"]], title="t")
    page = table._repr_html_()
    assert "1 &lt; 2?" in page and "<caption>t</caption>" in page and "<th" in page
    text = table._repr_markdown_()
    assert "| prompt | answer |" in text and "yes \\| no<br>maybe" in text
    assert str(table) == text
    with pytest.raises(ValueError, match="cells"):
        Table(["a", "b"], [["only one"]])


def test_answers_table_side_by_side():
    table = answers_table(["What is 2 + 2?", "Who are you?"],
                          {"before": ["5", "SmolLM"], "after": ["4", "x" * 500]}, max_chars=50)
    assert table.header == ["prompt", "before", "after"]
    assert table.rows[0] == ["What is 2 + 2?", "5", "4"]
    assert len(table.rows[1][2]) == 50 and table.rows[1][2].endswith("…")
    with pytest.raises(ValueError, match="answers"):
        answers_table(["a", "b"], {"before": ["only one"]})


def test_marked_and_shorten():
    assert marked(["a", "b"], [True, False]) == ["✅ a", "❌ b"]
    assert shorten("  short  ") == "short"


def test_format_value():
    assert format_value(0.455, percent=True) == "45.5%"
    assert format_value(3) == "3"
    assert format_value(0.123456) == "0.1235"
    assert format_value(None) == "-"
    assert format_value(float("nan")) == "nan"
    assert format_value("text") == "text"


def test_numbers_table_before_after_and_change():
    table = numbers_table({"accuracy": 0.25, "loss": 0.77, "name": "a"},
                          {"accuracy": 0.375, "loss": 0.19, "new": 2},
                          percent=("accuracy",))
    rows = {row[0]: row[1:] for row in table.rows}
    assert rows["accuracy"] == ["25.0%", "37.5%", "+12.5 pts"]
    assert rows["loss"] == ["0.77", "0.19", "-0.58"]
    assert rows["name"] == ["a", "-", "-"]
    assert rows["new"] == ["-", "2", "-"]
    assert table.header == ["metric", "before", "after", "change"]


def test_live_plot_is_a_callback_that_records_steps_and_evaluations():
    plot = LivePlot({"loss": ["loss", "eval/loss"], "lr": ["learning_rate"]}, show=False)
    assert isinstance(plot, Callback)
    plot.on_evaluate(0, {"eval/loss": 0.9})
    plot.on_step_end(1, {"loss": 0.8, "learning_rate": 1e-5, "flag": True, "bad": math.nan})
    plot.on_step_end(2, {"loss": 0.5, "learning_rate": 1e-5})
    plot.on_evaluate(2, {"eval/loss": 0.4})
    plot.on_train_end(2, {})
    assert plot.history["loss"] == [(1, 0.8), (2, 0.5)]
    assert plot.history["eval/loss"] == [(0, 0.9), (2, 0.4)]
    assert "flag" not in plot.history and "bad" not in plot.history
    assert plot.last("loss") == 0.5 and plot.last("missing", 1.0) == 1.0
    png = plot.render_png()
    assert png.startswith(b"\x89PNG")
    fig = plot.figure()
    assert len(fig.axes) == 2 and len(fig.axes[0].lines) == 2


def test_live_plot_draws_empty_panels_and_needs_a_panel():
    assert LivePlot({"reward": ["rewards/total/mean"]}, show=False).render_png()
    with pytest.raises(ValueError):
        LivePlot({})


def test_live_plot_outside_ipython_only_records():
    plot = LivePlot({"loss": ["loss"]})  # show=True, but no IPython shell is running
    plot.on_step_end(1, {"loss": 1.0})
    assert plot._handle is None and plot.history["loss"] == [(1, 1.0)]


def test_results_line_round_trips():
    results = {"accuracy_after": 0.4, "quick": True, "n": 8}
    line = results_line(results)
    assert line.startswith("RESULTS {")
    assert parse_results(f"noise\n{results_line({'old': 1})}\n{line}\nmore") == results
    with pytest.raises(ValueError):
        parse_results("no marker here")


def test_module_imports_without_ipython_at_import_time():
    source = open(notebook.__file__, encoding="utf-8").read()
    top_level = [line for line in source.splitlines() if line.startswith(("import ", "from "))]
    assert not any("IPython" in line or "matplotlib" in line for line in top_level)
