"""A stage's settings made concrete: which model it starts from, where it writes, what its
``${stages.NAME.output}`` references mean, and (for training stages) the trainer's validated
config. The same code checks a pipeline before it runs and builds each stage when it runs, so
what was checked is what runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from posttrain.api import ONLINE_RL, make_config
from posttrain.errors import ConfigError, PosttrainError
from posttrain.pipeline.spec import (
    MODEL_STAGES,
    REFERENCE,
    SAMPLE_KEYS,
    TRAINING,
    Pipeline,
    Stage,
    eval_plan,
    parse_pipeline,
)

DATA_KEYS = ("train_data", "eval_data")
DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".txt")


def load_pipeline(path: str | Path, overrides: list[str] = ()) -> Pipeline:
    """Read a pipeline file and check every stage (see :func:`check`)."""
    pipeline = parse_pipeline(path, overrides)
    check(pipeline)
    return pipeline


def check(pipeline: Pipeline) -> None:
    """Every stage's settings, before any work: names, references, configs, data, rewards,
    evaluations. Raises ``ConfigError`` naming the stage."""
    seen: dict[str, Stage] = {}
    for stage in pipeline.stages:
        if stage.name in seen:
            raise ConfigError(f"{pipeline.source}: {stage.where}: the name is used by "
                              f"{seen[stage.name].where} too; stage names must differ.")
        if stage.input is not None:
            source = seen.get(stage.input)
            if source is None or source.type not in MODEL_STAGES:
                raise ConfigError(
                    f"{pipeline.source}: {stage.where}: input {stage.input!r} is not an earlier "
                    f"stage that makes a policy model ({', '.join(MODEL_STAGES)}).")
        for ref in REFERENCE.findall(yaml.safe_dump(stage.overrides)):
            if ref not in seen:
                raise ConfigError(f"{pipeline.source}: {stage.where}: ${{stages.{ref}.output}} "
                                  "names no earlier stage.")
        resolve_stage(pipeline, stage, seen)
        seen[stage.name] = stage
    for spec in pipeline.evaluation:
        checked_plan(spec, pipeline.source)


def input_model(pipeline: Pipeline, stage: Stage, earlier: dict[str, Stage]) -> str:
    """The model a stage starts from: its ``input`` stage's output, else the last earlier
    stage that changed the policy, else the pipeline's model."""
    if stage.input is not None:
        return str(pipeline.stage_output(earlier[stage.input]))
    for previous in reversed(list(earlier.values())):
        if previous.type in MODEL_STAGES:
            return str(pipeline.stage_output(previous))
    return pipeline.model


def substitute(value: Any, pipeline: Pipeline, earlier: dict[str, Stage]) -> Any:
    """``${stages.NAME.output}`` -> that stage's output path, in every string of ``value``."""
    if isinstance(value, str):
        return REFERENCE.sub(lambda m: str(pipeline.stage_output(earlier[m.group(1)])), value)
    if isinstance(value, list):
        return [substitute(v, pipeline, earlier) for v in value]
    if isinstance(value, dict):
        return {k: substitute(v, pipeline, earlier) for k, v in value.items()}
    return value


def resolve_stage(pipeline: Pipeline, stage: Stage, earlier: dict[str, Stage]) -> Any:
    """The stage's runnable settings: a trainer config (training stages), the sampling
    settings (``sample``) or the evaluation plans (``eval``). Outputs of earlier stages need
    not exist yet: paths they will make pass the file checks."""
    produced = {str(pipeline.stage_output(s)) for s in earlier.values()}
    overrides = substitute(stage.overrides, pipeline, earlier)
    if stage.type in TRAINING:
        return _training_config(pipeline, stage, earlier, overrides, produced)
    if stage.type == "sample":
        return _sample_settings(pipeline, stage, overrides, produced)
    if stage.config is not None or overrides:
        raise ConfigError(f"{pipeline.source}: {stage.where}: an eval stage takes `evaluation` "
                          "(a list like the pipeline's), not config or overrides.")
    plans = stage.evaluation if stage.evaluation is not None else pipeline.evaluation
    if not plans:
        raise ConfigError(f"{pipeline.source}: {stage.where}: an eval stage needs `evaluation` "
                          "(or the pipeline's).")
    return [(spec["name"], checked_plan(spec, f"{pipeline.source}: {stage.where}"))
            for spec in plans]


def checked_plan(spec: dict[str, Any], where: str):
    """An evaluation item as an ``EvalPlan`` whose rows load (so mistakes show up early)."""
    plan = eval_plan(spec, f"{where}: evaluation {spec['name']!r}")
    try:
        plan.rows()
    except PosttrainError as err:
        raise ConfigError(f"{where}: evaluation {spec['name']!r}: {err}") from None
    return plan


def _training_config(pipeline: Pipeline, stage: Stage, earlier: dict[str, Stage],
                     overrides: dict[str, Any], produced: set[str]):
    where = f"{pipeline.source}: {stage.where}"
    if "output_dir" in overrides:
        raise ConfigError(f"{where}: output_dir is set by the pipeline ({pipeline.stage_dir(stage)});"
                          " remove it from the overrides.")
    if stage.config is not None and not Path(stage.config).is_file():
        raise ConfigError(f"{where}: config file not found: {stage.config}")
    values = {"model": input_model(pipeline, stage, earlier), **overrides,
              "output_dir": str(pipeline.stage_dir(stage))}
    try:
        config = make_config(stage.type, stage.config, **values)
    except PosttrainError as err:
        raise ConfigError(f"{where}: {err}") from None
    for key in DATA_KEYS:
        _check_local_file(getattr(config, key, None), produced, f"{where}: {key}")
    if stage.type in ONLINE_RL:
        _check_rewards(config.rewards, produced, where)
    return config


def _sample_settings(pipeline: Pipeline, stage: Stage, overrides: dict[str, Any],
                     produced: set[str]) -> dict[str, Any]:
    where = f"{pipeline.source}: {stage.where}"
    unknown = set(overrides) - SAMPLE_KEYS
    if unknown or stage.config is not None:
        raise ConfigError(f"{where}: a sample stage takes overrides {sorted(SAMPLE_KEYS)}"
                          f"{'' if not unknown else f'; unknown: {sorted(unknown)}'}"
                          f"{'' if stage.config is None else '; no config file'}.")
    settings = {"rewards": ["math"], "k": 8, "threshold": None, "limit": None,
                "batch_prompts": 8, "max_new_tokens": 256, "temperature": 0.8, "top_p": 1.0,
                "seed": 0, **overrides}
    if not settings.get("data"):
        raise ConfigError(f"{where}: a sample stage needs `data` (prompt rows) in its overrides.")
    if not isinstance(settings["k"], int) or settings["k"] < 1:
        raise ConfigError(f"{where}: k must be an integer >= 1, got {settings['k']!r}.")
    _check_local_file(settings["data"], produced, f"{where}: data")
    _check_rewards(settings["rewards"], produced, where)
    return settings


def _check_local_file(value: Any, produced: set[str], where: str) -> None:
    """A local data file that neither exists nor is made by an earlier stage is a mistake
    found now rather than after the stages before it have run."""
    if not isinstance(value, str) or value in produced or ":" in value:
        return
    if value.endswith(DATA_SUFFIXES) and not Path(value).exists():
        raise ConfigError(f"{where}: data file not found: {value}")


def _check_rewards(specs: Any, produced: set[str], where: str) -> None:
    """Built-in and importable reward functions load now; a reward model made by an earlier
    stage is loaded when its stage runs."""
    from posttrain.rewards.loading import load_reward_set

    if not isinstance(specs, list) or not specs:
        raise ConfigError(f"{where}: rewards must be a non-empty list.")
    loadable = [s for s in specs if isinstance(s, str)]
    for spec in specs:
        if isinstance(spec, dict) and not any(str(v) in produced for v in spec.values()):
            path = spec.get("path") or spec.get("path_or_model")
            if path and not Path(str(path)).exists() and ":" not in str(path):
                raise ConfigError(f"{where}: reward {spec.get('name')!r}: {path} does not "
                                  "exist and no earlier stage makes it.")
    try:
        load_reward_set(loadable)
    except PosttrainError as err:
        raise ConfigError(f"{where}: {err}") from None
