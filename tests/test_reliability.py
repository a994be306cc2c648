"""Crashes, full disks, corrupt checkpoints, signals and faulty rewards: nothing trained is lost,
nothing corrupt is resumed, and every failure says what happened (docs/reliability.md)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import write_jsonl
from safetensors.torch import load_file

from posttrain.algorithms.sft import SFT, SFTConfig
from posttrain.cli import main
from posttrain.config import load_config
from posttrain.errors import ConfigError, RewardError
from posttrain.train.checkpoint import CheckpointError, find_resumable
from posttrain.train.loop import TrainingError, train

ROOT = Path(__file__).resolve().parents[1]


def sft_config(data, out, **values) -> SFTConfig:
    base = {"model": "random:tiny", "train_data": str(data), "output_dir": str(out),
            "progress": False, "lr_scheduler": "constant", "per_device_batch_size": 2,
            "learning_rate": 5e-3}
    return load_config(SFTConfig, values={**base, **values})


def checkpoints(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "checkpoints").glob("step-*"))


def weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "model.safetensors")


@pytest.fixture
def straight(memorise_data, tmp_path):
    """Four steps without interruption: what every resumed run must end with."""
    out = tmp_path / "straight"
    train(SFT(sft_config(memorise_data, out, max_steps=4, save_steps=2)))
    return weights(out)


def interrupted(memorise_data, out: Path) -> None:
    """Two steps (checkpoints at 1 and 2), as if killed right after step 2."""
    train(SFT(sft_config(memorise_data, out, max_steps=2, save_steps=1, save_total_limit=0,
                         save_final_checkpoint=True)))
    (out / "model.safetensors").unlink()


def resume(memorise_data, out: Path, **values) -> None:
    values = {"max_steps": 4, "save_steps": 2, **values}
    config = sft_config(memorise_data, out, resume=True, allow_config_change=True, **values)
    train(SFT(config))


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-7, rtol=0)


# --- corrupt checkpoints fall back to the previous good one --------------------------------

@pytest.mark.parametrize("damage", ["empty_manifest", "torn_manifest", "truncated_weights",
                                    "truncated_optimizer", "flipped_bits", "missing_rng"])
def test_a_damaged_checkpoint_is_reported_and_the_previous_one_used(
        damage, memorise_data, tmp_path, straight, capsys):
    out = tmp_path / "run"
    interrupted(memorise_data, out)
    newest = out / "checkpoints" / "step-000002"
    if damage == "empty_manifest":
        (newest / "manifest.json").write_text("")
    elif damage == "torn_manifest":
        text = (newest / "manifest.json").read_text()
        (newest / "manifest.json").write_text(text[: len(text) // 2])
    elif damage == "truncated_weights":
        path = newest / "trainable.safetensors"
        path.write_bytes(path.read_bytes()[:-100])
    elif damage == "truncated_optimizer":
        path = newest / "optimizer.pt"
        path.write_bytes(path.read_bytes()[:1000])
    elif damage == "flipped_bits":  # low mantissa bits of 1% of the weights: a silent change
        path = newest / "trainable.safetensors"
        data = bytearray(path.read_bytes())
        header = 8 + int.from_bytes(data[:8], "little")
        for offset in range(header, len(data) - 4, 400):
            data[offset] ^= 0x01
        path.write_bytes(bytes(data))
    else:
        (newest / "rng.pt").unlink()
    folder, _, skipped = find_resumable(out)
    assert folder.name == "step-000001" and len(skipped) == 1 and "step-000002" in skipped[0]
    capsys.readouterr()
    resume(memorise_data, out)
    err = capsys.readouterr().err
    assert "skipping checkpoint step-000002" in err and "step-000001" in err
    assert_same(weights(out), straight)  # resumed from step 1, ended where the straight run did


def test_no_good_checkpoint_at_all_is_a_clear_error(memorise_data, tmp_path):
    out = tmp_path / "run"
    interrupted(memorise_data, out)
    for folder in (out / "checkpoints").glob("step-*"):
        (folder / "manifest.json").write_text("{")
    with pytest.raises(ConfigError, match="no checkpoint can be resumed"):
        resume(memorise_data, out)


def test_a_torn_metrics_line_does_not_block_resume(memorise_data, tmp_path, straight):
    out = tmp_path / "run"
    interrupted(memorise_data, out)
    with (out / "metrics.jsonl").open("a") as handle:
        handle.write('{"step": 3, "loss": 1.2')  # a crash in the middle of a write
    resume(memorise_data, out)
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").open()]
    assert steps == [1, 2, 3, 4]
    assert_same(weights(out), straight)


# --- a full disk --------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A 6 MiB tmpfs: room for one tiny-model checkpoint and the model, not for much more."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root")
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mount_point)],
                          capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_a_full_disk_says_so_and_keeps_the_previous_checkpoint(memorise_data, small_disk,
                                                               straight):
    out = small_disk / "run"
    train(SFT(sft_config(memorise_data, out, max_steps=2, save_steps=1, save_total_limit=0,
                         save_final_checkpoint=True)))
    filler = small_disk / "filler"
    free = shutil.disk_usage(small_disk).free
    filler.write_bytes(b"\0" * max(0, free - 200_000))  # leave 200 kB: no room for a checkpoint
    with pytest.raises(CheckpointError, match="disk full.*step-000002 is intact"):
        resume(memorise_data, out, save_steps=1)
    assert not list((out / "checkpoints").glob(".tmp-*"))  # the partial folder is gone
    folder, manifest, skipped = find_resumable(out)
    assert folder.name == "step-000002" and not skipped  # still verifies
    for line in (out / "metrics.jsonl").open():
        json.loads(line)  # no torn line
    filler.unlink()
    resume(memorise_data, out)
    assert_same(weights(out), straight)


# --- config changes, signals, failing evaluations -------------------------------------------

def test_resuming_with_a_changed_config_needs_the_flag(memorise_data, tmp_path, capsys):
    out = tmp_path / "run"
    interrupted(memorise_data, out)
    changed = sft_config(memorise_data, out, max_steps=2, save_steps=1, resume=True,
                         learning_rate=1e-4, seed=7)
    with pytest.raises(ConfigError, match=r"learning_rate: 0.005 -> 0.0001; .*seed: 42 -> 7"):
        train(SFT(changed))
    capsys.readouterr()
    allowed = sft_config(memorise_data, out, max_steps=3, save_steps=1, resume=True,
                         learning_rate=1e-4, allow_config_change=True)
    train(SFT(allowed))
    assert "with a changed config" in capsys.readouterr().err


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_checkpoints_and_says_how_to_resume(signum, memorise_data, tmp_path):
    out = tmp_path / "run"
    slow = tmp_path / "slow.py"  # a reward-free way to make each step take a while
    slow.write_text(
        "import sys, time\nfrom posttrain.cli import main\n"
        "from posttrain.algorithms import sft\n_loss = sft.SFT.loss\n"
        "def loss(self, *a):\n    time.sleep(0.3)\n    return _loss(self, *a)\n"
        "sft.SFT.loss = loss\nsys.exit(main(sys.argv[1:]))\n")
    args = ["sft", f"train_data={memorise_data}", "model=random:tiny", f"output_dir={out}",
            "max_steps=200", "progress=false", "per_device_batch_size=2"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(slow), *args], stderr=subprocess.PIPE,
                            text=True, env=env)
    deadline = time.monotonic() + 60
    while not (out / "metrics.jsonl").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum, err
    assert f"stopped by {signal.Signals(signum).name} after step" in err
    assert "resume with: posttrain sft" in err and "--resume" in err
    folder, manifest, _ = find_resumable(out)
    assert folder is not None and 0 < manifest["step"] < 200


def test_a_failing_final_evaluation_keeps_the_trained_model(memorise_data, tmp_path):
    out = tmp_path / "run"
    algorithm = SFT(sft_config(memorise_data, out, max_steps=2, eval_data=str(memorise_data)))

    def broken_evaluation(wrapped):
        raise RuntimeError("evaluation bug")

    algorithm.evaluate = broken_evaluation
    with pytest.raises(RuntimeError, match="evaluation bug"):
        train(algorithm)
    assert (out / "model.safetensors").exists()  # saved before the evaluation ran


def test_non_finite_weights_stop_the_run_before_they_are_saved(memorise_data, tmp_path,
                                                              monkeypatch):
    """An update that overflows a weight (here injected into AdamW's second step)."""
    step = torch.optim.AdamW.step
    calls = []

    def overflowing_step(self, *args, **kwargs):
        out = step(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == 2:
            with torch.no_grad():
                self.param_groups[0]["params"][0].view(-1)[0] = float("inf")
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", overflowing_step)
    out = tmp_path / "run"
    with pytest.raises(TrainingError, match="step 2 made some weights non-finite"):
        train(SFT(sft_config(memorise_data, out, max_steps=3)))
    assert not (out / "model.safetensors").exists()
    assert checkpoints(out) == ["step-000001"]  # the last good state, nothing after it


def test_weights_finite_sees_every_kind_of_bad_value_and_no_false_alarm():
    """The guard's fast path is a sum per tensor: a sum that overflows (finite values) must not
    raise the alarm; NaN, +inf and -inf anywhere must."""
    from posttrain.train.guards import weights_finite

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    assert weights_finite(model)
    with torch.no_grad():
        model[0].weight[0, :2] = 3e38  # the sum overflows, every value is finite
    assert weights_finite(model)
    for bad in (float("nan"), float("inf"), float("-inf")):
        with torch.no_grad():
            model[1].bias[1] = bad
        assert not weights_finite(model), bad
    model[1].bias.requires_grad_(False)  # frozen weights are not the guard's business
    assert weights_finite(model)


def test_allocator_tuning_respects_the_users_choice(monkeypatch):
    import platform

    from posttrain.train import allocator

    assert allocator.user_chose_allocator({"MALLOC_ARENA_MAX": "2"})
    assert allocator.user_chose_allocator({"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"})
    assert not allocator.user_chose_allocator({"PATH": "/bin", "LD_PRELOAD": ""})
    monkeypatch.setattr(allocator, "_done", False)
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1")
    assert allocator.keep_freed_memory() is False  # the user's setting wins
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_")
    for name in [k for k in os.environ if k.startswith("MALLOC_")] + ["LD_PRELOAD"]:
        monkeypatch.delenv(name, raising=False)
    if platform.libc_ver()[0] == "glibc":
        assert allocator.keep_freed_memory() is True
        assert allocator.keep_freed_memory() is False  # once per process


# --- reward faults ------------------------------------------------------------------------

@pytest.fixture
def prompts_file(tmp_path):
    rows = [{"prompt": f"Say a number, please {i}", "answer": str(i)} for i in range(8)]
    return write_jsonl(tmp_path / "prompts.jsonl", rows)


def grpo(prompts_file, tmp_path, reward_functions, **values):
    from posttrain.algorithms.grpo import GRPO, GRPOConfig

    base = {"model": "random:tiny", "train_data": str(prompts_file), "progress": False,
            "output_dir": str(tmp_path / "grpo"), "prompts_per_step": 2, "num_generations": 2,
            "max_new_tokens": 4, "max_steps": 3}
    return GRPO(load_config(GRPOConfig, values={**base, **values}),
                reward_functions=reward_functions)


def test_a_reward_that_hangs_is_a_timeout(prompts_file, tmp_path):
    def hangs(prompts, completions, completion_ids, **_):
        if len(completions) > 1:  # (the check before training passes)
            time.sleep(600)
        return [0.0] * len(completions)

    algorithm = grpo(prompts_file, tmp_path, [hangs], reward_timeout_s=0.5)
    start = time.monotonic()
    with pytest.raises(RewardError, match=r"did not return within 0.5 s"):
        train(algorithm)
    assert time.monotonic() - start < 60


def test_on_error_zero_and_skip_count_the_faults(prompts_file, tmp_path):
    def flaky(prompts, completions, completion_ids, **_):
        if len(completions) > 1:
            raise ValueError("flaky")
        return [0.0]

    def steady(prompts, completions, completion_ids, **_):
        return [float(len(ids) % 3) for ids in completion_ids]

    for policy in ("zero", "skip"):
        out = tmp_path / policy
        algorithm = grpo(prompts_file, tmp_path, [flaky, steady], reward_on_error=policy,
                         output_dir=str(out))
        with pytest.warns(UserWarning, match=f"on_error: {policy}"):
            train(algorithm)
        first = json.loads((out / "metrics.jsonl").open().readline())
        assert first["rewards/flaky/errors"] == 1.0
        if policy == "zero":
            assert first["rewards/flaky/mean"] == 0.0
        else:
            assert "rewards/flaky/mean" not in first  # did not apply


def test_sys_exit_in_a_reward_is_an_error_and_keeps_what_was_trained(prompts_file, tmp_path):
    calls = []

    def exits(prompts, completions, completion_ids, **_):
        calls.append(1)
        if len(calls) == 4:  # the check, then rounds 1 and 2 train; round 3 exits
            sys.exit(0)
        return [float(len(ids) % 3) for ids in completion_ids]

    algorithm = grpo(prompts_file, tmp_path, [exits], max_steps=5)
    with pytest.raises(RewardError, match=r"called sys.exit\(0\)"):
        train(algorithm)
    assert "step-000002" in checkpoints(tmp_path / "grpo")  # the two trained steps are kept


def test_rounds_without_any_reward_warn_then_stop(prompts_file, tmp_path):
    def never(prompts, completions, completion_ids, **_):
        return [None] * len(completions)

    algorithm = grpo(prompts_file, tmp_path, [never], max_steps=10, max_rounds_without_reward=2)
    with pytest.warns(UserWarning, match="no reward function returned a value"):
        with pytest.raises(RewardError, match="stopping after 2 rounds"):
            train(algorithm)


def test_huge_rewards_and_missing_columns_fail_before_any_model_loads(prompts_file, tmp_path,
                                                                     monkeypatch):
    from posttrain.algorithms import online

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(online, "load_policy", no_model)

    def huge(prompts, completions, completion_ids, **_):
        return [1e39] * len(completions)

    with pytest.raises(RewardError, match=r"\|reward\| must be <= 1e\+09"):
        grpo(prompts_file, tmp_path, [huge])
    rows = [{"prompt": "What is 1 + 1?"}]
    no_answers = write_jsonl(tmp_path / "no_answers.jsonl", rows)
    with pytest.raises(RewardError, match=r"'math'.*answer"):
        grpo(no_answers, tmp_path, None, rewards=["math"])
    with pytest.raises(RewardError, match=r"'code'.*tests"):
        grpo(no_answers, tmp_path, None, rewards=["code"])
    bad_tests = write_jsonl(tmp_path / "bad_tests.jsonl",
                            [{"prompt": "Write f", "tests": ["import os\nassert f(1) == 1"]}])
    with pytest.raises(RewardError, match=r"(?s)prompt 0: test 0 .*Import"):
        grpo(bad_tests, tmp_path, None, rewards=["code"])


def test_cli_reports_config_mistakes_with_exit_2(memorise_data, tmp_path, capsys):
    cases = {
        "learning_rate=inf": "learning_rate", "learning_rate=nan": "learning_rate",
        "max_steps=0": "max_steps", "num_epochs=0": "num_epochs", "num_epochs=-1": "num_epochs",
        "max_samples=-1": "max_samples", "output_dir=": "output_dir",
        "save_steps=-1": "save_steps", "warmup_steps=-5": "warmup_steps",
        "logging_steps=0": "logging_steps",
    }
    for override, key in cases.items():
        args = ["sft", f"train_data={memorise_data}", "model=random:tiny",
                f"output_dir={tmp_path / 'x'}", override]
        assert main(args) == 2, override
        assert key in capsys.readouterr().err, override
    rl = {"beta=-0.1": "beta", "prompts_per_step=0": "prompts_per_step",
          "num_iterations=0": "num_iterations", "epsilon=-0.2": "epsilon",
          "max_new_tokens=0": "max_new_tokens", "top_p=0": "top_p"}
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "hi", "answer": "1"}])
    for override, key in rl.items():
        args = ["grpo", f"train_data={prompts}", "model=random:tiny",
                f"output_dir={tmp_path / 'y'}", override]
        assert main(args) == 2, override
        assert key in capsys.readouterr().err, override
