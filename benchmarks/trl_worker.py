"""The TRL side of ``compare_trl.py``: one workload, one process, run by TRL's own interpreter.

    /path/to/trl-venv/bin/python benchmarks/trl_worker.py '{"workload": "sft", ...}'

Imports only TRL, transformers, datasets and torch (never posttrain: TRL lives in its own venv).
It trains on the rows of ``spec["data"]`` in file order (the shuffled sampler replaced by a
sequential one; GRPO's ``shuffle_dataset=False``), with the hyper-parameters of the spec set
explicitly wherever TRL's defaults differ (bf16, gradient checkpointing, loss type, ...), and
prints one ``RESULT {json}`` line: per-step seconds, losses and trained-token counts, completions
per step (GRPO) and the process's peak resident set.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


class Profiler:
    """torch.profiler over the steady steps (from the end of step 1 to the end of training);
    the table of operators by self CPU time is written to ``path``. Shared by both workers."""

    def __init__(self, path: str | None):
        self.path, self.profile = path, None

    def after_step(self, step: int) -> None:
        if self.path and step == 1:
            from torch.profiler import ProfilerActivity, profile

            self.profile = profile(activities=[ProfilerActivity.CPU])
            self.profile.start()

    def finish(self) -> None:
        if self.profile is not None:
            self.profile.stop()
            table = self.profile.key_averages().table(sort_by="self_cpu_time_total",
                                                      row_limit=30, max_name_column_width=48)
            Path(self.path).write_text(table)


def length_reward(completions, **_):
    """The benchmark's reward (the same function on both sides): characters / 100, so groups
    are never flat and every completion is trained."""
    return [len(c if isinstance(c, str) else c[-1]["content"]) / 100 for c in completions]


def main() -> None:
    spec = json.loads(sys.argv[1])
    import torch
    import trl
    from datasets import load_dataset
    from torch.utils.data import SequentialSampler
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    from common import peak_memory_mb  # this folder's helper (torch only)

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(spec["seed"])
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    dataset = load_dataset("json", data_files=spec["data"], split="train")
    workload = spec["workload"]
    step_seconds, losses, tokens = [], [], []

    profiler = Profiler(spec.get("profile"))

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            step_seconds.append(time.perf_counter() - self.start)
            profiler.after_step(len(step_seconds))

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    common = dict(
        output_dir=spec["output_dir"], per_device_train_batch_size=spec["batch_size"],
        max_steps=spec["steps"], learning_rate=spec["learning_rate"], lr_scheduler_type="constant",
        warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0, adam_beta1=0.9, adam_beta2=0.999,
        adam_epsilon=1e-8, bf16=False, fp16=False, gradient_checkpointing=False,
        logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, seed=spec["seed"],
        dataloader_num_workers=0, disable_tqdm=True,
    )

    def in_file_order(trainer_cls):
        class InFileOrder(trainer_cls):
            def _get_train_sampler(self, dataset=None):
                return SequentialSampler(dataset if dataset is not None else self.train_dataset)

        return InFileOrder

    def count_tokens(trainer_cls, mask_of):
        class Counting(trainer_cls):
            def compute_loss(self, model, inputs, *args, **kwargs):
                tokens.append(int(mask_of(inputs)))
                return super().compute_loss(model, inputs, *args, **kwargs)

        return Counting

    if workload == "sft":
        config = trl.SFTConfig(**common, max_length=spec["max_length"], packing=False,
                               completion_only_loss=True, shuffle_dataset=False)
        cls = count_tokens(in_file_order(trl.SFTTrainer),
                           lambda b: (b["labels"][:, 1:] != -100).sum())
        trainer = cls(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                      callbacks=[Clock()])
    elif workload == "dpo":
        config = trl.DPOConfig(**common, max_length=spec["max_length"], beta=spec["beta"],
                               loss_type=["sigmoid"], precompute_ref_log_probs=False)
        cls = count_tokens(in_file_order(trl.DPOTrainer),
                           lambda b: b["completion_mask"][:, 1:].sum())
        trainer = cls(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                      callbacks=[Clock()])
    elif workload == "grpo":
        config = trl.GRPOConfig(
            **{**common, "per_device_train_batch_size": spec["prompts_per_step"]
               * spec["num_generations"]},
            num_generations=spec["num_generations"], max_completion_length=spec["max_new_tokens"],
            steps_per_generation=1, num_iterations=1, beta=spec["beta"], loss_type="grpo",
            scale_rewards="group", temperature=1.0, top_p=1.0, top_k=0, shuffle_dataset=False,
            mask_truncated_completions=False, log_completions=False,
        )
        cls = count_tokens(trl.GRPOTrainer, lambda b: b["completion_mask"].sum())
        trainer = cls(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                      reward_funcs=[length_reward], callbacks=[Clock()])
    else:
        raise SystemExit(f"unknown workload {workload!r}")
    trainer.train()
    profiler.finish()
    print("RESULT " + json.dumps({
        "step_seconds": step_seconds, "losses": losses, "tokens": tokens,
        "peak_mb": peak_memory_mb(), "threads": torch.get_num_threads(),
        "versions": {"trl": trl.__version__, "torch": torch.__version__},
    }), flush=True)


if __name__ == "__main__":
    main()
