"""Configs fail before any model loads; bad data names file, row and field."""

from __future__ import annotations

import pytest

from posttrain.algorithms.sft import SFTConfig
from posttrain.cli import main
from posttrain.config import describe, load_config
from posttrain.data.formats import to_preference_example, to_prompt_example, to_sft_example
from posttrain.data.loading import load_rows
from posttrain.errors import ConfigError, DataError


def test_yaml_plus_overrides(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: random:tiny\ntrain_data: d.jsonl\nlearning_rate: 1e-5\n"
                      "use_lora: true\nreport_to: tensorboard\n")
    config = load_config(SFTConfig, recipe, ["learning_rate=3e-4", "lora_r=4", "packing=true",
                                             "lora_target_modules=[q_proj, v_proj]"])
    assert config.learning_rate == 3e-4 and isinstance(config.learning_rate, float)
    assert config.lora_r == 4 and config.packing is True and config.use_lora is True
    assert config.report_to == ["tensorboard"]
    assert config.lora_target_modules == ["q_proj", "v_proj"]


@pytest.mark.parametrize("override, message", [
    ("learnig_rate=1", "Did you mean learning_rate"),
    ("per_device_batch_size=two", "expected an integer"),
    ("packing=maybe", "expected true or false"),
    ("lr_scheduler=exp", "expected one of"),
    ("per_device_batch_size=0", "must be >= 1"),
    ("report_to=mlflow", "unknown sink"),
    ("noequals", "key=value"),
])
def test_bad_config_values(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(SFTConfig, None, ["train_data=x.jsonl", override])


def test_unknown_key_lists_valid_keys(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("train_data: x.jsonl\nbatch_size: 4\n")
    with pytest.raises(ConfigError) as err:
        load_config(SFTConfig, recipe)
    assert str(recipe) in str(err.value) and "per_device_batch_size" in str(err.value)


def test_describe_lists_every_field_with_help():
    text = describe(SFTConfig)
    for name in ("learning_rate", "packing", "loss_reduction", "use_lora"):
        assert name in text
    assert "(float, default 2e-05)" in text


def test_cli_errors_are_one_line_and_exit_2(capsys, tmp_path):
    assert main(["sft", "train_data=x.jsonl", "bogus=1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("posttrain sft: error:") and "Traceback" not in err
    assert main(["sft", f"train_data={tmp_path / 'missing.jsonl'}", "model=random:tiny"]) == 2
    assert "data file not found" in capsys.readouterr().err


def test_bad_json_line_is_named(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"messages": []}\n{"messages": [oops\n')
    with pytest.raises(DataError, match=r"d.jsonl, line 2: not valid JSON"):
        load_rows(str(path))


@pytest.mark.parametrize("row, message", [
    ({"txt": "hi"}, "SFT needs `messages`"),
    ({"text": " "}, "field `text` must be non-empty"),
    ({"messages": "hi"}, "must be a non-empty list"),
    ({"messages": [{"role": "user"}]}, r"`messages\[0\]` must be an object with `role` and `content`"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "unknown role 'robot'"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "no assistant turn"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": " "}]},
     "empty content"),
    ({"prompt": "", "completion": "x"}, "field `prompt` is empty"),
    ({"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "x"}]},
     "`content` must be a string"),
])
def test_bad_sft_rows(row, message):
    with pytest.raises(DataError, match=message) as err:
        to_sft_example(row, "train.jsonl, line 7")
    assert "train.jsonl, line 7" in str(err.value)


@pytest.mark.parametrize("row, message", [
    ({"prompt": "q", "chosen": "a"}, r"missing field\(s\) \['rejected'\]"),
    ({"prompt": "q", "chosen": "a", "rejected": "a"}, "identical"),
    ({"prompt": "q", "chosen": "", "rejected": "b"}, "field `chosen` is empty"),
    ({"chosen": [{"role": "user", "content": "x"}], "rejected": [{"role": "user", "content": "y"}]},
     "share no opening messages"),
    ({"prompt": "q", "chosen": "a", "rejected": "b", "margin": "big"}, "`margin` must be a finite number"),
])
def test_bad_preference_rows(row, message):
    with pytest.raises(DataError, match=message):
        to_preference_example(row, "prefs.jsonl, line 2")


def test_implicit_prompt_preference_rows():
    shared = [{"role": "user", "content": "hi"}]
    example = to_preference_example(
        {"chosen": shared + [{"role": "assistant", "content": "hello"}],
         "rejected": shared + [{"role": "assistant", "content": "go away"}]}, "r")
    assert example.prompt == shared and example.chosen[0]["content"] == "hello"


def test_prompt_only_rows_keep_extra_columns():
    example = to_prompt_example({"prompt": "What is 2+2?", "answer": "4", "level": 1}, "r")
    assert example.prompt == [{"role": "user", "content": "What is 2+2?"}]
    assert example.columns == {"answer": "4", "level": 1}
    with pytest.raises(DataError, match="ends with an assistant turn"):
        to_prompt_example({"prompt": [{"role": "user", "content": "a"},
                                      {"role": "assistant", "content": "b"}]}, "r")


def test_file_formats(tmp_path):
    import json

    rows = [{"prompt": "a", "completion": "b"}, {"prompt": "c", "completion": "d"}]
    (tmp_path / "d.json").write_text(json.dumps(rows))
    (tmp_path / "d.csv").write_text("prompt,completion\na,b\nc,d\n")
    for name in ("d.json", "d.csv"):
        loaded = load_rows(str(tmp_path / name))
        assert loaded.rows == rows
    assert load_rows(str(tmp_path / "d.csv")).locations[1].endswith("line 3")
    import datasets

    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "d.parquet"))
    assert load_rows(str(tmp_path / "d.parquet")).rows == rows
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(DataError, match="unsupported file type"):
        load_rows(str(tmp_path / "d.txt"))
    (tmp_path / "e.jsonl").write_text("\n")
    with pytest.raises(DataError, match="no rows"):
        load_rows(str(tmp_path / "e.jsonl"))
