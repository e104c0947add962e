"""Benchmark: batched one-pass confidence scoring (dataeff.confidence.score_examples) against the authors' protocol
(batch size 1: greedy generate, then a separate forward pass over prompt + answer to read the probabilities).
Both run side by side in this one process on the same examples; prints throughputs, their ratio and the largest
confidence difference.  Usage: python scripts/bench_confidence.py [--n 200] [--task object_counting] [--score-batch-size 16]"""
import argparse, time
import torch
from dataeff.confidence import score_examples, _stop_ids
from dataeff.models import DEFAULT_MODEL, load_model, model_id, render_prompt
from dataeff.tasks import TASKS, make_task


@torch.inference_mode()
def authors_protocol(model, tokenizer, examples, max_new_tokens):
    "Per example: generate greedily at batch size 1, then one more forward pass over prompt + answer; mean max-probability over the answer."
    stop, out = _stop_ids(model, tokenizer), []
    for ex in examples:
        prompt = tokenizer(render_prompt(tokenizer, ex), add_special_tokens=False)["input_ids"]
        generated = model.generate(torch.tensor([prompt], device=model.device), attention_mask=torch.ones(1, len(prompt), dtype=torch.long, device=model.device),
                                   do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=stop, pad_token_id=tokenizer.pad_token_id)[0, len(prompt):].tolist()
        answer = generated[:next((i for i, t in enumerate(generated) if t in stop), len(generated))] or generated[:1]
        logits = model(torch.tensor([prompt + answer], device=model.device)).logits[0, len(prompt) - 1:-1].float()
        out.append(dict(id=ex.id, avg_confidence=torch.softmax(logits, -1).max(-1).values.mean().item(), answer=tokenizer.decode(answer, skip_special_tokens=True).strip()))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--task", default="object_counting", choices=TASKS)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--score-batch-size", type=int, default=16, help="examples greedy-decoded together by dataeff (default 16)")
    parser.add_argument("--max-new-tokens", type=int, default=30)
    parser.add_argument("--device", default="auto", help="torch device (default auto: CUDA when there is a GPU)")
    args = parser.parse_args()
    model, tokenizer = load_model(args.model, device=args.device)
    device = str(model.device)
    examples = make_task(args.task, args.n, seed=0)
    print(f"{model_id(model)} on {device} ({torch.get_num_threads()} threads), {args.n} {args.task} examples, max {args.max_new_tokens} new tokens", flush=True)
    start = time.perf_counter()
    ours = score_examples(model, tokenizer, examples, args.score_batch_size, args.max_new_tokens, progress=False)
    ours_s = time.perf_counter() - start
    start = time.perf_counter()
    theirs = authors_protocol(model, tokenizer, examples, args.max_new_tokens)
    theirs_s = time.perf_counter() - start
    diff = max(abs(a["avg_confidence"] - b["avg_confidence"]) for a, b in zip(ours, theirs))
    same = sum(a["answer"] == b["answer"] for a, b in zip(ours, theirs))
    print(f"one-pass batched (batch {args.score_batch_size}): {ours_s:8.1f} s  {args.n / ours_s:6.2f} examples/s", flush=True)
    print(f"authors' protocol (batch 1, 2 passes):  {theirs_s:8.1f} s  {args.n / theirs_s:6.2f} examples/s", flush=True)
    print(f"throughput ratio {theirs_s / ours_s:.2f}x; max |avg_confidence difference| {diff:.2e}; identical answers {same}/{args.n}")


if __name__ == "__main__":
    main()
