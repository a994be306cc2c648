"""``rollout_backend``: the paged backend against our decode loop, the vLLM adapter's logic
against a stand-in ``vllm`` module (vLLM itself cannot run here), and the truncated
importance-sampling correction for samplers that are not the trainer's forward."""

from __future__ import annotations

import json
import sys
import types

import pytest
import torch

from posttrain.errors import ConfigError
from posttrain.ops.policy import truncated_importance_weights
from posttrain.rollout.base import SamplingParams, encode_prompts
from posttrain.rollout.hf import HFGenerator
from posttrain.rollout.paged import PagedGenerator
from posttrain.train.forward import TokenLogprobs


@pytest.fixture
def prompts(tiny_tokenizer):
    return encode_prompts(tiny_tokenizer, [f"What is {i} + {i}?" for i in range(3)])


def test_paged_gives_the_same_greedy_tokens_as_hf(tiny_model, tiny_tokenizer, prompts):
    params = SamplingParams(temperature=0.0, max_new_tokens=10)
    ours = HFGenerator(tiny_model, tiny_tokenizer).generate(prompts, params)
    paged = PagedGenerator(tiny_model, tiny_tokenizer).generate(prompts, params)
    assert paged.completion_ids == ours.completion_ids
    assert paged.finish_reasons == ours.finish_reasons
    assert paged.prompt_index == ours.prompt_index == [0, 1, 2]
    assert all(lp == 0.0 for row in paged.sampler_logprobs for lp in row)  # greedy: point mass


def test_paged_sampler_logprobs_are_the_trainers(tiny_model, tiny_tokenizer, prompts):
    params = SamplingParams(n=2, temperature=0.7, max_new_tokens=10, seed=1)
    rollout = PagedGenerator(tiny_model, tiny_tokenizer).generate(prompts, params)
    assert len(rollout) == 6 and rollout.prompt_index == [0, 0, 1, 1, 2, 2]
    batch = rollout.to_padded_tensors(tiny_tokenizer.pad_token_id)
    P = batch["prompt_length"]
    with torch.no_grad():
        trainer, _ = TokenLogprobs(tiny_model)(
            batch["input_ids"], batch["input_ids"][:, P:], attention_mask=batch["attention_mask"],
            position_ids=batch["position_ids"], temperature=0.7)
    mask = batch["completion_mask"].bool()
    torch.testing.assert_close(batch["sampler_logprobs"][mask], trainer[mask], atol=1e-4, rtol=0)


def test_truncated_importance_weights_by_hand():
    trainer = torch.tensor([[-1.0, -2.0, -0.5]])
    sampler = torch.tensor([[-1.0, -1.0, -3.0]])
    weights = truncated_importance_weights(trainer, sampler, cap=3.0)
    # exp(0) = 1, exp(-1) = 0.3679, exp(2.5) = 12.18 -> capped at 3
    torch.testing.assert_close(weights, torch.tensor([[1.0, 0.36787944, 3.0]]))
    with pytest.raises(ValueError, match="cap must be >= 1"):
        truncated_importance_weights(trainer, sampler, cap=0.5)


def test_unknown_or_missing_backends_fail_clearly(monkeypatch, tiny_model, tiny_tokenizer):
    from types import SimpleNamespace

    from posttrain.rollout.backends import make_generator

    config = SimpleNamespace(rollout_backend="hf", generation_batch_rows=None)
    assert isinstance(make_generator(config, tiny_model, tiny_tokenizer), HFGenerator)
    config.rollout_backend = "paged"
    assert isinstance(make_generator(config, tiny_model, tiny_tokenizer), PagedGenerator)
    monkeypatch.setitem(sys.modules, "vllm", None)  # "not installed"
    from posttrain.rollout.vllm import import_vllm

    with pytest.raises(ConfigError, match=r"pip install 'posttrain\[vllm\]'"):
        import_vllm()


# --- the vLLM adapter, against a stand-in module ------------------------------------------


class FakeLLM:
    """Records what posttrain asks of vllm.LLM; answers with fixed tokens."""

    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.calls: list[tuple] = []
        self.loaded: dict[str, torch.Tensor] = {}
        model = types.SimpleNamespace(load_weights=self._load)
        runner = types.SimpleNamespace(model=model)
        self.llm_engine = types.SimpleNamespace(model_executor=types.SimpleNamespace(
            driver_worker=types.SimpleNamespace(model_runner=runner)))

    def _load(self, weights):
        for name, tensor in weights:
            self.loaded[name] = tensor.clone()
        self.calls.append(("load", len(weights)))

    def sleep(self, level):
        self.calls.append(("sleep", level))

    def wake_up(self, tags=None):
        self.calls.append(("wake", tuple(tags or ())))

    def reset_prefix_cache(self):
        self.calls.append(("reset",))

    def generate(self, prompts, sampling_params, use_tqdm):
        self.calls.append(("generate", [sp.seed for sp in sampling_params]))
        outputs = []
        for prompt, sp in zip(prompts, sampling_params):
            samples = []
            for j in range(sp.n):
                ids = [5 + j, 7]
                logprobs = [{5 + j: types.SimpleNamespace(logprob=-0.5 - j),
                             99: types.SimpleNamespace(logprob=-9.0)},
                            {7: types.SimpleNamespace(logprob=-0.25)}]
                samples.append(types.SimpleNamespace(token_ids=ids, logprobs=logprobs,
                                                     finish_reason="stop" if j == 0 else "length"))
            outputs.append(types.SimpleNamespace(prompt_token_ids=prompt["prompt_token_ids"],
                                                 outputs=samples))
        return outputs


class FakeSamplingParams:
    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)


@pytest.fixture
def fake_vllm(monkeypatch):
    module = types.ModuleType("vllm")
    module.LLM = FakeLLM
    module.SamplingParams = FakeSamplingParams
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    return module


def test_vllm_generator_sleeps_wakes_pushes_and_samples(fake_vllm, tiny_model, tiny_tokenizer,
                                                        prompts):
    from posttrain.rollout.vllm import VLLMGenerator

    generator = VLLMGenerator("/models/tiny", tiny_model, tiny_tokenizer,
                              gpu_memory_utilization=0.25, seed=3)
    llm = generator.llm
    assert llm.kwargs["gpu_memory_utilization"] == 0.25
    assert llm.kwargs["enable_sleep_mode"] and llm.kwargs["logprobs_mode"] == "processed_logprobs"
    assert llm.calls == [("sleep", 2)]  # asleep until the first rollout
    with torch.no_grad():
        tiny_model.lm_head.weight.add_(1.0)  # an optimiser step
    generator.update_weights(tiny_model)  # asleep: pushed on wake
    assert ("load", 1) not in llm.calls
    params = SamplingParams(n=2, temperature=0.9, top_k=0, max_new_tokens=4)
    rollout = generator.generate(prompts, params, seeds=[11, 12, 13])
    kinds = [call[0] for call in llm.calls]
    assert kinds[:2] == ["sleep", "wake"] and llm.calls[1] == ("wake", ("weights",))
    first_load, kv_wake = kinds.index("load"), llm.calls.index(("wake", ("kv_cache",)))
    assert first_load < kv_wake < kinds.index("generate") < len(kinds) - 1
    assert llm.calls[-1] == ("sleep", 2)
    assert ("generate", [11, 12, 13]) in llm.calls  # one request per prompt, its own seed
    # every policy weight went over, under its Hugging Face name, the new values
    names = {name for name, _ in tiny_model.named_parameters()}
    assert set(llm.loaded) == names
    torch.testing.assert_close(llm.loaded["model.embed_tokens.weight"],
                               tiny_model.model.embed_tokens.weight.detach())
    # the rollout: prompt-major, the sampled token's log-prob looked up by id
    assert rollout.completion_ids == [[5, 7], [6, 7]] * 3
    assert rollout.sampler_logprobs[:2] == [[-0.5, -0.25], [-1.5, -0.25]]
    assert rollout.finish_reasons[:2] == ["stop", "length"]
    assert rollout.prompt_index == [0, 0, 1, 1, 2, 2]


def test_vllm_sampling_params_translate_ours(fake_vllm, tiny_model, tiny_tokenizer):
    from posttrain.rollout.vllm import VLLMGenerator

    generator = VLLMGenerator("/m", tiny_model, tiny_tokenizer, sleep=False)
    sp = generator.sampling_params(SamplingParams(n=4, temperature=0.7, top_p=0.9, top_k=0,
                                                  max_new_tokens=32), seed=5, stop_ids=[2])
    assert (sp.n, sp.temperature, sp.top_p, sp.top_k, sp.max_tokens, sp.seed) == (
        4, 0.7, 0.9, -1, 32, 5)
    assert sp.logprobs == 0 and sp.stop_token_ids == [2] and sp.detokenize is False


def test_lora_policy_is_merged_for_the_push_and_names_match_the_base(tiny_model, tiny_tokenizer):
    from peft import LoraConfig, get_peft_model

    from posttrain.rollout.vllm import policy_weights, vllm_weight_name

    base_names = {name for name, _ in tiny_model.named_parameters()}
    peft_model = get_peft_model(tiny_model, LoraConfig(r=2, target_modules="all-linear"))
    peft_model.merge_adapter()
    pushed = dict(policy_weights(peft_model))
    peft_model.unmerge_adapter()
    assert set(pushed) == base_names  # no lora_ factors, no peft prefixes
    assert vllm_weight_name("base_model.model.model.layers.0.mlp.up_proj.base_layer.weight") == (
        "model.layers.0.mlp.up_proj.weight")
    assert vllm_weight_name("base_model.model.model.layers.0.mlp.up_proj.lora_A.default.weight") is None


# --- online RL with a sampler that is not the trainer -------------------------------------


@pytest.fixture
def prompts_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    rows = [{"prompt": f"Say a number, please {i}", "answer": str(i)} for i in range(8)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def length_mod(prompts, completions, completion_ids, **_):
    return [float(sum(ids) % 7) for ids in completion_ids]


def test_grpo_with_the_paged_backend_applies_truncated_importance_sampling(prompts_file,
                                                                           tmp_path):
    from conftest import stat_mean

    from posttrain.algorithms.grpo import GRPO, GRPOConfig
    from posttrain.config import load_config
    from posttrain.ops.policy import clipped_surrogate

    config = load_config(GRPOConfig, values={
        "model": "random:tiny", "train_data": str(prompts_file), "output_dir": str(tmp_path / "o"),
        "prompts_per_step": 2, "num_generations": 2, "max_new_tokens": 6, "temperature": 0.8,
        "rollout_backend": "paged", "importance_sampling_cap": 1.5, "progress": False})
    algorithm = GRPO(config, reward_functions=[length_mod])
    assert isinstance(algorithm.generator, PagedGenerator) and not algorithm.sampler_is_exact

    class FakeAccelerator:
        device = torch.device("cpu")

    algorithm.attach(algorithm.wrap(algorithm.model), FakeAccelerator())
    data = algorithm.collect(0, algorithm.prompts[:2])
    (step,) = list(algorithm.round_step_batches(data, 0))
    for mb in step.micro_batches:
        # pretend the sampler disagreed with the trainer on some tokens
        mb["sampler_logprobs"] = mb["sampler_logprobs"] - 0.3 * mb["completion_mask"]
        loss, metrics = algorithm.loss(algorithm.wrapped, mb, step)
        with torch.no_grad():
            logprobs, _ = algorithm.logprobs(algorithm.wrapped, mb)
        mask = mb["completion_mask"]
        weights = torch.exp(logprobs - mb["sampler_logprobs"]).clamp(max=1.5)
        per_token = clipped_surrogate(logprobs, logprobs, mb["advantages"][:, None]).per_token_loss
        expected = (per_token * weights * mask).sum() / step.totals["tokens"]
        assert float(loss) == pytest.approx(float(expected), abs=1e-5)
        assert stat_mean(metrics["sampler/logprob_diff"]) == pytest.approx(0.3, abs=1e-3)
        assert stat_mean(metrics["sampler/is_weight"]) == pytest.approx(1.3499, abs=1e-3)


def test_hf_backend_logs_a_near_zero_mismatch_and_does_not_correct(prompts_file, tmp_path):
    from conftest import stat_mean

    from posttrain.algorithms.grpo import GRPO, GRPOConfig
    from posttrain.config import load_config

    config = load_config(GRPOConfig, values={
        "model": "random:tiny", "train_data": str(prompts_file), "output_dir": str(tmp_path / "o"),
        "prompts_per_step": 2, "num_generations": 2, "max_new_tokens": 6, "progress": False})
    algorithm = GRPO(config, reward_functions=[length_mod])
    assert algorithm.sampler_is_exact

    class FakeAccelerator:
        device = torch.device("cpu")

    algorithm.attach(algorithm.wrap(algorithm.model), FakeAccelerator())
    data = algorithm.collect(0, algorithm.prompts[:2])
    (step,) = list(algorithm.round_step_batches(data, 0))
    _, metrics = algorithm.loss(algorithm.wrapped, step.micro_batches[0], step)
    assert stat_mean(metrics["sampler/logprob_diff"]) < 1e-4
    assert "sampler/is_weight" not in metrics
