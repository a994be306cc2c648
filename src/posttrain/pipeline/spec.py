"""A pipeline file: named stages run in order, each stage's model feeding the next.

    name: smollm2-course
    model: smollm2-135m-instruct          # the starting model
    output_dir: outputs/smollm2-course    # one sub-folder per stage
    evaluation:                           # before the first stage and after every model stage
      - {name: arithmetic, task: arithmetic, limit: 100}
      - {name: identity, task: identity}
    stages:
      - name: sft                         # type defaults to the name
        config: recipes/smollm2-135m/sft_arithmetic.yaml
        overrides: {max_samples: 128}
      - {name: rm, type: reward, config: recipes/smollm2-135m/reward.yaml}
      - name: ppo
        config: recipes/smollm2-135m/ppo_reward_model.yaml
        overrides: {value_model: "${stages.rm.output}"}

A training stage starts from the last model stage's output (``input: NAME`` picks another, an
explicit ``model`` override wins) and writes to ``output_dir/NAME``. A ``reward`` stage trains a
reward model: it feeds no later stage's ``model``, only what names it, as
``${stages.NAME.output}`` in any string value. A ``sample`` stage (rejection sampling) writes
``output_dir/NAME/samples.jsonl`` (e.g. an SFT stage's ``train_data``); an ``eval`` stage
evaluates the current model with its own ``evaluation`` list.

Everything is checked before any model loads: here the file's keys and types, in
``resolve.load_pipeline`` the stage names and references, every training stage's config (the
trainer's own validation, with the stage named), local data files, reward specs and evaluation
plans.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from posttrain.api import TRAINERS
from posttrain.errors import ConfigError

TRAINING = tuple(TRAINERS)
STAGE_TYPES = (*TRAINING, "sample", "eval")
MODEL_STAGES = tuple(t for t in TRAINING if t != "reward")  # they change the policy
PIPELINE_KEYS = {"name", "model", "output_dir", "evaluation", "stages", "report",
                 "expected_minutes"}
STAGE_KEYS = {"name", "type", "config", "overrides", "input", "evaluate", "evaluation",
              "expected_minutes"}
EVAL_KEYS = {"name", "task", "split", "data", "rewards", "limit", "samples", "temperature",
             "seed", "batch_size", "max_new_tokens", "new_name", "success_threshold"}
SAMPLE_KEYS = {"data", "rewards", "k", "threshold", "limit", "batch_prompts", "max_new_tokens",
               "temperature", "top_p", "seed"}
REFERENCE = re.compile(r"\$\{stages\.([A-Za-z0-9_-]+)\.output\}")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


@dataclass
class Stage:
    """One stage as written, with its position (for messages) and resolved type."""

    name: str
    type: str
    index: int
    config: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    input: str | None = None
    evaluate: bool = True
    evaluation: list[dict[str, Any]] | None = None
    expected_minutes: float | None = None

    @property
    def where(self) -> str:
        return f"stage {self.index + 1} ({self.name!r})"


@dataclass
class Pipeline:
    """A parsed, validated pipeline file."""

    name: str
    model: str
    output_dir: Path
    stages: list[Stage]
    evaluation: list[dict[str, Any]] = field(default_factory=list)
    report: bool = True
    expected_minutes: float | None = None
    source: str = "pipeline"

    def stage_dir(self, stage: Stage) -> Path:
        return self.output_dir / stage.name

    def stage_output(self, stage: Stage) -> Path:
        """What a stage makes: a model folder, or the sample stage's rows."""
        folder = self.stage_dir(stage)
        return folder / "samples.jsonl" if stage.type == "sample" else folder


def parse_pipeline(path: str | Path, overrides: list[str] = ()) -> Pipeline:
    """Read a pipeline file (its structure checked; ``resolve.load_pipeline`` checks the rest);
    ``overrides`` are ``STAGE.key=value`` (a stage's config key) or ``key=value`` (a pipeline
    key, e.g. ``output_dir=...``)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"pipeline file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping (name, model, stages, ...).")
    _apply_overrides(raw, overrides, path)
    return _parse(raw, str(path))


def _apply_overrides(raw: dict, overrides: list[str], path: Path) -> None:
    stages = {s.get("name"): s for s in raw.get("stages") or [] if isinstance(s, dict)}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} is not of the form key=value or "
                              "STAGE.key=value.")
        parsed = yaml.safe_load(value) if value.strip() else ""
        stage_name, dot, stage_key = key.partition(".")
        if dot:
            if stage_name not in stages:
                raise ConfigError(f"override {item!r}: {path} has no stage {stage_name!r} "
                                  f"(stages: {', '.join(map(str, stages))}).")
            stages[stage_name].setdefault("overrides", {})[stage_key] = parsed
        else:
            raw[key] = parsed


def _parse(raw: dict, source: str) -> Pipeline:
    _refuse_unknown(raw, PIPELINE_KEYS, source)
    for key in ("name", "model", "output_dir"):
        if not isinstance(raw.get(key), str) or not raw[key].strip():
            raise ConfigError(f"{source}: `{key}` must be given as a non-empty string.")
    stages_raw = raw.get("stages")
    if not isinstance(stages_raw, list) or not stages_raw:
        raise ConfigError(f"{source}: `stages` must be a non-empty list of stages.")
    stages = [_parse_stage(item, i, source) for i, item in enumerate(stages_raw)]
    evaluation = _eval_list(raw.get("evaluation"), f"{source}: evaluation")
    return Pipeline(raw["name"], raw["model"], Path(raw["output_dir"]), stages, evaluation,
                    bool(raw.get("report", True)), _minutes(raw, source), source)


def _parse_stage(item: Any, index: int, source: str) -> Stage:
    where = f"{source}: stage {index + 1}"
    if not isinstance(item, dict):
        raise ConfigError(f"{where} must be a mapping with at least `name`, got {item!r}.")
    _refuse_unknown(item, STAGE_KEYS, where, " (config keys go under `overrides`)")
    name = item.get("name")
    if not isinstance(name, str) or not NAME.match(name):
        raise ConfigError(f"{where}: `name` must be a word of letters, digits, - or _ "
                          f"(it names the stage's folder), got {name!r}.")
    kind = item.get("type", name)
    if kind not in STAGE_TYPES:
        raise ConfigError(f"{where} ({name!r}): unknown type {kind!r}; choose from "
                          f"{', '.join(STAGE_TYPES)} (type defaults to the name).")
    overrides = item.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise ConfigError(f"{where} ({name!r}): `overrides` must be a mapping of config keys.")
    evaluation = item.get("evaluation")
    return Stage(name, kind, index, item.get("config"), dict(overrides), item.get("input"),
                 bool(item.get("evaluate", True)),
                 None if evaluation is None else _eval_list(evaluation, f"{where}: evaluation"),
                 _minutes(item, where))


def _refuse_unknown(item: dict, allowed: set[str], where: str, note: str = "") -> None:
    unknown = set(item) - allowed
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: "
                          f"{', '.join(sorted(allowed))}{note}.")


def _minutes(item: dict, where: str) -> float | None:
    value = item.get("expected_minutes")
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                              or value <= 0):
        raise ConfigError(f"{where}: expected_minutes must be a number of minutes > 0, got "
                          f"{value!r}.")
    return value


def _eval_list(raw: Any, where: str) -> list[dict[str, Any]]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ConfigError(f"{where} must be a list of evaluations ({{task: arithmetic}}, ...).")
    out = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise ConfigError(f"{where} item {i + 1} must be a mapping, got {item!r}.")
        _refuse_unknown(item, EVAL_KEYS, f"{where} item {i + 1}")
        name = item.get("name") or item.get("task") or f"eval{i + 1}"
        out.append({**item, "name": str(name)})
    names = [e["name"] for e in out]
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: two evaluations are named alike ({names}); give each a "
                          "`name`.")
    return out


def eval_plan(spec: dict[str, Any], where: str):
    """An ``EvalPlan`` from one ``evaluation`` item (unknown keys were refused already)."""
    from posttrain.evaluation.run import EvalPlan

    settings = {k: v for k, v in spec.items() if k != "name"}
    try:
        return EvalPlan(**settings)
    except TypeError as err:
        raise ConfigError(f"{where}: {err}") from None
