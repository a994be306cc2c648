"""GRPO / RLOO mechanics on a tiny random model: fast, no big model."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import stat_mean

from posttrain.algorithms.grpo import GRPO, GRPOConfig
from posttrain.algorithms.reinforce_pp import REINFORCEpp, REINFORCEppConfig
from posttrain.algorithms.rloo import RLOO, RLOOConfig
from posttrain.config import load_config
from posttrain.errors import ConfigError, RewardError
from posttrain.train.loop import train


def contains_seven(prompts, completions, completion_ids, **_):
    return [1.0 if "7" in c else 0.0 for c in completions]


def answer_length(prompts, completions, completion_ids, **_):
    """A dense toy reward that varies within (almost) every group, so groups train."""
    return [float(sum(ids) % 7) for ids in completion_ids]


@pytest.fixture
def prompts_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    rows = [{"prompt": f"Say a number, please {i}", "answer": str(i)} for i in range(16)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def make(prompts_file, tmp_path, rewards=(contains_seven,), model=None, tokenizer=None,
         trainer=GRPO, **values):
    base = {"model": "random:tiny", "train_data": str(prompts_file),
            "output_dir": str(tmp_path / "out"), "progress": False, "max_new_tokens": 8,
            "prompts_per_step": 2, "num_generations": 4, "per_device_batch_size": 8,
            "log_entropy": False}
    config_class = {GRPO: GRPOConfig, RLOO: RLOOConfig, REINFORCEpp: REINFORCEppConfig}[trainer]
    config = load_config(config_class, values={**base, **values})
    return trainer(config, model=model, tokenizer=tokenizer, reward_functions=list(rewards))


def test_mean_reward_rises_on_a_toy_task(prompts_file, tmp_path):
    algorithm = make(prompts_file, tmp_path, prompts_per_step=4, num_generations=8,
                     per_device_batch_size=16, learning_rate=1e-2, max_steps=16)
    train(algorithm)
    records = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").open()]
    rewards = [r["rewards/total/mean"] for r in records if "rewards/total/mean" in r]
    assert sum(rewards[:3]) / 3 < 0.5 < sum(rewards[-3:]) / 3
    for key in ("time/generation_s", "time/reward_s", "frac_reward_zero_std",
                "clip_ratio/low", "completion_length", "rewards/contains_seven/std"):
        assert key in records[0]


def first_round(algorithm, advantages=None):
    class FakeAccelerator:
        device = torch.device("cpu")

    algorithm.attach(algorithm.wrap(algorithm.model), FakeAccelerator())
    data = algorithm.collect(0, algorithm.prompts[:2])
    if advantages is not None:  # arbitrary (non-zero-mean) advantages, to test the loss
        data.advantages = advantages
    return data, list(algorithm.round_step_batches(data, 0))


def test_first_iteration_ratio_is_one_and_loss_is_minus_mean_advantage(prompts_file, tmp_path):
    algorithm = make(prompts_file, tmp_path, rewards=(answer_length,), max_new_tokens=6,
                     loss_type="dapo")
    data, steps = first_round(algorithm, advantages=torch.arange(8.0) - 2.0)
    (step,) = steps
    total = 0.0
    for mb in step.micro_batches:
        loss, metrics = algorithm.loss(algorithm.wrapped, mb, step)
        assert stat_mean(metrics["clip_ratio/low"]) == 0 == stat_mean(metrics["clip_ratio/high"])
        total += loss.item()
    # ratio = 1: token loss = -A_i, dapo = token mean over the step
    lengths = torch.tensor([len(c) for c in data.rollout.completion_ids], dtype=torch.float32)
    expected = -(data.advantages * lengths).sum() / lengths.sum()
    assert abs(expected.item()) > 0.1
    assert total == pytest.approx(expected.item(), abs=1e-6)


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo"])
def test_accumulation_1x8_equals_8x1(prompts_file, tmp_path, tiny_tokenizer, loss_type):
    from posttrain.tiny import build_tiny_model

    grads = []
    for micro in (8, 1):
        model = build_tiny_model(tiny_tokenizer)
        algorithm = make(prompts_file, tmp_path, rewards=(answer_length,), model=model,
                         tokenizer=None, per_device_batch_size=micro, loss_type=loss_type)
        _, (step,) = first_round(algorithm)
        assert len(step.micro_batches) == 8 // micro
        for mb in step.micro_batches:
            algorithm.loss(algorithm.wrapped, mb, step)[0].backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()
                                if p.grad is not None]))
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[1], grads[0], atol=1e-6, rtol=1e-4)


def test_skip_zero_std_groups_drops_flat_groups(prompts_file, tmp_path):
    def first_group_flat(prompts, completions, completion_ids, **_):
        if len(completions) == 1:  # the check before training: one row
            return [0.0]
        return [0.0] * 4 + [float(i) for i in range(4)]

    algorithm = make(prompts_file, tmp_path, rewards=(first_group_flat,),
                     skip_zero_std_groups=True)
    data, (step,) = first_round(algorithm)
    assert data.keep == [4, 5, 6, 7]
    assert data.metrics["frac_reward_zero_std"] == 0.5
    assert step.totals["sequences"] == 4


def test_several_iterations_store_old_logprobs(prompts_file, tmp_path):
    algorithm = make(prompts_file, tmp_path, rewards=(answer_length,), num_iterations=2,
                     mini_batches=2)
    _, steps = first_round(algorithm)
    assert len(steps) == 4 and algorithm.total_steps() == 8 * 4
    assert all("old_logprobs" in mb for step in steps for mb in step.micro_batches)


def test_lora_reference_is_the_base_model(prompts_file, tmp_path):
    """The reference is the base model (adapter switched off), not the adapted policy: with an
    adapter that changes the model, reference log-probs equal the base model's, and the KL is
    positive. (A fresh adapter has B = 0, so the check needs a trained-looking one.)"""
    from posttrain.tiny import build_tiny_model
    from posttrain.train.forward import TokenLogprobs

    algorithm = make(prompts_file, tmp_path, rewards=(answer_length,), beta=0.1,
                     use_lora=True, lora_r=4)
    assert algorithm.reference is None  # no second copy in memory
    with torch.no_grad():
        for name, p in algorithm.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(p.numel()))
    data, (step,) = first_round(algorithm)
    base = TokenLogprobs(build_tiny_model(algorithm.tokenizer, seed=0).eval())
    for mb in step.micro_batches:
        with torch.no_grad():
            expected = algorithm.logprobs(base, mb)[0]
            adapted = algorithm.logprobs(algorithm.wrapped, mb)[0]
        mask = mb["completion_mask"].bool()
        torch.testing.assert_close(mb["ref_logprobs"][mask], expected[mask], atol=1e-4, rtol=0)
        assert not torch.allclose(adapted[mask], expected[mask], atol=1e-2)
        _, metrics = algorithm.loss(algorithm.wrapped, mb, step)
        assert stat_mean(metrics["kl"]) > 1e-3


def test_reward_error_names_the_function(prompts_file, tmp_path):
    def broken(prompts, completions, completion_ids, **_):
        raise KeyError("answer_text")

    with pytest.raises(RewardError, match="broken.*before training"):
        make(prompts_file, tmp_path, rewards=(broken,))  # checked before any model loads

    calls = []

    def broken_later(prompts, completions, completion_ids, **_):
        calls.append(len(completions))
        if len(calls) > 1:
            raise KeyError("answer_text")
        return [0.0] * len(completions)

    algorithm = make(prompts_file, tmp_path, rewards=(broken_later,))
    with pytest.raises(RewardError, match=r"broken_later.*KeyError.*starting at row"):
        first_round(algorithm)


@pytest.mark.parametrize("values, message", [
    ({"num_generations": 1}, "at least 2"),
    ({"gradient_accumulation_steps": 2}, "derived in online RL"),
    ({"mini_batches": 3}, "must divide"),
    ({"num_iterations": 2, "save_steps": 3}, "multiple of the 2"),
    ({"epsilon_high": 0.1}, "epsilon_high must be >= epsilon"),
    ({"loss_type": "ppo"}, "expected one of"),
])
def test_batch_semantics_are_validated_before_loading(values, message):
    with pytest.raises(ConfigError, match=message):
        load_config(GRPOConfig, values={"train_data": "x.jsonl", **values})


def test_cli_grpo_with_user_reward_file(prompts_file, tmp_path, capsys):
    from posttrain.cli import main

    reward_file = tmp_path / "my_reward.py"
    reward_file.write_text("def longer(prompts, completions, completion_ids, **kw):\n"
                           "    return [float(len(c)) for c in completions]\n")
    code = main(["grpo", f"train_data={prompts_file}", "model=random:tiny",
                 f"output_dir={tmp_path / 'cli'}", f"rewards=['{reward_file}:longer']",
                 "max_steps=1", "max_new_tokens=4", "progress=false", "num_generations=2",
                 "prompts_per_step=2", f"eval_data={prompts_file}", "eval_max_samples=2"])
    assert code == 0
    assert (tmp_path / "cli" / "model.safetensors").exists()
    last = json.loads((tmp_path / "cli" / "metrics.jsonl").read_text().splitlines()[-1])
    assert "eval/rewards/longer/mean" in last


def test_mini_batches_keep_the_rollout_policy_as_pi_old(prompts_file, tmp_path):
    """With several optimiser steps per round, pi_old must be the policy that sampled, not
    the policy after the round's first update."""
    import copy

    algorithm = make(prompts_file, tmp_path, rewards=(answer_length,), mini_batches=2)

    class FakeAccelerator:
        device = torch.device("cpu")

    algorithm.attach(algorithm.wrap(algorithm.model), FakeAccelerator())
    sampler = copy.deepcopy(algorithm.wrapped)
    data = algorithm.collect(0, algorithm.prompts[:2])
    steps = algorithm.round_step_batches(data, 0)
    first = next(steps)
    optimizer = torch.optim.SGD(algorithm.model.parameters(), lr=1.0)
    for mb in first.micro_batches:
        algorithm.loss(algorithm.wrapped, mb, first)[0].backward()
    optimizer.step()  # the policy moves before the second mini-batch is built
    second = next(steps)
    for mb in second.micro_batches:
        with torch.no_grad():
            expected = algorithm.logprobs(sampler, mb)[0]
            moved = algorithm.logprobs(algorithm.wrapped, mb)[0]
        mask = mb["completion_mask"].bool()
        torch.testing.assert_close(mb["old_logprobs"][mask], expected[mask], atol=1e-5, rtol=0)
        assert not torch.allclose(moved[mask], expected[mask], atol=1e-3)


def test_stored_old_logprobs_move_to_the_training_device():
    """Round-level log-prob tables live on the CPU; the loss must see them on the training
    device (here the `meta` device stands in for a GPU), and without stored ones pi_old is the
    current log-probs, detached."""
    from types import SimpleNamespace

    from posttrain.algorithms.online import OnlineRL

    trainer = SimpleNamespace(device=torch.device("meta"))
    stored = {"old_logprobs": torch.zeros(2, 3)}
    assert OnlineRL.old_logprobs(trainer, stored, torch.zeros(2, 3)).device.type == "meta"
    current = torch.ones(2, 3, requires_grad=True)
    fallback = OnlineRL.old_logprobs(trainer, {}, current)
    assert not fallback.requires_grad and torch.equal(fallback, current.detach())


def test_reinforce_pp_whitens_over_the_rounds_tokens(prompts_file, tmp_path):
    from posttrain.ops.stats import masked_mean

    algorithm = make(prompts_file, tmp_path, rewards=(answer_length,),
                     trainer=REINFORCEpp)
    data, (step,) = first_round(algorithm)
    mask = data.rollout.to_padded_tensors(algorithm.pad_id)["completion_mask"]
    assert data.advantages.shape == mask.shape  # one advantage per token
    assert float(masked_mean(data.advantages, mask)) == pytest.approx(0.0, abs=1e-5)
    var = masked_mean((data.advantages - masked_mean(data.advantages, mask)) ** 2, mask)
    assert float(var) == pytest.approx(1.0, abs=0.05)
    for row, length in enumerate(mask.sum(1).long().tolist()):  # the same within a completion
        assert torch.allclose(data.advantages[row, :length], data.advantages[row, 0])
    loss, _ = algorithm.loss(algorithm.wrapped, step.micro_batches[0], step)
    assert torch.isfinite(loss)


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_scale_rewards(prompts_file, tmp_path, scale):
    algorithm = make(prompts_file, tmp_path, rewards=(answer_length,), scale_rewards=scale)
    data, _ = first_round(algorithm)
    grouped = data.rewards.reshape(-1, 4)
    centred = (grouped - grouped.mean(1, keepdim=True)).reshape(-1)
    if scale == "none":
        expected = centred
    elif scale == "batch":
        expected = centred / (data.rewards.std() + 1e-4)
    else:
        expected = centred / (grouped.std(1, keepdim=True).repeat_interleave(4, 0)[:, 0] + 1e-4)
    torch.testing.assert_close(data.advantages, expected, atol=1e-3, rtol=1e-3)


def test_mask_truncated_completions_leaves_them_out(prompts_file, tmp_path):
    algorithm = make(prompts_file, tmp_path, rewards=(answer_length,), max_new_tokens=2,
                     mask_truncated_completions=True)
    data, steps = first_round(algorithm)
    truncated = [i for i, r in enumerate(data.rollout.finish_reasons) if r == "length"]
    assert truncated and not set(truncated) & set(data.keep)
    assert data.metrics["trained_completions"] == len(data.keep)
    assert sum(len(mb["rows"]) for step in steps for mb in step.micro_batches) == len(data.keep)


def test_system_prompt_and_prompt_column(tmp_path):
    path = tmp_path / "questions.jsonl"
    path.write_text("".join(json.dumps({"question": f"What is {i}?", "answer": str(i)}) + "\n"
                            for i in range(4)))
    algorithm = make(path, tmp_path, rewards=(answer_length,), prompt_column="question",
                     system_prompt="Answer in one word.")
    first = algorithm.prompts[0].prompt
    assert first[0] == {"role": "system", "content": "Answer in one word."}
    assert first[1] == {"role": "user", "content": "What is 0?"}
    with pytest.raises(Exception, match="prompt"):
        make(path, tmp_path, rewards=(answer_length,))  # without prompt_column: no `prompt`


def test_rloo_trainer_uses_leave_one_out_baselines(prompts_file, tmp_path):
    algorithm = make(prompts_file, tmp_path, rewards=(answer_length,), trainer=RLOO)
    data, _ = first_round(algorithm)
    groups = data.rewards.view(-1, 4)  # [prompts, G]
    others = (groups.sum(1, keepdim=True) - groups) / 3
    torch.testing.assert_close(data.advantages, (groups - others).reshape(-1))


def test_the_estimator_is_fixed_by_the_trainer(prompts_file, tmp_path):
    with pytest.raises(ConfigError, match="advantage_estimator"):
        make(prompts_file, tmp_path, advantage_estimator="rloo")
    config = load_config(GRPOConfig, values={"model": "random:tiny",
                                             "train_data": str(prompts_file)})
    with pytest.raises(TypeError, match="critic= is for PPO"):
        GRPO(config, reward_functions=[contains_seven], critic=torch.nn.Linear(1, 1))
