"""``posttrain`` command line: one sub-command per job.

    posttrain sft --config recipes/smollm2-135m/sft_arithmetic.yaml learning_rate=1e-5
    posttrain chat --model outputs/sft --prompt "What is 2 + 3?"
    posttrain generate --model outputs/sft --input prompts.jsonl --output answers.jsonl
    posttrain dpo --config recipes/tiny/dpo.yaml reference=precomputed
    posttrain ppo --config recipes/smollm2-135m/ppo_arithmetic.yaml max_steps=2
    posttrain score --model outputs/rm --data pairs.jsonl
    posttrain eval --model outputs/sft --task arithmetic --limit 100 --output answers.jsonl
    posttrain eval --model base outputs/grpo --data prompts.jsonl --rewards math --samples 8
    posttrain pipeline recipes/smollm2-135m/pipeline.yaml
    posttrain report outputs/grpo outputs/ppo --output reports/compare
    posttrain models

Training commands take ``--config FILE`` plus ``key=value`` overrides; ``--help-config`` lists
every key with its default and meaning. User mistakes print one clear message (no traceback) and
exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from posttrain.api import TRAINERS  # re-exported for tests and tools
from posttrain.errors import PosttrainError
from posttrain.train.guards import TrainingStopped


class _Parser(argparse.ArgumentParser):
    """Sub-command parsers show every option's default in --help."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)


def _trainer_parser(sub, name: str, help_text: str) -> None:
    parser = sub.add_parser(name, help=help_text, description=f"posttrain {name}: {help_text}")
    parser.add_argument("--config", help="YAML recipe (see recipes/)")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    parser.add_argument("--help-config", action="store_true", help="list every config key")
    parser.add_argument("overrides", nargs="*", help="key=value settings that override the YAML")


def build_parser() -> argparse.ArgumentParser:
    from posttrain import __version__

    parser = argparse.ArgumentParser(
        prog="posttrain",
        description="Post-train causal language models: SFT, DPO, reward models, PPO, GRPO.",
    )
    parser.add_argument("--version", action="version", version=f"posttrain {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=_Parser)
    for name, (_, _, _, help_text) in TRAINERS.items():
        _trainer_parser(sub, name, help_text)

    chat = sub.add_parser("chat", help="talk with a model (interactive, or --prompt once)")
    chat.add_argument("--model", required=True, help="model folder, hub id or alias")
    chat.add_argument("--prompt", help="answer this one message and exit")
    chat.add_argument("--system", help="system prompt")
    _sampling_args(chat)

    gen = sub.add_parser("generate", help="answer a file of prompts (jsonl in, jsonl out)")
    gen.add_argument("--model", required=True, help="model folder, hub id or alias")
    gen.add_argument("--input", required=True, help="jsonl with `prompt` (text or messages)")
    gen.add_argument("--output", required=True, help="jsonl to write (input row + completion)")
    gen.add_argument("--n", type=int, default=1, help="completions per prompt")
    gen.add_argument("--batch-size", type=int, default=16, help="prompts per generate call")
    _sampling_args(gen)

    score = sub.add_parser("score", help="score rows with a trained reward model")
    score.add_argument("--model", required=True, help="reward model folder (posttrain reward)")
    score.add_argument("--data", required=True,
                       help="prompt+completion / messages rows, or preference rows (pair accuracy)")
    score.add_argument("--output", help="jsonl to write: each row with its score(s)")
    score.add_argument("--batch-size", type=int, default=16, help="rows per forward pass")
    score.add_argument("--max-length", type=int, default=1024, help="truncate to this many tokens")

    ev = sub.add_parser(
        "eval", help="accuracy, identity rate or rewards of one or several models "
                     "(greedy, or pass@k / maj@k from --samples)")
    ev.add_argument("--model", required=True, nargs="+",
                    help="alias, hub id, trained folder or LoRA adapter folder; several: "
                         "compared side by side (e.g. the base model and the trained one)")
    ev.add_argument("--task", choices=["arithmetic", "identity"],
                    help="a built-in task; without it, --data and --rewards say what to score")
    ev.add_argument("--split", default="test", choices=["test", "train"])
    ev.add_argument("--data", help="prompt rows (jsonl/json/csv/parquet) to evaluate on; with "
                                   "--task, rows of the task's shape")
    ev.add_argument("--rewards", nargs="+",
                    help="score answers with these reward functions (built-in names, "
                         "module:function, file.py:function), as in a recipe's rewards:")
    ev.add_argument("--success-threshold", type=float, default=1.0,
                    help="with --rewards: an answer is correct when its total reward is >= this")
    ev.add_argument("--limit", type=int, help="only the first N rows")
    ev.add_argument("--output", help="jsonl to write: prompt, completion, score per row "
                                     "(with several models, each record names its model)")
    ev.add_argument("--json", help="write the summaries (every model) to this JSON file")
    ev.add_argument("--show", type=int, default=3, help="answers printed side by side")
    ev.add_argument("--batch-size", type=int, default=16, help="prompts decoded together")
    ev.add_argument("--max-new-tokens", type=int, default=128, help="completion length cap")
    ev.add_argument("--new-name", default="Posty", help="identity task: the name to look for")
    ev.add_argument("--samples", type=int, default=0,
                    help="N sampled answers per row -> pass@k and maj@k (k = 1, 2, 4, ..., N) "
                         "instead of one greedy answer")
    ev.add_argument("--temperature", type=float, default=1.0, help="with --samples")
    ev.add_argument("--seed", type=int, default=0, help="with --samples")

    sample = sub.add_parser(
        "sample", help="rejection sampling: best-of-K completions per prompt -> SFT data")
    sample.add_argument("--model", required=True, help="model folder, hub id or alias")
    sample.add_argument("--data", required=True, help="prompt-only rows (+ columns for rewards)")
    sample.add_argument("--output", required=True, help="jsonl of prompt/completion rows")
    sample.add_argument("--k", type=int, default=8, help="samples per prompt (best of K)")
    sample.add_argument("--rewards", nargs="+", default=["math"],
                        help="reward specs: built-in names, module:function, file.py:function")
    sample.add_argument("--threshold", type=float, default=None,
                        help="drop prompts whose best reward is below this")
    sample.add_argument("--limit", type=int, default=None, help="use the first N prompts")
    sample.add_argument("--batch-prompts", type=int, default=8, help="prompts per generate call")
    _sampling_args(sample, temperature=0.8)

    report = sub.add_parser(
        "report", help="plots + one self-contained HTML page of run dirs / pipeline dirs")
    report.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                        help="training output folders (metrics.jsonl) or pipeline folders")
    report.add_argument("--output", help="folder for index.html and the PNGs; "
                        "None = <first RUN_DIR>/report")
    report.add_argument("--title", help="page title; None = the run names")

    pipe = sub.add_parser(
        "pipeline", help="run named stages (sft, dpo, reward, grpo, rloo, ppo, sample, eval) "
                         "in order, evaluating after each; rerun to resume")
    pipe.add_argument("file", help="pipeline YAML (e.g. recipes/smollm2-135m/pipeline.yaml)")
    pipe.add_argument("--dry-run", action="store_true",
                      help="check every stage and print the plan; run nothing")
    pipe.add_argument("overrides", nargs="*",
                      help="STAGE.key=value (a stage's config key) or key=value (a pipeline key)")

    sub.add_parser("models", help="list built-in model aliases")
    return parser


def _sampling_args(parser: argparse.ArgumentParser, temperature: float = 0.0) -> None:
    parser.add_argument("--max-new-tokens", type=int, default=256, help="completion length cap")
    parser.add_argument("--temperature", type=float, default=temperature, help="0 = greedy")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling (1 = off)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    from posttrain.models import quiet_transformers

    quiet_transformers()
    try:
        if args.command in TRAINERS:
            return _train(args)
        if args.command == "chat":
            return _chat(args)
        if args.command == "generate":
            return _generate(args)
        if args.command == "sample":
            return _sample(args)
        if args.command == "score":
            return _score(args)
        if args.command == "eval":
            return _eval(args)
        if args.command == "report":
            return _report(args)
        if args.command == "pipeline":
            return _pipeline(args)
        if args.command == "models":
            from posttrain.hub import describe_aliases

            print(describe_aliases())
            return 0
    except TrainingStopped as err:
        command = " ".join(["posttrain", *(argv if argv is not None else sys.argv[1:])])
        resume = "" if "--resume" in command else " --resume"
        print(f"posttrain {args.command}: {err}\nresume with: {command}{resume}", file=sys.stderr)
        return 128 + err.signum
    except PosttrainError as err:
        print(f"posttrain {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 1


def _train(args: argparse.Namespace) -> int:
    from posttrain.api import classes, trainer
    from posttrain.config import describe, load_config
    from posttrain.train.distributed import ranks
    from posttrain.train.sharding import check_launch

    config_cls, _ = classes(args.command)
    if args.help_config:
        print(describe(config_cls))
        return 0
    overrides = list(args.overrides) + (["resume=true"] if args.resume else [])
    config = load_config(config_cls, args.config, overrides)
    check_launch()  # FSDP on a CPU, DeepSpeed without CUDA: said before any model loads
    metrics = trainer(args.command, config).train()
    if ranks().is_main:  # one summary, however many processes trained
        summary = {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}
        print(json.dumps(summary))
        print(f"model saved to {config.output_dir}")
    return 0


def _pipeline(args: argparse.Namespace) -> int:
    from posttrain.pipeline import run_pipeline

    try:
        run_pipeline(args.file, args.overrides, dry_run=args.dry_run)
    except TrainingStopped as err:
        command = " ".join(["posttrain pipeline", args.file, *args.overrides])
        print(f"posttrain pipeline: {err}\ncontinue with the same command: {command}",
              file=sys.stderr)
        return 128 + err.signum
    return 0


def _score(args: argparse.Namespace) -> int:
    from posttrain.reward_models import score_file

    summary = score_file(args.model, args.data, args.output, args.batch_size, args.max_length)
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in summary.items()}))
    if args.output:
        print(f"scores written to {args.output}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from posttrain.evaluation import EvalPlan, evaluate_model, format_levels, summary_line
    from posttrain.evaluation.common import write_records
    from posttrain.evaluation.compare import comparison_table, side_by_side

    plan = EvalPlan(args.task, args.split, args.limit, args.rewards, args.data, args.batch_size,
                    args.max_new_tokens, args.new_name, args.samples, args.temperature,
                    args.seed, args.success_threshold)
    plan.rows()  # mistakes are reported before any model loads
    results = []
    for name in args.model:
        result = evaluate_model(name, plan, progress=True)
        results.append(result)
        print(summary_line(result))
        table = format_levels(result)
        if table:
            print(table)
    if len(results) > 1:
        print(comparison_table(results))
    if args.show > 0:
        print(side_by_side(results, args.show))
    if args.output:
        many = len(results) > 1
        write_records([{"model": r["model"], **rec} if many else rec
                       for r in results for rec in r["records"]], args.output)
        print(f"answers written to {args.output}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(
            [{k: v for k, v in r.items() if k != "records"} for r in results], indent=1,
            ensure_ascii=False) + "\n")
        print(f"summaries written to {args.json}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from posttrain.report import build_report

    print(build_report(args.run_dirs, output=args.output, title=args.title))
    return 0


def _load_for_generation(name: str):
    from posttrain.models import load_tokenizer, load_trained, tokenizer_name
    from posttrain.rollout.hf import HFGenerator

    tokenizer = load_tokenizer(tokenizer_name(name))
    model = load_trained(name)
    model.eval()
    return tokenizer, HFGenerator(model, tokenizer)


def _params(args: argparse.Namespace, n: int = 1):
    from posttrain.rollout.base import SamplingParams

    return SamplingParams(
        n=n,
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
    )


def _chat(args: argparse.Namespace) -> int:
    from posttrain.rollout.base import encode_prompts

    tokenizer, generator = _load_for_generation(args.model)
    params = _params(args)
    history: list[dict[str, str]] = []
    if args.system:
        history.append({"role": "system", "content": args.system})

    def answer(text: str) -> str:
        history.append({"role": "user", "content": text})
        rollout = generator.generate(encode_prompts(tokenizer, [history]), params)
        reply = rollout.completions[0].strip()
        history.append({"role": "assistant", "content": reply})
        return reply

    if args.prompt is not None:
        print(answer(args.prompt))
        return 0
    print("posttrain chat: type a message; /reset clears the history, /exit (or Ctrl-D) quits.")
    while True:
        try:
            text = input("you> ").strip()
        except EOFError:
            print()
            return 0
        if text in ("/exit", "/quit"):
            return 0
        if text == "/reset":
            del history[1 if args.system else 0 :]
            continue
        if text:
            print(f"model> {answer(text)}")


def _generate(args: argparse.Namespace) -> int:
    from posttrain.data.formats import to_prompt_example
    from posttrain.data.loading import load_rows
    from posttrain.rollout.base import encode_prompts

    rows = load_rows(args.input)
    examples = [to_prompt_example(r, w) for r, w in zip(rows.rows, rows.locations)]
    tokenizer, generator = _load_for_generation(args.model)
    params = _params(args, n=args.n)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with out.open("w") as handle:
        for start in range(0, len(examples), args.batch_size):
            chunk = examples[start : start + args.batch_size]
            rollout = generator.generate(encode_prompts(tokenizer, [e.prompt for e in chunk]), params)
            for i, completion in enumerate(rollout.completions):
                row = rows.rows[start + rollout.prompt_index[i]]
                record = {**row, "completion": completion,
                          "finish_reason": rollout.finish_reasons[i]}
                handle.write(json.dumps(record) + "\n")
                written += 1
            print(f"{min(start + args.batch_size, len(examples))}/{len(examples)} prompts",
                  file=sys.stderr)
    print(f"wrote {written} completions to {out}")
    return 0


def _sample(args: argparse.Namespace) -> int:
    from posttrain.curation.rejection import sample_file

    stats = sample_file(args.model, args.data, args.output, args.rewards, _params(args, args.k),
                        args.threshold, args.limit, args.batch_prompts)
    print(json.dumps(stats.summary()))
    print(f"wrote {stats.kept} rows to {args.output}")
    return 0

if __name__ == "__main__":
    sys.exit(main())
