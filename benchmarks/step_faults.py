"""Page faults and kernel time of every SFT step (is the allocator handing memory back?).

    python benchmarks/step_faults.py --steps 8                      # Qwen2.5-0.5B shape
    MALLOC_TRIM_THRESHOLD_=131072 python benchmarks/step_faults.py  # glibc's defaults back

Trains ``--steps`` SFT steps of ``compare_trl.py``'s SFT workload and config (batch 2, max
length 256, fp32, ``--threads`` threads) and prints, per step, the step's seconds and the process's minor page faults,
kernel (sys) and user CPU seconds during it (``getrusage``). A ``MALLOC_*_`` variable in the
environment makes posttrain leave glibc's settings alone (``posttrain.train.allocator``), so the
second command shows the run without the change.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--model", default="random:qwen2.5-0.5b-smallvocab")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch
    from compare_trl import posttrain_config, workload_spec, write_data

    import posttrain
    from posttrain.hub import resolve_model

    torch.set_num_threads(args.threads)
    sizes = argparse.Namespace(sft_batch=2, sft_steps=args.steps, seq_len=256)
    spec = {**workload_spec("sft", sizes), "workload": "sft", "seed": 0,
            "model": resolve_model(args.model)}
    with tempfile.TemporaryDirectory() as tmp:
        spec["data"] = str(write_data(Path(tmp), "sft", spec["batch_size"] * (args.steps + 1),
                                      spec.pop("words")))
        spec["output_dir"] = f"{tmp}/out"
        config, _ = posttrain_config(spec)
        trainer = posttrain.trainer("sft", config)
        trainer.save = lambda *a, **k: None
        last = [resource.getrusage(resource.RUSAGE_SELF)]

        class PerStep(posttrain.Callback):
            def on_step_end(self, step, metrics):
                now = resource.getrusage(resource.RUSAGE_SELF)
                before, last[0] = last[0], now
                print(f"step {step}: {metrics['time/train_s']:.2f} s, "
                      f"{now.ru_minflt - before.ru_minflt} minor faults, "
                      f"sys {now.ru_stime - before.ru_stime:.2f} s, "
                      f"user {now.ru_utime - before.ru_utime:.2f} s", flush=True)

        start = time.perf_counter()
        trainer.train(callbacks=[PerStep()])
        print(f"{args.steps} steps in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
