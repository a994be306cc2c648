"""PPO (posttrain.algorithms.ppo) on tiny random models: the critic learns, KL shaping lands on
the right tokens, accumulation is exact, a toy reward rises, saving/reloading, validation."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import stat_mean

from posttrain.algorithms.ppo import PPO, PPOConfig
from posttrain.algorithms.rounds import padded_rows
from posttrain.config import load_config
from posttrain.errors import ConfigError
from posttrain.ops.policy import kl_estimate
from posttrain.train.loop import train


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run far faster on one thread (and do not fight other processes)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def answer_length(prompts, completions, completion_ids, **_):
    return [float(len(ids)) for ids in completion_ids]


def constant_one(prompts, completions, completion_ids, **_):
    return [1.0] * len(completions)


@pytest.fixture
def prompts_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    rows = [{"prompt": f"Say a number, please {i}", "answer": str(i)} for i in range(16)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def make(prompts_file, tmp_path, rewards=(answer_length,), model=None, **values):
    base = {"model": "random:tiny", "train_data": str(prompts_file),
            "output_dir": str(tmp_path / "out"), "progress": False, "max_new_tokens": 6,
            "prompts_per_step": 4, "num_generations": 2, "per_device_batch_size": 8,
            "log_entropy": False}
    config = load_config(PPOConfig, values={**base, **values})
    return PPO(config, model=model, reward_functions=list(rewards))


def first_round(algorithm, prompts: int = 4):
    class FakeAccelerator:
        device = torch.device("cpu")

    algorithm.attach(algorithm.wrap(algorithm.model), FakeAccelerator())
    data = algorithm.collect(0, algorithm.prompts[:prompts])
    return data, list(algorithm.round_step_batches(data, 0))


def completion_mask(data) -> torch.Tensor:
    lengths = [len(ids) for ids in data.rollout.completion_ids]
    mask = torch.zeros(len(lengths), max(lengths))
    for i, n in enumerate(lengths):
        mask[i, :n] = 1.0
    return mask


def test_critic_value_loss_falls_on_a_fixed_rollout(prompts_file, tmp_path):
    from posttrain.train.optim import build_optimizer

    algorithm = make(prompts_file, tmp_path, learning_rate=0.0, value_learning_rate=3e-3,
                     value_clip=100.0, kl_coef=0.0, ppo_epochs=1)
    _, (step,) = first_round(algorithm)
    optimizer = build_optimizer(algorithm.model, algorithm.config)
    assert sorted({g["lr"] for g in optimizer.param_groups}) == [0.0, 3e-3]  # policy, critic
    policy_before = [p.detach().clone() for p in algorithm.policy.parameters()]
    losses = []
    for _ in range(25):  # the same micro-batches (fixed returns) every time
        losses.append(0.0)
        for mb in step.micro_batches:
            loss, metrics = algorithm.loss(algorithm.wrapped, mb, step)
            loss.backward()
            losses[-1] += stat_mean(metrics["value_loss"])
        optimizer.step()
        optimizer.zero_grad()
    assert losses[-1] < 0.3 * losses[0], losses
    assert all(torch.equal(a, b) for a, b in zip(policy_before, algorithm.policy.parameters()))


@pytest.mark.parametrize("penalty", ["reward", "loss"])
def test_kl_shaping_lands_on_the_right_tokens(prompts_file, tmp_path, tiny_tokenizer, penalty):
    from posttrain.tiny import build_tiny_model

    policy = build_tiny_model(tiny_tokenizer, seed=1)  # differs from the reference (seed 0)
    algorithm = make(prompts_file, tmp_path, rewards=(constant_one,), model=policy,
                     kl_coef=0.5, kl_penalty=penalty, gamma=1.0, lam=1.0, num_generations=1,
                     whiten_advantages=False, ppo_epochs=1, per_device_batch_size=3)
    assert algorithm.config.kl_estimator == ("k1" if penalty == "reward" else "k3")
    data, (step,) = first_round(algorithm)
    mask = completion_mask(data)  # [N, C]
    # one step per round: pi_old is the sampler's own log-probs, not re-scored nor stored
    assert algorithm.estimator.sampler_is_policy(algorithm) and "old_logprobs" not in data.token_data
    returns = data.token_data["returns"]
    old, ref = torch.zeros_like(returns), torch.zeros_like(returns)
    for i in range(len(mask)):  # each row alone: its own padding, so alignment is checked too
        n = int(mask[i].sum())
        row = padded_rows(data.rollout, [i], algorithm.pad_id)
        old[i, :n] = row["sampler_logprobs"][0]
        fresh = algorithm.logprobs(algorithm.wrapped, row)[0][0]  # pi_theta = pi_old, [n]
        torch.testing.assert_close(fresh.detach(), old[i, :n], atol=1e-4, rtol=0)
        ref[i, :n] = algorithm.reference_logprobs(row)[0]
    kl = (old - ref) * mask  # k1 per token
    assert kl.abs().sum() > 0
    # gamma = lam = 1: returns_t = sum_{s >= t} r_s with r_s = -0.5 kl_s + [s last] * 1.0
    shaped = penalty == "reward"
    future_kl = kl.flip(1).cumsum(1).flip(1)  # [N, C] sum_{s >= t} kl_s
    expected = (1.0 - (0.5 * future_kl if shaped else 0.0)) * mask
    torch.testing.assert_close(returns, expected, atol=1e-5, rtol=0)
    logged = kl_estimate(old, ref, algorithm.config.kl_estimator) * mask  # k1, or k3 (loss)
    assert data.metrics["kl"] == pytest.approx(float(logged.sum() / mask.sum()), abs=1e-5)
    for mb in step.micro_batches:
        assert ("ref_logprobs" in mb) == (not shaped)  # the loss needs pi_ref only in loss mode
        _, metrics = algorithm.loss(algorithm.wrapped, mb, step)
        assert ("kl" in metrics) == (not shaped)


def test_adaptive_kl_coefficient_moves_and_is_checkpointed(prompts_file, tmp_path,
                                                           tiny_tokenizer):
    from posttrain.tiny import build_tiny_model

    algorithm = make(prompts_file, tmp_path, model=build_tiny_model(tiny_tokenizer, seed=1),
                     adaptive_kl=True, kl_coef=0.1, kl_target=1e-3, kl_horizon=80.0)
    data, _ = first_round(algorithm)
    assert data.metrics["kl_coef"] == 0.1  # this round was shaped with the initial value
    # KL far above target: error clipped to +0.2, times n_steps / horizon = 8 / 80
    assert algorithm.estimator.kl_ctl.value == pytest.approx(0.1 * (1 + 0.2 * 8 / 80))
    state = algorithm.state_dict()
    algorithm.estimator.kl_ctl.value = 0.5
    algorithm.load_state_dict(state)
    assert algorithm.estimator.kl_ctl.value == pytest.approx(0.102)


def test_missing_eos_penalty_lowers_the_score_of_truncated_completions(prompts_file, tmp_path):
    algorithm = make(prompts_file, tmp_path, rewards=(constant_one,), missing_eos_penalty=0.75,
                     kl_coef=0.0, max_new_tokens=3)
    data, _ = first_round(algorithm)
    truncated = data.metrics["frac_truncated"]
    assert truncated > 0
    assert data.metrics["scores/mean"] == pytest.approx(1.0 - 0.75 * truncated)
    assert data.metrics["rewards/total/mean"] == 1.0  # the logged reward is the raw one


def test_accumulation_1x8_equals_8x1_for_policy_and_critic(prompts_file, tmp_path,
                                                           tiny_tokenizer):
    from posttrain.tiny import build_tiny_model

    grads = []
    for micro in (8, 1):
        algorithm = make(prompts_file, tmp_path, model=build_tiny_model(tiny_tokenizer),
                         per_device_batch_size=micro, prompts_per_step=2, num_generations=4,
                         ppo_epochs=1, vf_coef=0.5)
        _, (step,) = first_round(algorithm, prompts=2)
        assert len(step.micro_batches) == 8 // micro
        for mb in step.micro_batches:
            algorithm.loss(algorithm.wrapped, mb, step)[0].backward()
        grads.append({name: p.grad.clone() for name, p in algorithm.model.named_parameters()
                      if p.grad is not None})
    assert any(name.startswith("critic.") for name in grads[0])
    assert any(name.startswith("policy.") for name in grads[0])
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-6, rtol=1e-4)


def test_a_toy_reward_rises(prompts_file, tmp_path):
    import posttrain

    reward_file = tmp_path / "sevens.py"
    reward_file.write_text("def contains_seven(prompts, completions, completion_ids, **kw):\n"
                           "    return [1.0 if '7' in c else 0.0 for c in completions]\n")
    posttrain.ppo({
        "model": "random:tiny", "train_data": str(prompts_file), "progress": False,
        "output_dir": str(tmp_path / "toy"), "rewards": [f"{reward_file}:contains_seven"],
        "max_new_tokens": 8, "prompts_per_step": 16, "num_generations": 2,
        "per_device_batch_size": 32, "ppo_epochs": 1, "max_steps": 18, "learning_rate": 1e-2,
        "value_learning_rate": 1e-2, "kl_coef": 0.01, "log_entropy": False})
    records = [json.loads(x) for x in (tmp_path / "toy" / "metrics.jsonl").open()]
    rewards = [r["rewards/total/mean"] for r in records if "rewards/total/mean" in r]
    assert len(rewards) == 18
    # from ~5% of completions with a 7 to most (seeds 1, 2, 3, 42: last five >= 0.8)
    assert sum(rewards[:3]) / 3 < 0.25 and sum(rewards[-5:]) / 5 > 0.5, rewards
    for key in ("value_loss", "value_clip_fraction", "approx_kl", "returns_mean", "values_mean",
                "kl_coef", "kl", "time/generation_s", "time/reward_s", "time/scoring_s",
                "time/train_s"):
        assert key in records[0], key


def test_kl_stop_turns_the_rest_of_the_round_into_no_ops(prompts_file, tmp_path):
    algorithm = make(prompts_file, tmp_path, ppo_epochs=3, kl_stop=1e-6, learning_rate=1e-2,
                     max_steps=3)
    train(algorithm)
    records = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").open()]
    assert [r["step"] for r in records] == [1, 2, 3]  # the step count does not change
    assert records[0]["approx_kl"] < 1e-6 < records[1]["approx_kl"]  # measured before update
    assert "kl_stop/skipped" not in records[1] and records[2]["kl_stop/skipped"] == 1.0
    assert records[2]["loss"] == 0.0 and "value_loss" not in records[2]


@pytest.mark.parametrize("use_lora", [False, True])
def test_save_writes_policy_and_value_model_that_reload(prompts_file, tmp_path, use_lora):
    from posttrain.algorithms.reward import load_trained_reward_model
    from posttrain.algorithms.value import TokenValues
    from posttrain.models import load_trained

    algorithm = make(prompts_file, tmp_path, use_lora=use_lora, lora_r=4, ppo_epochs=1,
                     max_steps=1, learning_rate=1e-3, value_learning_rate=1e-3)
    train(algorithm)
    out = tmp_path / "out"
    weights = "adapter_model.safetensors" if use_lora else "model.safetensors"
    assert (out / weights).is_file() and (out / "value_model" / weights).is_file()
    policy, critic = load_trained(out).eval(), load_trained_reward_model(str(out / "value_model"))
    ids = torch.tensor([[5, 17, 42, 99, 7, 3]])
    algorithm.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(policy(ids).logits, algorithm.policy(ids).logits)
        torch.testing.assert_close(TokenValues(critic)(ids, 3), TokenValues(algorithm.critic.model)(ids, 3))


@pytest.mark.parametrize("adapter", [False, True])
def test_value_model_from_a_reward_model(prompts_file, tmp_path, tiny_tokenizer, adapter):
    from transformers import Qwen2ForSequenceClassification

    from posttrain.models import is_peft, save_model
    from posttrain.tiny import build_tiny_model

    config = build_tiny_model(tiny_tokenizer, seed=3).config
    config.num_labels = 1
    rm = Qwen2ForSequenceClassification(config)
    with torch.no_grad():
        rm.score.weight.fill_(0.25)
    if adapter:
        from posttrain.algorithms.reward import RewardConfig, add_reward_lora

        save_model(rm, tiny_tokenizer, tmp_path / "base")
        rm = Qwen2ForSequenceClassification.from_pretrained(tmp_path / "base", num_labels=1)
        rm = add_reward_lora(rm, RewardConfig(train_data="x", lora_r=4))
        with torch.no_grad():
            rm.base_model.model.score.modules_to_save["default"].weight.fill_(0.5)
    save_model(rm, tiny_tokenizer, tmp_path / "rm")
    algorithm = make(prompts_file, tmp_path, value_model=str(tmp_path / "rm"))
    critic = algorithm.critic.model
    assert not is_peft(critic)  # use_lora is off: an adapter reward model is merged
    assert torch.all(critic.score.weight == (0.5 if adapter else 0.25))
    assert all(p.requires_grad for p in critic.parameters())


@pytest.mark.parametrize("values, message", [
    ({"vf_coef": -0.1}, "vf_coef must be >= 0"),
    ({"kl_coef": -1.0}, "kl_coef must be >= 0"),
    ({"value_clip": 0.0}, "value_clip must be > 0"),
    ({"lam": 1.5}, "lam must be in"),
    ({"gamma": -0.1}, "gamma must be in"),
    ({"kl_penalty": "loss", "kl_estimator": "k1"}, "gradient is zero"),
    ({"beta": 0.1}, "PPO uses kl_coef"),
    ({"skip_zero_std_groups": True}, "group baselines"),
    ({"adaptive_kl": True, "kl_target": 0.0}, "kl_target > 0"),
    ({"kl_stop": 0.0}, "kl_stop must be > 0"),
    ({"missing_eos_penalty": -1.0}, "positive number"),
    ({"num_generations": 0}, "must be >= 1"),
    ({"ppo_epochs": 2, "num_iterations": 3}, "same setting"),
    ({"ppo_epochs": 2, "num_iterations": 4}, "same setting"),  # also when one is the default
    ({"value_learning_rate": -1e-5}, "value_learning_rate must be >= 0"),
    ({"mini_batches": 3}, "must divide"),
])
def test_config_errors(values, message):
    with pytest.raises(ConfigError, match=message):
        load_config(PPOConfig, values={"train_data": "x.jsonl", **values})


def test_config_defaults_and_aliases():
    config = load_config(PPOConfig, values={"train_data": "x.jsonl", "ppo_epochs": 2})
    assert (config.num_iterations, config.num_generations) == (2, 1)
    assert (config.gamma, config.lam, config.epsilon, config.value_clip) == (1.0, 0.95, 0.2, 0.2)
    assert (config.vf_coef, config.kl_coef, config.kl_estimator) == (0.1, 0.05, "k1")
    assert config.whiten_advantages and not config.whiten_rewards


def test_cli_ppo_one_step(prompts_file, tmp_path):
    from posttrain.cli import main

    code = main(["ppo", f"train_data={prompts_file}", "model=random:tiny", "progress=false",
                 f"output_dir={tmp_path / 'cli'}", "rewards=[math]", "max_steps=1",
                 "max_new_tokens=4", "prompts_per_step=2", "ppo_epochs=1",
                 f"eval_data={prompts_file}", "eval_max_samples=2"])
    assert code == 0
    assert (tmp_path / "cli" / "value_model" / "model.safetensors").is_file()
    last = json.loads((tmp_path / "cli" / "metrics.jsonl").read_text().splitlines()[-1])
    assert "eval/rewards/math/mean" in last


def test_fresh_critic_starts_at_zero_and_first_advantages_are_the_returns(prompts_file,
                                                                          tmp_path):
    """value_model=None: the new head is zero, so V = 0 and (gamma = lam = 1, no KL, no
    whitening) every token's advantage is its completion's score; the critic then moves."""
    algorithm = make(prompts_file, tmp_path, kl_coef=0.0, gamma=1.0, lam=1.0,
                     whiten_advantages=False, ppo_epochs=1, value_learning_rate=1e-3)
    data, (step,) = first_round(algorithm)
    mask = completion_mask(data)  # [N, C]
    assert torch.count_nonzero(data.token_data["old_values"]) == 0
    torch.testing.assert_close(data.advantages, data.rewards[:, None] * mask)
    torch.testing.assert_close(data.token_data["returns"], data.rewards[:, None] * mask)
    for mb in step.micro_batches:
        loss, _ = algorithm.loss(algorithm.wrapped, mb, step)
        loss.backward()
    head_grad = algorithm.critic.model.score.weight.grad
    assert head_grad is not None and head_grad.abs().sum() > 0
