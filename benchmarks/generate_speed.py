"""Generation speed with and without the KV cache, and time to first token.

A 6-layer, 6-head, 384-wide GPT with a context of 256 (random weights: speed does not depend on them)
generates 500 new tokens through `core.sampling.generate_ids` (the path the chat CLI, the Chat tab and
training samples use: temperature 0.8, repetition window, sampling on the CPU) after a 64-character and
after a 256-character prompt, with the cache (`use_cache=True`) and without it (each token re-reads the
whole context; after the 256-character prompt that is always 256 positions).
Time to first token is the time until `generate_ids` yields its first id, for prompts of 1, 64 and 256
characters (256 fills the context: the whole prefill). Targets: cache >= 10x faster, first token < 100 ms.

The chat path: characters/s of a real reply through `core.chat.ChatSession` (what `python app.py chat`
prints), measured as a long minus a short seeded reply (so the prompt's prefill and the first character
cancel out), at the chat's default (float16 copies of the weights for one-row steps on a CPU) and with `--exact`
(float32 only), with speculative decoding off (`draft_tokens=0`) and on (4 guesses a call), for random models
of the classic and the modern architecture at the same shape (guesses are rarely right in random text: the
cost of checking them) and for trained models given with `--model`, sampled (temperature 0.8) and greedy
(what the guesses gain, and how many characters each model call yields; a trained model's reply is not
cut at its first blank line, which comes after a line or two). Target (issue 16): >= 400/s at the chat's
defaults.

    python benchmarks/generate_speed.py                            # 500 new tokens, 3 repeats
    python benchmarks/generate_speed.py --quick                    # 100 new tokens, 1 repeat
    python benchmarks/generate_speed.py --model models/shakespeare # and the chat path of a trained model

Prints a table and writes benchmarks/results/generate_speed.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from pathlib import Path

import torch
from common import print_table, timed_repeats, wait_for_quiet, write_results

from core.chat import ChatSession
from core.checkpoint import LoadedModel, load_model
from core.config import ModelConfig, recipe_configs, replace_known
from core.data import Dataset
from core.decoding import Decoder
from core.device import autocast
from core.model import GPT, KVCache
from core.sampling import GREEDY_DRAFT_TOKENS, SamplingConfig, fill_dtype, generate_ids, stream
from core.vocab import Vocab

VOCAB = 80  # the default corpus has 80 characters
PROMPTS = (64, 256)  # 256 fills the context, so every uncached step reads all 256 positions
SHAPE = {"n_layer": 6, "n_head": 6, "n_embd": 384, "block_size": 256, "vocab_size": VOCAB}
CONFIG = ModelConfig(**SHAPE)
CHAT_REPLIES = (100, 600)  # characters of the short and the long reply
CHAT_TARGET = 400  # characters/s through the CLI chat
CHAT_MESSAGE = "To be, or not to be: that is the question."


def generate(
    model: GPT, prompt: list[int], new_tokens: int, use_cache: bool, temperature: float = 0.8, exact: bool = False
) -> list[int]:
    settings = SamplingConfig(temperature=temperature, max_new_tokens=new_tokens, seed=0, exact=exact)
    return list(generate_ids(model, prompt, settings, use_cache=use_cache))


def first_token_s(model: GPT, prompt: list[int], use_cache: bool, repeats: int) -> float:
    settings = SamplingConfig(temperature=0.8, max_new_tokens=1, seed=0)
    times = []
    for _ in range(repeats):
        wait_for_quiet(30)
        started = time.perf_counter()
        next(generate_ids(model, prompt, settings, use_cache=use_cache))
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def chat_reply_s(
    loaded: LoadedModel, length: int, repeats: int, settings: SamplingConfig, whole: bool
) -> tuple[float, int, int]:
    """Median seconds of one seeded chat reply of at most `length` characters, its length, and the model
    calls it took. With `whole`, the reply does not end at a blank line (a trained model's replies are a
    line or two: too short to time)."""
    reply: list[str] = []
    calls: list[int] = []
    hook = loaded.model.register_forward_hook(lambda module, args, out: calls.append(1))  # prompts, refills
    decode_step = Decoder.__call__  # decoding steps
    Decoder.__call__ = lambda self, ids, cache: calls.append(1) or decode_step(self, ids, cache)
    settings = dataclasses.replace(settings, max_new_tokens=length, seed=0)

    def once() -> None:
        calls.clear()
        if whole:
            reply[:] = list(stream(loaded.model, loaded.vocab, CHAT_MESSAGE + "\n", settings))
        else:
            reply[:] = list(ChatSession(loaded, settings).reply(CHAT_MESSAGE))

    try:
        once()  # warm-up
        return timed_repeats(once, repeats)["median_s"], len("".join(reply)), len(calls)
    finally:
        hook.remove()
        Decoder.__call__ = decode_step


def chat_row(label: str, loaded: LoadedModel, repeats: int, settings: SamplingConfig, whole: bool) -> dict:
    (short_s, short_n, _), (long_s, long_n, calls) = (
        chat_reply_s(loaded, n, repeats, settings, whole) for n in CHAT_REPLIES
    )
    return {
        "model": label,
        "temperature": settings.temperature,
        "draft_tokens": settings.guesses,
        "exact": settings.exact,
        "short_chars": short_n,
        "long_chars": long_n,
        "short_s": short_s,
        "long_s": long_s,
        "chars_per_call": long_n / calls,
        "chars_per_s": (long_n - short_n) / (long_s - short_s),
    }


def half_precision_rows(trained: list[str], data_dir: str, windows: int = 32) -> list[dict]:
    """What the default's precision costs a trained model, against `--exact`, where a chat spends most of
    its characters: after a refill. In each of `windows` contexts of the validation split (5,000 characters
    apart) the first 3/4 are encoded at once (bf16 autocast where native, as the chat's refills), and the
    rest is scored teacher-forced by one-row steps (float16 weights); also how often the most likely next
    character is the same."""
    val = Dataset(data_dir).tokens["val"]
    rows = []
    for path in trained:
        model = load_model(path).model.eval()
        block = model.config.block_size
        filled, device = block * 3 // 4, model.wte.weight.device
        losses, picks = {}, {}
        for half in (False, True):
            step, total, picked = Decoder(model, half), 0.0, []
            fill = autocast(device, fill_dtype(device, half))
            for window in range(windows):
                ids = [int(t) for t in val[window * 5000 : window * 5000 + block + 1]]
                cache = KVCache.empty(model.config, 1, device, torch.float32)
                with torch.inference_mode(), fill:
                    model(torch.tensor([ids[: filled - 1]], device=device), cache=cache)
                for t in range(filled - 1, block):
                    logits = step([ids[t]], cache)[0].double()
                    total -= torch.log_softmax(logits, -1)[ids[t + 1]].item()
                    picked.append(int(logits.argmax()))
            losses[half], picks[half] = total / len(picked), picked
        same = sum(a == b for a, b in zip(picks[False], picks[True])) / len(picks[True])
        rows.append(
            {
                "model": Path(path).name,
                "characters": len(picks[True]),
                "loss_exact": losses[False],
                "loss_default": losses[True],
                "loss_change": losses[True] - losses[False],
                "same_top_pick": same,
            }
        )
    return rows


def long_text_rows(trained: list[str], data_dir: str, stretches: int = 8, length: int = 1024) -> list[dict]:
    """What a long reply reads once the context is full, for trained models with rotary positions: the
    teacher-forced loss of the characters after the first context of each of `stretches` stretches of the
    validation split (`length` characters, 5,000 apart), fed one at a time in float32 (`--exact`), when a
    full cache slides (the default for rotary positions) against when its last 3/4 is encoded again (what
    learned positions need) and against the model reading each character's whole context afresh."""
    val = Dataset(data_dir).tokens["val"]
    rows = []
    for path in trained:
        model = load_model(path).model.eval()
        if model.config.pos_encoding != "rope":
            continue
        block, device = model.config.block_size, model.wte.weight.device
        totals = {"slide": 0.0, "encode_again": 0.0, "fresh": 0.0}
        counted = 0
        for stretch in range(stretches):
            ids = [int(t) for t in val[stretch * 5000 : stretch * 5000 + length + 1]]
            scored = range(block, length)
            for policy in totals:
                step, cache = Decoder(model), KVCache.empty(model.config, 1, device, torch.float32)
                for t in range(length):
                    with torch.inference_mode():
                        if policy == "fresh" and t >= block:
                            logits = model(torch.tensor([ids[t - block + 1 : t + 1]], device=device))[0][0, -1]
                        elif cache.length >= block and policy == "encode_again":
                            cache = KVCache.empty(model.config, 1, device, torch.float32)
                            logits = model(
                                torch.tensor([ids[t - block * 3 // 4 + 1 : t + 1]], device=device), cache=cache
                            )[0][0, -1]
                        else:
                            if cache.length >= block:
                                cache.slide(block // 4, model.rope_cos, model.rope_sin)
                            logits = step([ids[t]], cache)[0]
                    if t in scored:
                        totals[policy] -= torch.log_softmax(logits.double(), -1)[ids[t + 1]].item()
            counted += len(scored)
        rows.append({"model": Path(path).name, "characters": counted, **{k: v / counted for k, v in totals.items()}})
    return rows


def chat_rows(repeats: int, trained: list[str]) -> list[dict]:
    """The chat path of random models of both recipes (their text never repeats, so guesses are rarely right:
    what checking them costs at worst) and of trained models given with --model (what guesses gain, sampled
    and greedy), each with guesses off and on."""
    vocab = Vocab([chr(c) for c in range(32, 32 + VOCAB - 1)] + ["\n"])
    models = []
    for recipe in ("classic", "modern"):
        torch.manual_seed(0)
        model = GPT(replace_known(recipe_configs(recipe)[0], SHAPE)).eval()
        models.append((f"random {recipe}", LoadedModel(model, vocab, {}, Path(recipe)), (0.8,), False))
    for path in trained:
        loaded = load_model(path)
        shape = loaded.model.config
        models.append((f"{Path(path).name} ({shape.n_layer}x{shape.n_embd})", loaded, (0.8, 0.0), True))
    return [
        chat_row(label, loaded, repeats, SamplingConfig(temperature=t, draft_tokens=d, exact=exact), whole)
        for label, loaded, temperatures, whole in models
        for t in temperatures
        for d in (0, GREEDY_DRAFT_TOKENS)
        for exact in ((False, True) if d == 0 else (False,))
    ]


def nanogpt_row(repeats: int) -> dict:
    """nanoGPT's `generate` at the same shape (classic model, random weights, temperature 0.8): each new character
    re-reads the whole context (256 positions), in float32, eager. Long minus short reply, as for the chat path."""
    from nanogpt_baseline import NanoConfig, NanoGPT

    torch.manual_seed(0)
    model = NanoGPT(NanoConfig(n_layer=6, n_head=6, n_embd=384, block_size=256, vocab_size=VOCAB)).eval()
    # a full context, as for most of the chat's 600-character reply (its transcript fills 256 by character ~210)
    prompt = torch.randint(0, VOCAB, (1, 256), generator=torch.Generator().manual_seed(2))
    short, long = CHAT_REPLIES[0] // 4, CHAT_REPLIES[1] // 4  # it is slow: a quarter of the chat's lengths
    short_s = timed_repeats(lambda: model.generate(prompt, short, 0.8), repeats)["median_s"]
    long_s = timed_repeats(lambda: model.generate(prompt, long, 0.8), repeats)["median_s"]
    return {"model": "nanoGPT generate (classic)", "short_chars": short, "long_chars": long, "short_s": short_s,
            "long_s": long_s, "chars_per_s": (long - short) / (long_s - short_s)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="100 new tokens, one repeat")
    parser.add_argument(
        "--model", action="append", default=[], help="a trained model's folder: its chat path too (repeatable)"
    )
    parser.add_argument("--data-dir", default="dataset", help="with --model: whose validation split scores half")
    args = parser.parse_args()
    new_tokens = 100 if args.quick else 500
    repeats = 1 if args.quick else 3

    torch.manual_seed(0)
    model = GPT(CONFIG).eval()
    prompt = torch.randint(0, VOCAB, (256,), generator=torch.Generator().manual_seed(1)).tolist()
    generate(model, prompt[:64], 20, True)  # warm up both paths
    generate(model, prompt[:64], 5, False)

    rows = []
    for prompt_len in PROMPTS:
        for use_cache in (True, False):
            timing = timed_repeats(
                lambda c=use_cache, n=prompt_len: generate(model, prompt[:n], new_tokens, c), repeats
            )
            rows.append(
                {
                    "prompt": prompt_len,
                    "kv_cache": use_cache,
                    "new_tokens": new_tokens,
                    "seconds": timing["median_s"],
                    "tokens_per_s": new_tokens / timing["median_s"],
                    "dropped_noisy": timing["dropped_noisy"],
                }
            )
        cached, uncached = rows[-2:]
        cached["speedup"] = cached["tokens_per_s"] / uncached["tokens_per_s"]
    ttft_rows = [
        {
            "kv_cache": use_cache,
            **{f"ttft_ms_prompt_{n}": first_token_s(model, prompt[:n], use_cache, 5) * 1e3 for n in (1, 64, 256)},
        }
        for use_cache in (True, False)
    ]
    speedups = {row["prompt"]: row["speedup"] for row in rows if row["kv_cache"]}
    speedup = min(speedups.values())
    greedy_same = generate(model, prompt[:64], 100, True, 0.0, exact=True) == generate(
        model, prompt[:64], 100, False, 0.0
    )
    worst_ttft = max(v for k, v in ttft_rows[0].items() if k.startswith("ttft"))

    print(f"\ngeneration, {CONFIG.n_layer} layers x {CONFIG.n_embd} wide, context {CONFIG.block_size}")
    print_table(rows, ["prompt", "kv_cache", "new_tokens", "seconds", "tokens_per_s", "speedup", "dropped_noisy"])
    print("\ntime to first token (ms) by prompt length")
    print_table(ttft_rows, ["kv_cache", "ttft_ms_prompt_1", "ttft_ms_prompt_64", "ttft_ms_prompt_256"])
    print(
        "cache speedup "
        + ", ".join(f"{v:.1f}x after a {k}-character prompt" for k, v in speedups.items())
        + f" (target >= 10); worst cached time to first token {worst_ttft:.1f} ms"
    )
    print(f"greedy output identical with and without the cache (100 tokens within the context, --exact): {greedy_same}")
    chat = chat_rows(repeats, args.model)
    print(f"\nthe CLI chat's path (ChatSession.reply), {CHAT_REPLIES[1]} minus {CHAT_REPLIES[0]} characters")
    print_table(
        chat,
        [
            "model",
            "temperature",
            "draft_tokens",
            "exact",
            "short_chars",
            "long_chars",
            "short_s",
            "long_s",
            "chars_per_call",
            "chars_per_s",
        ],  # fmt: skip
    )
    print(f"target: >= {CHAT_TARGET} characters/s")
    wait_for_quiet(60)
    baseline = nanogpt_row(repeats)
    ours = next(r for r in chat if r["model"] == "random classic" and not r["draft_tokens"] and not r["exact"])
    ratio = ours["chars_per_s"] / baseline["chars_per_s"]
    print(f"nanoGPT's generate at the same shape: {baseline['chars_per_s']:.1f} characters/s; the chat path of the "
          f"same (classic) model: {ours['chars_per_s']:.0f}, {ratio:.1f}x (target >= 20x)")  # fmt: skip
    half = half_precision_rows(args.model, args.data_dir) if args.model else []
    if half:
        print("\nthe default precision against --exact after a refill: teacher-forced loss on validation text")
        print_table(half, ["model", "characters", "loss_exact", "loss_default", "loss_change", "same_top_pick"])
    long_text = long_text_rows(args.model, args.data_dir) if args.model else []
    if long_text:
        print("\nlong replies past the context, rotary models: teacher-forced loss after the first context")
        print_table(long_text, ["model", "characters", "slide", "encode_again", "fresh"])
    write_results(
        "generate_speed",
        {
            "quick": args.quick,
            "model": CONFIG.__dict__,
            "threads": torch.get_num_threads(),
            "rows": rows,
            "ttft": ttft_rows,
            "speedup_by_prompt": speedups,
            "speedup": speedup,
            "worst_ttft_ms": worst_ttft,
            "greedy_same_with_and_without_cache": greedy_same,
            "chat": chat,
            "nanogpt": baseline,
            "chat_vs_nanogpt": ratio,
            "half_precision": half,
            "long_text": long_text,
            "targets": {"speedup": 10, "ttft_ms": 100, "chat_chars_per_s": CHAT_TARGET},
            "ok": speedup >= 10 and worst_ttft < 100,
            "chat_ok": all(
                row["chars_per_s"] >= CHAT_TARGET
                for row in chat
                if row["temperature"] and not row["draft_tokens"] and not row["exact"]
            ),
        },
    )


if __name__ == "__main__":
    main()
