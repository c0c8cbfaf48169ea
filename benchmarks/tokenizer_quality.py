"""Characters against byte-level BPE at equal wall time, scored per character over the whole validation split.

    python benchmarks/tokenizer_quality.py                                   # 10 minutes a run, seeds 0-2, both corpora
    python benchmarks/tokenizer_quality.py --minutes 2 --seeds 0 --sizes 512,2048 --corpora shakespeare   # a first look

Each corpus is prepared once per tokenizer (the character split is the same for all, so every model is scored
on the same validation text). Every run trains the default recipe and shape for the same minutes, with the same
context in tokens (`--context tokens`, so a BPE model reads several times more text a step) or the same context
in characters (`--context chars`: the BPE's context shrunk by its tokens per character). The saved model is
scored with `core.evaluate` (context slid by its whole width, every token predicted once): nats per character.
Prints a table (median over seeds) and writes benchmarks/results/tokenizer_quality.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import print_table, wait_for_quiet, write_results  # noqa: E402
from benchmarks.corpora import DATA, bible_text, corpus_dir  # noqa: E402
from core import checkpoint as ckpt  # noqa: E402
from core.config import recipe_configs, replace_known  # noqa: E402
from core.data import Dataset, prepare  # noqa: E402
from core.evaluate import evaluate  # noqa: E402
from core.trainer import train  # noqa: E402


def dataset_for(corpus: str, tokenizer: str) -> Path:
    """The corpus prepared with `tokenizer` ("char" or "bpe-N"), built once under benchmarks/.data/."""
    if tokenizer == "char":
        return corpus_dir(corpus)
    folder = DATA / f"{corpus}-{tokenizer}"
    if (folder / "tokenizer.json").is_file():
        return folder
    size = int(tokenizer.split("-")[1])
    if corpus == "shakespeare":
        stats = prepare(None, folder, tokenizer="bpe", vocab_size=size)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            source = Path(tmp) / f"{corpus}.txt"
            source.write_text(bible_text(), encoding="utf-8")
            stats = prepare([source], folder, tokenizer="bpe", vocab_size=size)
    print(stats.summary(), file=sys.stderr)
    return folder


def run(corpus: str, tokenizer: str, seed: int, minutes: float, context: str, out: Path) -> dict:
    data_dir = dataset_for(corpus, tokenizer)
    dataset = Dataset(data_dir)
    model_config, train_config = recipe_configs("modern")
    block = model_config.block_size
    if context == "chars" and tokenizer != "char":
        block = max(8, round(block * dataset.tokens_per_char["train"] / 8) * 8)
    model_config = replace_known(model_config, {"block_size": block})
    train_config = replace_known(train_config, {"data_dir": str(data_dir), "seed": seed, "max_iters": 0,
                                                "max_minutes": minutes, "sample_chars": 0})  # fmt: skip
    wait_for_quiet()
    result = train(model_config, train_config, out_dir=out, dataset=dataset)
    scored = evaluate(ckpt.load_model(out), data_dir=data_dir, stride=block)
    return {
        "corpus": corpus, "tokenizer": tokenizer, "seed": seed, "minutes": minutes, "context_tokens": block,
        "context_chars": round(block / dataset.tokens_per_char["train"]), "steps": result.iters,
        "chars_per_step": round(train_config.batch_size * block / dataset.tokens_per_char["train"]),
        "ms_per_step": round(1000 * result.elapsed_s / max(result.iters, 1), 1),
        "val_nats_per_char": round(scored.nats_per_char, 4), "trainer_val": round(result.val_loss, 4),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--sizes", default="256,512,1024,2048,4096", help="BPE vocabulary sizes")
    parser.add_argument("--corpora", default="shakespeare,bible")
    parser.add_argument("--context", choices=["tokens", "chars"], default="tokens")
    args = parser.parse_args()
    tokenizers = ["char", *(f"bpe-{n}" for n in args.sizes.split(",") if n)]
    rows = []
    with tempfile.TemporaryDirectory(prefix="chargpt-tokenizers-") as tmp:
        for corpus in args.corpora.split(","):
            for tokenizer in tokenizers:
                for seed in (int(s) for s in args.seeds.split(",")):
                    row = run(
                        corpus, tokenizer, seed, args.minutes, args.context, Path(tmp) / f"{corpus}-{tokenizer}-{seed}"
                    )
                    print(row, file=sys.stderr)
                    rows.append(row)
    summary = []
    for corpus in args.corpora.split(","):
        char = [r["val_nats_per_char"] for r in rows if r["corpus"] == corpus and r["tokenizer"] == "char"]
        for tokenizer in tokenizers:
            mine = [r for r in rows if r["corpus"] == corpus and r["tokenizer"] == tokenizer]
            median = statistics.median(r["val_nats_per_char"] for r in mine)
            summary.append({**{k: mine[0][k] for k in ("corpus", "tokenizer", "context_tokens", "context_chars",
                                                       "chars_per_step")},
                            "ms_per_step": statistics.median(r["ms_per_step"] for r in mine),
                            "steps": statistics.median(r["steps"] for r in mine),
                            "val_nats_per_char": median, "vs_char": round(median - statistics.median(char), 4)})  # fmt: skip
    print(f"\n{args.minutes:g} minutes a run, seeds {args.seeds}, context equal in {args.context} (median of seeds)")
    print_table(summary, ["corpus", "tokenizer", "context_tokens", "context_chars", "chars_per_step", "ms_per_step",
                          "steps", "val_nats_per_char", "vs_char"])  # fmt: skip
    write_results("tokenizer_quality", {"args": vars(args), "runs": rows, "summary": summary})


if __name__ == "__main__":
    main()
