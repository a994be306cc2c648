"""``posttrain pipeline FILE``: run the stages in order, evaluate after each, resume by stage.

    check every stage (resolve.load_pipeline)              # nothing runs if any stage is wrong
    evaluate the starting model                            -> column "base"
    for stage in stages:
        done before with the same settings?  skip it       # pipeline_state.json says so
        train / sample / evaluate                          # an interrupted training stage
                                                           # resumes from its last checkpoint
        evaluate its model                                 -> column stage.name
    the before/after table (summary.json, summary.md) and the report page

``pipeline_state.json`` in the pipeline's folder records, per stage, the settings it ran with and
its time, and every evaluation's summary, written after each step: a killed pipeline loses at most
the stage (or evaluation) in progress, and a finished stage whose settings changed is refused
rather than silently reused.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import time
from pathlib import Path
from typing import Any

from posttrain.errors import ConfigError
from posttrain.pipeline.resolve import input_model, load_pipeline, resolve_stage
from posttrain.pipeline.spec import MODEL_STAGES, TRAINING, Pipeline, Stage, eval_plan
from posttrain.pipeline.summary import build_summary, format_summary, write_summary

STATE_FILE = "pipeline_state.json"
ANSWERS_KEPT = 3  # answers per evaluation kept for the side-by-side table


def run_pipeline(path: str | Path, overrides: list[str] = (), *, dry_run: bool = False,
                 say=print) -> dict[str, Any]:
    """Run (or continue) the pipeline in ``path``; returns the summary (``summary.json``).
    ``dry_run``: check everything and print the plan, run nothing."""
    pipeline = load_pipeline(path, overrides)
    state = State(pipeline.output_dir / STATE_FILE)
    say(plan_text(pipeline, state))
    _check_order(pipeline, state)
    if dry_run:
        return {}
    pipeline.output_dir.mkdir(parents=True, exist_ok=True)
    start = time.time()
    if pipeline.evaluation and "base" not in state.evals:
        say(f"evaluating the starting model {pipeline.model} ...")
        state.record_eval("base", evaluate_all(pipeline.model, pipeline.evaluation))
    earlier: dict[str, Stage] = {}
    for stage in pipeline.stages:
        settings = resolve_stage(pipeline, stage, earlier)
        fingerprint = _fingerprint(settings)
        if state.done(stage.name):
            _check_unchanged(pipeline, stage, state.stages[stage.name]["settings"], fingerprint)
            say(f"[{stage.index + 1}/{len(pipeline.stages)}] {stage.name}: done before "
                f"({state.stages[stage.name]['seconds'] / 60:.1f} min), skipped")
        else:
            expected = (f", expected ~{stage.expected_minutes:g} min"
                        if stage.expected_minutes else "")
            say(f"[{stage.index + 1}/{len(pipeline.stages)}] {stage.name} ({stage.type}"
                f"{expected}; {(time.time() - start) / 60:.1f} min so far)")
            began = time.time()
            state.start(stage.name, fingerprint)
            _run_stage(pipeline, stage, settings, earlier, state)
            state.finish(stage.name, time.time() - began, str(pipeline.stage_output(stage)))
        earlier[stage.name] = stage
        if (stage.type in MODEL_STAGES and stage.evaluate and pipeline.evaluation
                and stage.name not in state.evals):
            say(f"evaluating {stage.name}'s model ...")
            state.record_eval(stage.name, evaluate_all(str(pipeline.stage_output(stage)),
                                                       pipeline.evaluation))
    summary = build_summary(pipeline, state.stages, state.evals)
    write_summary(pipeline.output_dir, summary)
    say(format_summary(summary))
    if pipeline.report:
        from posttrain.report import build_report

        page = build_report([pipeline.output_dir], pipeline.output_dir / "report",
                            title=pipeline.name)
        say(f"report: {page}")
    say(f"pipeline {pipeline.name}: finished in {(time.time() - start) / 60:.1f} min "
        f"(this run); results in {pipeline.output_dir}")
    return summary


def _run_stage(pipeline: Pipeline, stage: Stage, settings: Any, earlier: dict[str, Stage],
               state: State) -> None:
    if stage.type in TRAINING:
        from posttrain.api import trainer
        from posttrain.train.checkpoint import latest_checkpoint

        if latest_checkpoint(settings.output_dir) is not None:  # interrupted: continue it
            settings = dataclasses.replace(settings, resume=True)
        trainer(stage.type, settings).train()
    elif stage.type == "sample":
        from posttrain.curation.rejection import sample_file
        from posttrain.rollout.base import SamplingParams

        output = pipeline.stage_output(stage)
        params = SamplingParams(n=settings["k"], temperature=settings["temperature"],
                                top_p=settings["top_p"],
                                max_new_tokens=settings["max_new_tokens"], seed=settings["seed"])
        stats = sample_file(input_model(pipeline, stage, earlier), settings["data"], output,
                            settings["rewards"], params, settings["threshold"],
                            settings["limit"], settings["batch_prompts"])
        (output.parent / "sample_stats.json").write_text(json.dumps(stats.summary(), indent=1))
    else:  # eval: the current model, with the stage's own evaluations
        model = input_model(pipeline, stage, earlier)
        state.record_eval(stage.name, _evaluate(model, dict(settings)))
    gc.collect()  # one stage's models are gone before the next loads its own


def evaluate_all(model: str, specs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every evaluation of the pipeline on one model (``check`` loaded their rows already)."""
    return _evaluate(model, {spec["name"]: eval_plan(spec, "evaluation") for spec in specs})


def _evaluate(model: str, plans: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each named plan on ``model`` (loaded once): its summary and the first few answers."""
    from posttrain.evaluation.compare import answer_text
    from posttrain.evaluation.run import evaluate_plans

    out = {}
    for name, result in zip(plans, evaluate_plans(model, list(plans.values()), progress=True)):
        kept = {k: v for k, v in result.items() if k not in ("records", "samples")}
        kept["answers"] = [{"prompt": r.get("prompt"), "answer": answer_text(r)}
                           for r in result["records"][:ANSWERS_KEPT]]
        out[name] = kept
    return out


def plan_text(pipeline: Pipeline, state: State) -> str:
    """What will run, with the expected time: printed before any work starts."""
    lines = [f"pipeline {pipeline.name}: {len(pipeline.stages)} stages from {pipeline.model} "
             f"-> {pipeline.output_dir}"]
    for stage in pipeline.stages:
        status = "done, will be skipped" if state.done(stage.name) else (
            "interrupted, will resume" if stage.name in state.stages else "to run")
        expected = f"~{stage.expected_minutes:g} min" if stage.expected_minutes else ""
        lines.append(f"  {stage.index + 1}. {stage.name:<12} {stage.type:<13} {expected:<10} "
                     f"{status}")
    if pipeline.evaluation:
        names = ", ".join(spec["name"] for spec in pipeline.evaluation)
        lines.append(f"  evaluation before the first stage and after each model stage: {names}")
    if pipeline.expected_minutes:
        lines.append(f"  expected time in all: about {pipeline.expected_minutes:g} minutes "
                     "(the file's figure; a busy machine takes longer)")
    return "\n".join(lines)


def _fingerprint(settings: Any) -> dict[str, Any]:
    """The settings that decide a stage's result (bookkeeping keys left out), as JSON."""
    from posttrain.config import TrainConfig, to_dict
    from posttrain.train.resume import BOOKKEEPING

    if isinstance(settings, TrainConfig):
        settings = {k: v for k, v in to_dict(settings).items() if k not in BOOKKEEPING}
    elif isinstance(settings, list):  # eval stage: (name, plan) pairs
        settings = {name: dataclasses.asdict(plan) for name, plan in settings}
    return json.loads(json.dumps(settings, default=str))


def _check_order(pipeline: Pipeline, state: State) -> None:
    """A stage that will run must not have finished stages after it: they were made from the
    old version of its output and would be skipped as if still valid."""
    for i, stage in enumerate(pipeline.stages):
        if state.done(stage.name):
            continue
        later = [s.name for s in pipeline.stages[i + 1:] if state.done(s.name)]
        if later:
            folders = ", ".join(str(pipeline.stage_dir(s)) for s in pipeline.stages[i + 1:]
                                if s.name in later)
            raise ConfigError(
                f"{pipeline.source}: {stage.where} will run again, but the later stage(s) "
                f"{', '.join(later)} finished on its previous output. Delete {folders} too, "
                "so that they are made again from the new one.")
        return


def _check_unchanged(pipeline: Pipeline, stage: Stage, saved: dict, current: dict) -> None:
    changed = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
    if changed:
        diff = "; ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in changed[:6])
        raise ConfigError(
            f"{pipeline.source}: {stage.where} finished before with other settings ({diff}). "
            f"To run it again, delete {pipeline.stage_dir(stage)} (and the later stages' "
            "folders), or use another output_dir.")


class State:
    """``pipeline_state.json``: per stage its settings, status and time; every evaluation."""

    def __init__(self, path: Path) -> None:
        self.path = path
        data: dict[str, Any] = {}
        if path.is_file():
            try:
                data = json.loads(path.read_text())
            except json.JSONDecodeError as err:
                raise ConfigError(f"{path} is damaged ({err}); delete it to start the pipeline "
                                  "over (finished stages' folders are then trained again).") from None
        self.stages: dict[str, dict[str, Any]] = data.get("stages", {})
        self.evals: dict[str, dict[str, Any]] = data.get("evals", {})

    def done(self, name: str) -> bool:
        """Finished, and its output is still there (deleting a stage's folder re-runs it)."""
        stage = self.stages.get(name, {})
        return stage.get("status") == "done" and Path(stage.get("output", "")).exists()

    def start(self, name: str, settings: dict[str, Any]) -> None:
        self.stages[name] = {"status": "running", "settings": settings}
        self.evals.pop(name, None)
        self._write()

    def finish(self, name: str, seconds: float, output: str) -> None:
        self.stages[name].update(status="done", seconds=round(seconds, 1), output=output)
        self._write()

    def record_eval(self, column: str, results: dict[str, Any]) -> None:
        self.evals[column] = results
        self._write()

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps({"stages": self.stages, "evals": self.evals}, indent=1,
                                        default=str))
        temporary.replace(self.path)  # atomic: a kill never leaves half a state file
