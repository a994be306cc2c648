"""Property tests: malformed configs and datasets end in exit status 2 with a message that names
the key, or the file and line, before any model loads; never a traceback, never training."""

from __future__ import annotations

import json
import math

import pytest
from conftest import write_jsonl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from posttrain.cli import main

SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])
VALID_ROW = {"messages": [{"role": "user", "content": "What is 1 + 1?"},
                          {"role": "assistant", "content": "2"}]}


@pytest.fixture
def no_model(monkeypatch):
    """Any model load fails the test: errors must come first."""
    import posttrain.algorithms.sft as sft

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(sft, "load_policy", refuse)


def invalid_values() -> st.SearchStrategy[tuple[str, object]]:
    """(key, value) pairs that no valid config has."""
    below_one = st.integers(max_value=0)
    negative = st.integers(max_value=-1)
    bad_float = st.one_of(st.sampled_from([math.nan, math.inf, -math.inf]),
                          st.floats(max_value=-1e-9, allow_nan=False, allow_infinity=False))
    outside_unit = st.one_of(st.floats(min_value=1.0, allow_nan=False, allow_infinity=False),
                             st.floats(max_value=-1e-9, allow_nan=False, allow_infinity=False))
    text = st.text(alphabet="abcxyz", min_size=1, max_size=6)
    return st.one_of(
        st.tuples(st.sampled_from(["per_device_batch_size", "gradient_accumulation_steps",
                                   "max_length", "logging_steps"]), st.one_of(below_one, text)),
        st.tuples(st.sampled_from(["save_steps", "eval_steps", "warmup_steps",
                                   "save_total_limit"]), negative),
        st.tuples(st.sampled_from(["learning_rate", "weight_decay", "max_grad_norm"]), bad_float),
        st.tuples(st.sampled_from(["adam_beta1", "adam_beta2", "warmup_ratio"]), outside_unit),
        st.tuples(st.sampled_from(["num_epochs"]), st.one_of(st.floats(max_value=0.0), text)),
        st.tuples(st.sampled_from(["max_steps"]), st.integers(max_value=0).filter(lambda v: v != -1)),
        st.tuples(st.sampled_from(["use_lora", "packing", "progress"]),
                  st.one_of(text, st.integers(min_value=2))),
        st.tuples(st.sampled_from(["lr_scheduler", "mixed_precision", "loss_reduction"]), text),
        st.tuples(st.text(alphabet="qwvkj_", min_size=3, max_size=10), st.integers()),  # unknown
    )


@SETTINGS
@given(invalid_values())
def test_invalid_config_values_exit_2_naming_the_key(no_model, memorise_data, tmp_path, capsys,
                                                     key_value):
    key, value = key_value
    args = ["sft", f"train_data={memorise_data}", "model=random:tiny",
            f"output_dir={tmp_path / 'out'}", f"{key}={json.dumps(value)}"]
    assert main(args) == 2, (key, value)
    err = capsys.readouterr().err
    assert "Traceback" not in err and key in err, (key, value, err)
    assert not (tmp_path / "out" / "model.safetensors").exists()


JUNK = st.one_of(
    # whitespace-only lines are blank lines, which JSON-lines readers skip (not junk)
    st.binary(min_size=1, max_size=12).filter(
        lambda b: b"\n" not in b and not _valid_json(b) and not _blank(b)),
    st.sampled_from([b"[1, 2]", b"42", b'"text"', b"null", b"{", b'{"messages": 3}',
                     b'{"messages": []}', b'{"messages": [{"role": "user"}]}',
                     b'{"messages": [{"role": "wizard", "content": "x"}]}',
                     b'{"messages": [{"role": "user", "content": 5}]}',
                     b'{"prompt": "q"}', b'{"prompt": "q", "completion": null}',
                     b'{"messages": [{"role": "user", "content": "only a question"}]}',
                     b"\xff\xfe{}"]),
)


def _blank(raw: bytes) -> bool:
    try:
        return not raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        return False


def _valid_json(raw: bytes) -> bool:
    try:
        json.loads(raw.decode("utf-8"))
        return True
    except (UnicodeDecodeError, ValueError):
        return False


@SETTINGS
@given(st.integers(min_value=0, max_value=4), JUNK)
def test_a_bad_row_anywhere_exits_2_naming_file_and_line(no_model, tmp_path, capsys, position,
                                                         junk):
    path = tmp_path / "data.jsonl"
    lines = [json.dumps(VALID_ROW).encode()] * 5
    lines.insert(position, junk)
    path.write_bytes(b"\n".join(lines) + b"\n")
    args = ["sft", f"train_data={path}", "model=random:tiny", f"output_dir={tmp_path / 'out'}"]
    assert main(args) == 2, junk
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"{path}, line {position + 1}" in err, (junk, err)


def test_a_good_file_with_the_same_rows_trains(memorise_data, tmp_path):
    """The counterpart: the generator's valid rows are really valid."""
    path = write_jsonl(tmp_path / "data.jsonl", [VALID_ROW] * 5)
    assert main(["sft", f"train_data={path}", "model=random:tiny", "max_steps=1",
                 "progress=false", f"output_dir={tmp_path / 'out'}"]) == 0
