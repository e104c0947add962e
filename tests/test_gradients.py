import math
import pytest
import torch
from dataeff.core import FP64_U, DataeffError, gamma
from dataeff.models import check_dtype, fp32_rounding_bound, tiny_model
from dataeff.gradients import (MIN_SHARED_PREFIX, LoraSpec, add_lora, linear_layer_names, lora_adapter, lora_tensors,
                               per_example_gradients)

SPEC = LoraSpec(r=8, alpha=16, dropout=0.05)
# Two fp32 runs that differ only in batching / summation order (dataeff.models.fp32_rounding_bound): the forward pass
# alone for losses, forward + backward for gradients.
FORWARD = fp32_rounding_bound(tiny_model(seed=0)[0].config, passes=1)
BACKWARD = fp32_rounding_bound(tiny_model(seed=0)[0].config, passes=2)
BF16_U = 2.0**-9  # bfloat16 unit roundoff (8-bit significand)


@pytest.fixture(scope="module")
def tiny():
    return tiny_model(seed=0)[0]


def random_encoded(n, seed=0, vocab=300):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = int(torch.randint(5, 30, (1,), generator=g))
        answer = int(torch.randint(1, 4, (1,), generator=g))
        ids = torch.randint(3, vocab, (length,), generator=g).tolist()
        out.append(dict(input_ids=ids, answer_start=length - answer - 1, answer_end=length - 1))
    return out


def as_matrix(chunks):
    return torch.cat([c.double() for c in chunks], 1)


def cosines(chunks):
    x = as_matrix(chunks)
    x = x / x.norm(dim=1, keepdim=True)
    return x @ x.T


@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_batched_equals_one_at_a_time(tiny, batch_size):
    enc, ids = random_encoded(9, seed=batch_size), [f"e{i}" for i in range(9)]
    with lora_adapter(tiny, SPEC, seed=1) as peft_model:
        batched = per_example_gradients(peft_model, enc, ids, batch_size=batch_size, progress=False)
        sequential = per_example_gradients(peft_model, enc, ids, method="sequential", progress=False)
    assert batched.ids == sequential.ids == ids
    assert batched.names == sequential.names
    for b, s in zip(batched.chunks, sequential.chunks):
        assert float((b - s).norm() / s.norm()) <= BACKWARD
    for i in range(9):  # per example, over the whole gradient
        diff = math.sqrt(sum(float((b[i] - s[i]).double().square().sum()) for b, s in zip(batched.chunks, sequential.chunks)))
        assert diff / sequential.grad_norms[i] <= BACKWARD
    assert batched.losses == pytest.approx(sequential.losses, rel=FORWARD)


def with_shared_prefix(enc, prefix_len, seed=0, vocab=300):
    "The same examples, all starting with one random prefix of `prefix_len` tokens."
    prefix = torch.randint(3, vocab, (prefix_len,), generator=torch.Generator().manual_seed(seed)).tolist()
    return [dict(e, input_ids=prefix + e["input_ids"], answer_start=e["answer_start"] + prefix_len, answer_end=e["answer_end"] + prefix_len)
            for e in enc]


def embedding_passes(peft_model, fn):
    "`fn()` and the (batch, tokens) shape of every pass through the model's input embeddings while it ran."
    shapes = []
    handle = peft_model.get_base_model().get_input_embeddings().register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape[:2])))
    try: return fn(), shapes
    finally: handle.remove()


def assert_same_gradients(got, reference):
    assert got.ids == reference.ids and got.names == reference.names
    for i in range(len(reference.ids)):  # per example, over the whole gradient
        diff = math.sqrt(sum(float((g[i] - r[i]).double().square().sum()) for g, r in zip(got.chunks, reference.chunks)))
        assert diff / reference.grad_norms[i] <= BACKWARD
    assert got.losses == pytest.approx(reference.losses, rel=FORWARD)
    assert got.grad_norms == pytest.approx(reference.grad_norms, rel=BACKWARD)


@pytest.mark.parametrize("batch_size", [1, 2, 5, 9])
def test_shared_prefix_runs_once_and_gradients_equal_one_at_a_time(tiny, batch_size):
    enc = with_shared_prefix(random_encoded(9, seed=10 + batch_size), 24, seed=batch_size)  # prompts of 24 + 5..30 tokens
    ids = [f"e{i}" for i in range(9)]
    with lora_adapter(tiny, SPEC, seed=2) as peft_model:
        sequential = per_example_gradients(peft_model, enc, ids, method="sequential", progress=False)
        batched, passes = embedding_passes(peft_model, lambda: per_example_gradients(peft_model, enc, ids, batch_size=batch_size, progress=False))
        again = per_example_gradients(peft_model, enc, ids, batch_size=batch_size, progress=False)
    assert passes[0] == (1, 24)  # the prefix, once, at batch size 1
    assert len(passes) == 1 + math.ceil(9 / batch_size)
    assert all(tokens <= max(len(e["input_ids"]) for e in enc) - 24 for _, tokens in passes[1:])  # batches start after it
    assert_same_gradients(batched, sequential)
    assert all(torch.equal(a, b) for a, b in zip(batched.chunks, again.chunks))  # bit-identical rerun


def test_shared_prefix_stops_before_the_first_loss_position(tiny):
    enc = with_shared_prefix(random_encoded(4, seed=21), 30, seed=3)
    same_prompt = dict(enc[0], input_ids=enc[0]["input_ids"][:enc[0]["answer_start"]] + [7] * (len(enc[0]["input_ids"]) - enc[0]["answer_start"]))
    enc = [enc[0], same_prompt, *enc[1:]]  # two examples with one prompt and different answers
    ids = list("abcde")
    with lora_adapter(tiny, SPEC, seed=0) as peft_model:
        sequential = per_example_gradients(peft_model, enc, ids, method="sequential", include_lora_a=True, progress=False)
        batched, passes = embedding_passes(peft_model, lambda: per_example_gradients(peft_model, enc, ids, batch_size=2, include_lora_a=True, progress=False))
    assert passes[0] == (1, 30)
    assert_same_gradients(batched, sequential)
    lone = [enc[0], same_prompt]  # the common prefix is the whole prompt but the token before the answer
    with lora_adapter(tiny, SPEC, seed=0) as peft_model:
        sequential = per_example_gradients(peft_model, lone, ids[:2], method="sequential", progress=False)
        batched, passes = embedding_passes(peft_model, lambda: per_example_gradients(peft_model, lone, ids[:2], progress=False))
    assert passes == [(1, enc[0]["answer_start"] - 1), (2, enc[0]["answer_end"] - enc[0]["answer_start"])]
    assert_same_gradients(batched, sequential)


def test_short_or_disabled_prefix_runs_inside_every_batch(tiny):
    enc, ids = random_encoded(4, seed=8), list("abcd")
    short = with_shared_prefix(enc, MIN_SHARED_PREFIX - 1)
    long = with_shared_prefix(enc, MIN_SHARED_PREFIX)
    with lora_adapter(tiny, SPEC, seed=0) as peft_model:
        _, short_passes = embedding_passes(peft_model, lambda: per_example_gradients(peft_model, short, ids, batch_size=4, progress=False))
        off, off_passes = embedding_passes(peft_model, lambda: per_example_gradients(peft_model, long, ids, batch_size=4, share_prefix=False, progress=False))
        on, on_passes = embedding_passes(peft_model, lambda: per_example_gradients(peft_model, long, ids, batch_size=4, progress=False))
    assert len(short_passes) == len(off_passes) == 1 and short_passes[0][0] == off_passes[0][0] == 4
    assert on_passes[0] == (1, MIN_SHARED_PREFIX) and len(on_passes) == 2
    assert_same_gradients(on, off)


def test_rows_are_autograd_gradients_of_each_examples_own_loss(tiny):
    enc, ids = random_encoded(5, seed=7), list("abcde")
    with lora_adapter(tiny, SPEC, seed=0) as peft_model:
        grads = per_example_gradients(peft_model, enc, ids, batch_size=5, progress=False)
        params = dict(peft_model.named_parameters())
        for i, e in enumerate(enc):
            input_ids = torch.tensor([e["input_ids"]])
            labels = torch.full_like(input_ids, -100)
            labels[0, e["answer_start"]:e["answer_end"]] = input_ids[0, e["answer_start"]:e["answer_end"]]
            loss = peft_model(input_ids=input_ids, labels=labels).loss
            direct = torch.autograd.grad(loss, [params[n] for n in grads.names])
            assert loss.item() == pytest.approx(grads.losses[i], rel=FORWARD)
            ref = torch.cat([d.flatten().double() for d in direct])
            assert float((as_matrix([c[i:i + 1] for c in grads.chunks])[0] - ref).norm() / ref.norm()) <= BACKWARD
            assert grads.grad_norms[i] == pytest.approx(float(ref.norm()), rel=BACKWARD)
    assert grads.answer_tokens == [e["answer_end"] - e["answer_start"] for e in enc]


def test_lora_a_gradients_are_zero_and_leave_cosines_unchanged(tiny):
    enc, ids = random_encoded(6, seed=3), list("abcdef")
    with lora_adapter(tiny, SPEC, seed=0) as peft_model:
        b_only = per_example_gradients(peft_model, enc, ids, progress=False)
        both = per_example_gradients(peft_model, enc, ids, include_lora_a=True, progress=False)
    assert sum(".lora_A." in n for n in both.names) == len(b_only.names)
    assert all(bool((c == 0).all()) for n, c in zip(both.names, both.chunks) if ".lora_A." in n)
    d = as_matrix(both.chunks).shape[1]  # the same lora_B values (A adds exact zeros); only float64 sums over d terms differ
    assert torch.allclose(cosines(both.chunks), cosines(b_only.chunks), rtol=0, atol=4 * gamma(d, FP64_U) + gamma(4, FP64_U))
    assert both.grad_norms == pytest.approx(b_only.grad_norms, rel=2 * gamma(d, FP64_U))


def test_dropout_is_inactive_even_if_the_model_was_in_train_mode(tiny):
    enc, ids = random_encoded(5, seed=4), list("abcde")
    with lora_adapter(tiny, LoraSpec(r=8, alpha=16, dropout=0.5), seed=0) as peft_model:
        peft_model.train()
        with_dropout = per_example_gradients(peft_model, enc, ids, progress=False)
        assert not any(m.training for m in peft_model.modules())
        again = per_example_gradients(peft_model, enc, ids, progress=False)
    with lora_adapter(tiny, LoraSpec(r=8, alpha=16, dropout=0.0), seed=0) as peft_model:
        without = per_example_gradients(peft_model, enc, ids, progress=False)
    for a, b, c in zip(with_dropout.chunks, again.chunks, without.chunks):
        assert torch.equal(a, b) and torch.equal(a, c)


def test_lora_init_is_seeded_and_the_model_is_restored(tiny):
    before = {n: p.clone() for n, p in tiny.state_dict().items()}
    rng_state = torch.random.get_rng_state()
    with lora_adapter(tiny, SPEC, seed=5) as m: a5 = [p.clone() for n, p in m.named_parameters() if "lora_A" in n]
    with lora_adapter(tiny, SPEC, seed=5) as m: again = [p.clone() for n, p in m.named_parameters() if "lora_A" in n]
    with lora_adapter(tiny, SPEC, seed=6) as m:
        a6 = [p.clone() for n, p in m.named_parameters() if "lora_A" in n]
        assert all(bool((p == 0).all()) for n, p in m.named_parameters() if "lora_B" in n)
    assert all(torch.equal(x, y) for x, y in zip(a5, again))
    assert not torch.equal(a5[0], a6[0])
    assert torch.equal(torch.random.get_rng_state(), rng_state)  # the global RNG is left alone
    after = tiny.state_dict()
    assert set(after) == set(before) and all(torch.equal(before[n], after[n]) for n in before)
    assert all(p.requires_grad for p in tiny.parameters())


def test_bad_lora_target_lists_the_linear_layers():
    model = tiny_model()[0]
    with pytest.raises(DataeffError) as e: add_lora(model, LoraSpec(targets=("q_proj", "query_key_value")))
    msg = str(e.value)
    assert "query_key_value" in msg and "\n" not in msg
    for name in linear_layer_names(model): assert name in msg


def test_unsupported_dtypes_are_clear_errors(tiny):
    with pytest.raises(DataeffError, match="float16.*not supported on cpu"): check_dtype("float16", "cpu")
    with pytest.raises(DataeffError, match="int8"): check_dtype("int8", "cpu")
    assert check_dtype("float32") is torch.float32
    with lora_adapter(tiny, SPEC) as m:
        with pytest.raises(DataeffError, match="gradient buffer dtype"): per_example_gradients(m, random_encoded(2), ["a", "b"], grad_dtype=torch.float64)


def test_bfloat16_buffer(tiny):
    enc, ids = random_encoded(6, seed=5), list("abcdef")
    with lora_adapter(tiny, SPEC) as m:
        full = per_example_gradients(m, enc, ids, progress=False)
        half = per_example_gradients(m, enc, ids, grad_dtype="bfloat16", progress=False)
    assert all(c.dtype == torch.bfloat16 for c in half.chunks)
    d = as_matrix(full.chunks).shape[1]
    assert half.grad_norms == pytest.approx(full.grad_norms, rel=2 * gamma(d, FP64_U))  # norms come from the same fp32 gradients, in float64
    eps = 2 * BF16_U + BF16_U**2  # each stored entry rounded to bf16: every product x_i x_j off by <= (1 + u)^2 - 1
    tol = 2 * eps / (1 - eps) + 4 * gamma(d, FP64_U)  # Cauchy-Schwarz: |Δcos| <= 2ε/(1 − ε); plus the float64 cosines' own rounding
    assert torch.allclose(cosines(half.chunks), cosines(full.chunks), rtol=0, atol=tol)


def test_exclusions_are_reported_and_never_nan(tiny):
    enc, ids = random_encoded(4, seed=6), ["a", "b", "c", "d"]
    enc[2] = dict(enc[2], answer_end=enc[2]["answer_start"])
    with lora_adapter(tiny, SPEC) as m:
        res = per_example_gradients(m, enc, ids, progress=False)
        assert res.ids == ["a", "b", "d"] and res.excluded == {"c": "empty answer after tokenisation"}
        assert all(c.shape[0] == 3 for c in res.chunks)
        assert all(math.isfinite(x) for x in res.grad_norms + res.losses)
        with torch.no_grad():
            for n, p in m.named_parameters():
                if "lora_A" in n: p.zero_()
        zero = per_example_gradients(m, enc[:2], ids[:2], progress=False)
    assert zero.ids == [] and zero.excluded == {"a": "gradient norm is zero", "b": "gradient norm is zero"}


def test_lora_tensors_order_matches_parameters(tiny):
    with lora_adapter(tiny, SPEC) as m:
        names = [n for n, *_ in lora_tensors(m)]
        assert names == [n for n, _ in m.named_parameters() if ".lora_B." in n]
        params = dict(m.named_parameters())
        assert all(w is params[n] and kind == "lora_B" and layer.lora_B["default"].weight is w for n, layer, kind, w in lora_tensors(m))
        assert len(lora_tensors(m, include_lora_a=True)) == 2 * len(names)


def test_batched_path_refuses_a_trained_adapter(tiny):
    with lora_adapter(tiny, SPEC) as m:
        with torch.no_grad(): next(p for n, p in m.named_parameters() if "lora_B" in n).fill_(0.01)
        with pytest.raises(DataeffError, match="sequential"): per_example_gradients(m, random_encoded(2), ["a", "b"], progress=False)


# --- The loss covers the answer's own tokens, whatever the tokenizer does at the prompt/answer boundary -----------------

def merging_tokenizer():
    "A stub BPE tokenizer with no pre-tokenizer and the merge '\\n' + '4' → '\\n4': 'abba\\n' + '44' tokenised jointly merges across the boundary."
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast
    vocab = {"<eos>": 0, "a": 1, "b": 2, "\n": 3, "4": 4, "\n4": 5}
    bpe = Tokenizer(models.BPE(vocab=vocab, merges=[("\n", "4")]))
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<eos>", pad_token="<eos>")


def random_llama(vocab_size, seed=0):
    "A randomly initialised two-layer Llama over `vocab_size` tokens."
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=64, bos_token_id=None, eos_token_id=0, pad_token_id=0)
    return LlamaForCausalLM(config).eval()


def assert_loss_is_the_answers_own_tokens(model, tok, example):
    "The loss terms `per_example_gradients` builds are the answer's own tokens after the prompt's own tokens, and its loss is their mean cross-entropy."
    from dataeff.gradients import _loss_inputs
    from dataeff.models import encode_example, render_prompt
    prompt = tok(render_prompt(tok, example), add_special_tokens=False)["input_ids"]
    answer = tok(example.target, add_special_tokens=False)["input_ids"]
    enc = encode_example(tok, example)
    input_ids, batch_rows, positions, targets = _loss_inputs([enc], [0], 0, "cpu")  # the targets the loss is taken over
    assert targets.tolist() == answer and batch_rows.tolist() == [0] * len(answer)
    assert (positions + 1).tolist() == list(range(len(prompt), len(prompt) + len(answer)))  # position t predicts token t + 1
    assert input_ids[0].tolist() == (prompt + answer)[:-1]  # the context is the prompt's own tokens
    with lora_adapter(model, SPEC, seed=0) as peft_model:
        grads = per_example_gradients(peft_model, [enc], [example.id], progress=False)
    with torch.no_grad(): logits = model(torch.tensor([prompt + answer])).logits[0].double()
    manual = torch.nn.functional.cross_entropy(logits[len(prompt) - 1:-1], torch.tensor(answer)).item()
    assert grads.answer_tokens == [len(answer)]
    # the same fp32 forward pass summed in another order (prefix cache, loss positions only): fp32_rounding_bound of one pass
    assert grads.losses[0] == pytest.approx(manual, rel=fp32_rounding_bound(model.config, passes=1))


def test_loss_is_the_answers_own_tokens_when_the_tokenizer_merges_across_the_boundary():
    from dataeff.data import Example
    tok = merging_tokenizer()
    example = Example("m", "abba\n", "44", raw=True)
    joint = tok("abba\n44", add_special_tokens=False)["input_ids"]
    assert joint == [1, 2, 2, 1, 5, 4]  # jointly, '\n4' is one token: masking len(prompt) = 5 tokens would leave only the last '4'
    assert_loss_is_the_answers_own_tokens(random_llama(len(tok)), tok, example)


def test_loss_is_the_answers_own_tokens_under_smollm2s_tokenizer():
    "SmolLM2 splits a prompt's final '\\n\\n' when a digit follows it: jointly, the loss of len(prompt)-masking would take in a '\\n'."
    from dataeff.data import Example
    from transformers import AutoTokenizer
    from dataeff.models import DEFAULT_MODEL, _resolve
    tok = AutoTokenizer.from_pretrained(_resolve(DEFAULT_MODEL))  # the real tokenizer; a random small Llama over its vocabulary
    prompt = "<|start_header_id|>user<|end_header_id|>\n\nIs it raining? Answer 0 (yes) or 1 (no).<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    example = Example("s", prompt, "1", raw=True)
    alone, joint = tok(prompt, add_special_tokens=False)["input_ids"], tok(prompt + "1", add_special_tokens=False)["input_ids"]
    assert joint != alone + tok("1", add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(alone[-1:]) == ["ĊĊ"] and tok.convert_ids_to_tokens(joint[len(alone) - 1:]) == ["Ċ", "Ċ", "1"]
    assert_loss_is_the_answers_own_tokens(random_llama(len(tok)), tok, example)


def test_loss_is_the_answers_own_tokens_under_the_tiny_chatml_tokenizer():
    from dataeff.data import Example
    model, tok = tiny_model(seed=0)
    assert_loss_is_the_answers_own_tokens(model, tok, Example("t", "2 + 2 =", "4", "Answer with a number."))


def test_gradient_dim_from_the_shapes_is_the_buffer_width(tiny):
    "D from the linear layers' shapes, without an adapter, against the width of the buffer per_example_gradients fills."
    from dataeff.gradients import lora_gradient_dim
    encoded = random_encoded(3)
    for spec in (SPEC, LoraSpec(r=3, targets=("q_proj", "down_proj"))):
        for with_a in (False, True):
            with lora_adapter(tiny, spec, seed=0) as peft_model:
                grads = per_example_gradients(peft_model, encoded, ["a", "b", "c"], include_lora_a=with_a, progress=False)
            assert lora_gradient_dim(tiny, spec, include_lora_a=with_a) == grads.dim


def test_gradient_dim_of_the_default_model_and_of_llama_3_1_8b():
    "The default model's adapter (built, not run) and Llama-3.1-8B's shapes on the meta device: D ≈ 88 M for lora_B, 168 M with lora_A; 32 × D in bf16 ≈ 10.7 GB."
    from transformers import LlamaConfig, LlamaForCausalLM
    from dataeff.gradients import lora_gradient_dim, memory_plan
    from dataeff.models import load_model
    model, _ = load_model(device="cpu")
    with lora_adapter(model, LoraSpec(), seed=0) as peft_model:
        for with_a in (False, True):
            assert lora_gradient_dim(model, LoraSpec(), with_a) == sum(w.numel() for *_, w in lora_tensors(peft_model, with_a))
    assert lora_gradient_dim(model, LoraSpec()) == 9_953_280  # SmolLM2-135M: 30 layers × 64 × (576 + 192 + 192 + 576 + 1536 + 1536 + 576)
    config = LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, vocab_size=128256)
    with torch.device("meta"): llama = LlamaForCausalLM(config).to(torch.bfloat16)
    d_b, d_ab = lora_gradient_dim(llama, LoraSpec()), lora_gradient_dim(llama, LoraSpec(), include_lora_a=True)
    assert (d_b, d_ab) == (88_080_384, 167_772_160)
    assert round(32 * d_ab * 2 / 1e9, 1) == 10.7 and round(32 * d_b * 2 / 1e9, 2) == 5.64
    plan = memory_plan(llama, [dict(input_ids=[1] * 300, answer_start=290, answer_end=295)] * 32, rows=32, grad_dtype="bfloat16", batch_size=2)
    assert plan.available_bytes is None  # the meta device has no memory to ask
    assert 0 <= plan.model_bytes - 2 * sum(p.numel() for p in llama.parameters()) <= 1024  # bf16 weights, plus the rotary embedding's small buffer
    assert plan.buffer_bytes == 32 * d_b * 2 + 2 * d_b * 4  # the bf16 buffer and 2 float32 staging rows
