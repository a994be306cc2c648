"""`posttrain pipeline`: stages run in order on the tiny random model, each evaluated; a
finished stage is skipped, an interrupted one resumes from its checkpoint, a changed one is
refused; every bad stage config fails before any model loads. The real recipes pass the checks."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import yaml

from posttrain.cli import main

ROOT = Path(__file__).resolve().parents[1]
EVAL = [{"name": "arithmetic", "task": "arithmetic", "limit": 3, "max_new_tokens": 4,
         "batch_size": 3},
        {"name": "identity", "task": "identity", "limit": 2, "max_new_tokens": 4}]
SFT = {"name": "sft", "config": "recipes/smollm2-135m/sft_arithmetic.yaml",
       "overrides": {"max_samples": 4, "max_steps": 2, "per_device_batch_size": 2,
                     "gradient_accumulation_steps": 1, "eval_data": None, "progress": False}}
DPO = {"name": "dpo", "config": "recipes/smollm2-135m/dpo_identity.yaml",
       "overrides": {"max_steps": 1, "per_device_batch_size": 2, "eval_data": None,
                     "progress": False}}
GRPO = {"name": "grpo", "config": "recipes/smollm2-135m/grpo_arithmetic.yaml",
        "overrides": {"max_steps": 2, "prompts_per_step": 1, "num_generations": 2,
                      "max_new_tokens": 4, "eval_steps": 0, "eval_on_start": False,
                      "save_steps": 0, "eval_max_samples": 2, "progress": False}}


def write_pipeline(tmp_path: Path, stages: list[dict], **extra) -> Path:
    spec = {"name": "tiny", "model": "random:tiny", "output_dir": str(tmp_path / "out"),
            "evaluation": EVAL, "stages": stages, **extra}
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.fixture(autouse=True)
def _repo_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # the recipes name their data relative to the repository


def test_stages_feed_each_other_and_each_is_evaluated(tmp_path, capsys):
    path = write_pipeline(tmp_path, [SFT, DPO, GRPO])
    assert main(["pipeline", str(path)]) == 0
    out_dir = tmp_path / "out"
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["columns"] == ["base", "sft", "dpo", "grpo"]
    metrics = {row["metric"]: row["values"] for row in summary["rows"]}
    assert len(metrics["arithmetic/accuracy"]) == 4 and "identity/identity_rate" in metrics
    assert all(v is not None for v in metrics["arithmetic/mean_completion_tokens"])
    # each stage started from the one before it
    dpo_config = yaml.safe_load((out_dir / "dpo" / "posttrain_config.yaml").read_text())
    grpo_config = yaml.safe_load((out_dir / "grpo" / "posttrain_config.yaml").read_text())
    assert dpo_config["model"] == str(out_dir / "sft")
    assert grpo_config["model"] == str(out_dir / "dpo")
    assert [s["status"] for s in summary["stages"]] == ["done"] * 3
    assert (out_dir / "report" / "index.html").is_file()
    printed = capsys.readouterr().out
    assert "before/after (tiny)" in printed and "arithmetic/accuracy" in printed
    # a second run skips every stage (and evaluation): nothing loads a model
    capsys.readouterr()
    mtime = (out_dir / "sft" / "metrics.jsonl").stat().st_mtime_ns
    assert main(["pipeline", str(path)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("done before") == 3
    assert (out_dir / "sft" / "metrics.jsonl").stat().st_mtime_ns == mtime
    # a finished stage whose settings changed is refused, not silently reused
    assert main(["pipeline", str(path), "sft.learning_rate=1e-3"]) == 2
    err = capsys.readouterr().err
    assert "stage 1 ('sft') finished before with other settings" in err
    assert "learning_rate" in err and "delete" in err
    # ... and deleting the stage's folder, as the message says, runs it (and it alone) again
    import shutil

    shutil.rmtree(out_dir / "grpo")
    assert main(["pipeline", str(path), "grpo.learning_rate=1e-3"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("done before") == 2 and "[3/3] grpo (grpo" in printed
    grpo_config = yaml.safe_load((out_dir / "grpo" / "posttrain_config.yaml").read_text())
    assert grpo_config["learning_rate"] == 1e-3
    # an earlier stage made again would leave the later ones stale: refused before any work
    shutil.rmtree(out_dir / "sft")
    assert main(["pipeline", str(path), "grpo.learning_rate=1e-3"]) == 2
    err = capsys.readouterr().err
    assert "stage 1 ('sft') will run again" in err and "dpo, grpo" in err
    assert not (out_dir / "sft").exists()


KILLER = '''
import os, signal
from pathlib import Path

def killer(prompts, completions, completion_ids, **columns):
    """Sends the trainer SIGTERM during its second round, once (a marker file remembers)."""
    marker = Path(os.environ["KILL_MARKER"])
    if len(completions) > 1:
        calls = int(marker.read_text()) + 1 if marker.exists() else 1
        marker.write_text(str(calls))
        if calls == 2:
            os.kill(os.getpid(), signal.SIGTERM)
    return [0.5] * len(completions)
'''


def test_an_interrupted_stage_resumes_from_its_checkpoint(tmp_path, monkeypatch, capsys):
    (tmp_path / "killer.py").write_text(KILLER)
    monkeypatch.setenv("KILL_MARKER", str(tmp_path / "calls"))
    grpo = {**GRPO, "overrides": {**GRPO["overrides"], "max_steps": 4, "save_steps": 1,
                                  "rewards": [f"{tmp_path / 'killer.py'}:killer"],
                                  "eval_data": None}}
    path = write_pipeline(tmp_path, [SFT, grpo], evaluation=EVAL[:1])
    assert main(["pipeline", str(path)]) == 128 + 15  # SIGTERM: checkpoint, then stop
    err = capsys.readouterr().err
    assert "continue with the same command" in err
    state = json.loads((tmp_path / "out" / "pipeline_state.json").read_text())
    assert state["stages"]["sft"]["status"] == "done"
    assert state["stages"]["grpo"]["status"] == "running"
    assert set(state["evals"]) == {"base", "sft"}
    assert main(["pipeline", str(path)]) == 0
    captured = capsys.readouterr()
    assert "sft: done before" in captured.out and "interrupted, will resume" in captured.out
    assert "resumed from" in captured.err and "at step 2/4" in captured.err
    steps = [json.loads(line)["step"] for line in
             (tmp_path / "out" / "grpo" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]  # the steps before the stop are kept, none repeated
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["columns"] == [
        "base", "sft", "grpo"]


def _bad(tmp_path: Path, case: str) -> Path:
    stages = [json.loads(json.dumps(SFT)), json.loads(json.dumps(GRPO))]
    extra: dict = {}
    if case == "unknown type":
        stages[0]["type"] = "sftt"
    elif case == "unknown config key":
        stages[1]["overrides"]["learning_rat"] = 1e-5
    elif case == "bad value":
        stages[1]["overrides"]["learning_rate"] = -1.0
    elif case == "missing data":
        stages[0]["overrides"]["train_data"] = "nowhere/train.jsonl"
    elif case == "missing config file":
        stages[1]["config"] = "recipes/nope.yaml"
    elif case == "later reference":
        stages[0]["overrides"]["eval_data"] = "${stages.grpo.output}"
    elif case == "duplicate name":
        stages[1]["name"] = "sft"
    elif case == "unknown reward":
        stages[1]["overrides"]["rewards"] = ["maths"]
    elif case == "bad input":
        stages[1]["input"] = "nope"
    elif case == "output_dir set":
        stages[0]["overrides"]["output_dir"] = "elsewhere"
    elif case == "stage key":
        stages[0]["learning_rate"] = 1e-5
    elif case == "bad evaluation":
        extra["evaluation"] = [{"task": "poetry"}]
    elif case == "sample without data":
        stages.insert(1, {"name": "best_of", "type": "sample", "overrides": {"k": 2}})
    return write_pipeline(tmp_path, stages, **extra)


BAD = {
    "unknown type": "unknown type 'sftt'",
    "unknown config key": "unknown key 'learning_rat'",
    "bad value": "learning_rate must be a finite number >= 0",
    "missing data": "data file not found: nowhere/train.jsonl",
    "missing config file": "config file not found: recipes/nope.yaml",
    "later reference": "names no earlier stage",
    "duplicate name": "stage names must differ",
    "unknown reward": "maths",
    "bad input": "input 'nope' is not an earlier stage",
    "output_dir set": "output_dir is set by the pipeline",
    "stage key": "config keys go under `overrides`",
    "bad evaluation": "unknown evaluation task 'poetry'",
    "sample without data": "needs `data`",
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_stage_config_fails_before_any_model_loads(tmp_path, monkeypatch, capsys, case):
    import posttrain.models as models

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded before the pipeline was checked")

    for name in ("load_trained", "load_causal_lm", "load_policy", "load_tokenizer"):
        monkeypatch.setattr(models, name, no_model)
    path = _bad(tmp_path, case)
    assert main(["pipeline", str(path)]) == 2
    err = capsys.readouterr().err
    assert BAD[case] in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()  # nothing was written either


def test_the_recipes_pass_the_checks_and_show_their_plan(capsys):
    for recipe in ("recipes/smollm2-135m/pipeline.yaml", "recipes/qwen2.5-0.5b/pipeline.yaml"):
        assert main(["pipeline", recipe, "--dry-run"]) == 0, recipe
        out = capsys.readouterr().out
        assert "1. sft" in out and "2. dpo" in out and "3. grpo" in out
        assert "evaluation before the first stage" in out
        if "smollm2" in recipe:  # measured on a CPU; the GPU twin has not run yet
            assert "expected time in all: about" in out


def test_sample_and_eval_stages(tmp_path):
    """Rejection sampling feeds an SFT stage through a reference; an eval stage adds a column
    with its own evaluation."""
    sample = {"name": "best_of", "type": "sample",
              "overrides": {"data": "recipes/data/arithmetic/test.jsonl", "limit": 2, "k": 2,
                            "max_new_tokens": 4, "rewards": ["math"]}}
    sft = json.loads(json.dumps(SFT))
    sft["overrides"]["train_data"] = "${stages.best_of.output}"
    sft["overrides"]["max_samples"] = None
    sft["overrides"]["max_steps"] = 1
    check = {"name": "check", "type": "eval", "evaluation": [
        {"name": "math-sampled", "data": "recipes/data/arithmetic/test.jsonl", "limit": 2,
         "rewards": ["math"], "samples": 2, "max_new_tokens": 4}]}
    path = write_pipeline(tmp_path, [sample, sft, check], evaluation=EVAL[:1])
    assert main(["pipeline", str(path)]) == 0
    out_dir = tmp_path / "out"
    rows = (out_dir / "best_of" / "samples.jsonl").read_text().splitlines()
    assert len(rows) == 2  # best of 2 for each of the 2 prompts (no threshold)
    sft_config = yaml.safe_load((out_dir / "sft" / "posttrain_config.yaml").read_text())
    assert sft_config["train_data"] == str(out_dir / "best_of" / "samples.jsonl")
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["columns"] == ["base", "sft", "check"]
    metrics = {row["metric"]: row["values"] for row in summary["rows"]}
    assert metrics["math-sampled/pass@2"][:2] == [None, None]
    assert 0.0 <= metrics["math-sampled/pass@2"][2] <= 1.0


def test_overrides_need_a_known_stage(tmp_path, capsys):
    path = write_pipeline(tmp_path, [SFT])
    assert main(["pipeline", str(path), "grpo.max_steps=2"]) == 2
    assert "has no stage 'grpo'" in capsys.readouterr().err
    assert main(["pipeline", str(tmp_path / "none.yaml")]) == 2
    assert "pipeline file not found" in capsys.readouterr().err
    (tmp_path / "broken.yaml").write_text(textwrap.dedent("""\
        name: x
        model: random:tiny
        output_dir: out
        stages: {sft: 1}
    """))
    assert main(["pipeline", str(tmp_path / "broken.yaml")]) == 2
    assert "`stages` must be a non-empty list" in capsys.readouterr().err
