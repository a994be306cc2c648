"""Per-token log-probs without a full log-softmax, and the SFT loss reductions."""

from __future__ import annotations

import math

import pytest
import torch

from posttrain.ops.logprobs import entropy_from_logits, selective_log_softmax
from posttrain.ops.sft import sft_loss
from posttrain.ops.stats import masked_mean, masked_var, masked_whiten
from posttrain.train.forward import TokenLogprobs


def test_selective_log_softmax_equals_naive():
    torch.manual_seed(0)
    logits = torch.randn(3, 7, 50, dtype=torch.float64)
    targets = torch.randint(0, 50, (3, 7))
    naive = torch.log_softmax(logits.float(), -1).gather(-1, targets[..., None]).squeeze(-1)
    for chunk in (1, 4, 1024):
        torch.testing.assert_close(selective_log_softmax(logits, targets, chunk), naive)


def test_selective_log_softmax_gradient_matches_naive():
    torch.manual_seed(1)
    logits = torch.randn(2, 5, 30, requires_grad=True)
    targets = torch.randint(0, 30, (2, 5))
    selective_log_softmax(logits, targets, chunk_rows=3).sum().backward()
    fast = logits.grad.clone()
    logits.grad = None
    torch.log_softmax(logits, -1).gather(-1, targets[..., None]).sum().backward()
    torch.testing.assert_close(fast, logits.grad)


def test_entropy_of_uniform_is_log_v():
    logits = torch.zeros(2, 3, 16)
    torch.testing.assert_close(entropy_from_logits(logits), torch.full((2, 3), math.log(16)))


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_token_logprobs_matches_model_logits(tiny_model, temperature):
    torch.manual_seed(0)
    input_ids = torch.randint(3, 500, (2, 9))
    with torch.no_grad():
        logits = tiny_model(input_ids).logits[:, :-1] / temperature
        naive = torch.log_softmax(logits, -1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
        fast, entropy = TokenLogprobs(tiny_model, chunk_rows=5)(
            input_ids, input_ids[:, 1:], temperature=temperature, return_entropy=True)
        # only the last 3 targets (the RL case: completion tokens)
        tail, _ = TokenLogprobs(tiny_model)(input_ids, input_ids[:, -3:], temperature=temperature)
    torch.testing.assert_close(fast, naive, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tail, naive[:, -3:], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(entropy, entropy_from_logits(logits), atol=1e-5, rtol=1e-5)


def test_token_logprobs_gradients_match(tiny_tokenizer):
    from posttrain.tiny import build_tiny_model

    input_ids = torch.randint(3, 500, (2, 8))
    a, b = build_tiny_model(tiny_tokenizer), build_tiny_model(tiny_tokenizer)
    fast, _ = TokenLogprobs(a, chunk_rows=3)(input_ids, input_ids[:, 1:])
    fast.sum().backward()
    logits = b(input_ids).logits[:, :-1]
    torch.log_softmax(logits, -1).gather(-1, input_ids[:, 1:, None]).sum().backward()
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_token_logprobs_score_mask_scores_only_the_masked_positions(tiny_tokenizer):
    """SFT's loss mask as ``score_mask``: masked positions equal the full computation (values
    and gradients), the others are 0 and contribute nothing."""
    from posttrain.tiny import build_tiny_model

    torch.manual_seed(0)
    input_ids = torch.randint(3, 500, (2, 9))
    targets = input_ids[:, 1:]
    mask = torch.zeros_like(targets, dtype=torch.bool)
    mask[0, 4:] = True
    mask[1, 2:6] = True
    a, b = build_tiny_model(tiny_tokenizer), build_tiny_model(tiny_tokenizer)
    full, _ = TokenLogprobs(a, chunk_rows=3)(input_ids, targets)
    scored, entropy = TokenLogprobs(b, chunk_rows=3)(input_ids, targets, score_mask=mask,
                                                     return_entropy=True)
    torch.testing.assert_close(scored[mask], full[mask], atol=1e-6, rtol=1e-6)
    assert (scored[~mask] == 0).all() and (entropy[~mask] == 0).all()
    assert (entropy[mask] > 0).all()
    (full * mask).sum().backward()
    scored.sum().backward()
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        torch.testing.assert_close(pb.grad, pa.grad, atol=1e-6, rtol=1e-5, msg=name)
    nothing, _ = TokenLogprobs(b)(input_ids, targets, score_mask=torch.zeros_like(mask))
    assert nothing.shape == targets.shape and (nothing == 0).all()


def test_fused_adamw_where_supported():
    from posttrain.train.optim import fused_supported

    assert fused_supported([torch.zeros(2, requires_grad=True)])
    assert not fused_supported([])
    assert not fused_supported([torch.zeros(2, device="meta")])


def test_sft_loss_reductions_by_hand():
    logprobs = torch.tensor([[-1.0, -2.0, -3.0], [-4.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    # token: (1 + 2 + 3 + 4) / 4 = 2.5 ; sequence: mean(2, 4) = 3
    assert sft_loss(logprobs, mask, "token").item() == pytest.approx(2.5)
    assert sft_loss(logprobs, mask, "sequence").item() == pytest.approx(3.0)
    # shares of a larger step: normalised by the step's totals
    assert sft_loss(logprobs, mask, "token", step_tokens=8).item() == pytest.approx(10 / 8)
    assert sft_loss(logprobs, mask, "sequence", step_sequences=4).item() == pytest.approx(6 / 4)
    # packed: one row holding two examples (ids 0, 0, 1) -> example means 1.5 and 3
    packed = sft_loss(logprobs[:1], mask[:1], "sequence",
                      sequence_ids=torch.tensor([[0, 0, 1]]))
    assert packed.item() == pytest.approx((1.5 + 3.0) / 2)


def test_sft_loss_accumulation_shares_add_up():
    torch.manual_seed(0)
    logprobs = -torch.rand(4, 6)
    mask = (torch.rand(4, 6) > 0.3).long()
    for reduction in ("token", "sequence"):
        whole = sft_loss(logprobs, mask, reduction)
        tokens, sequences = mask.sum().item(), (mask.sum(-1) > 0).sum().item()
        shares = sum(sft_loss(logprobs[i : i + 1], mask[i : i + 1], reduction,
                              step_tokens=tokens, step_sequences=sequences) for i in range(4))
        torch.testing.assert_close(shares, whole)


def test_masked_stats_by_hand():
    values = torch.tensor([1.0, 2.0, 3.0, 100.0])
    mask = torch.tensor([1, 1, 1, 0])
    assert masked_mean(values, mask).item() == pytest.approx(2.0)
    assert masked_var(values, mask).item() == pytest.approx(1.0)  # unbiased: 2 / 2
    whitened = masked_whiten(values, mask)
    assert whitened[:3].tolist() == pytest.approx([-1.0, 0.0, 1.0], abs=1e-6)
    assert whitened[3].item() == 0.0
