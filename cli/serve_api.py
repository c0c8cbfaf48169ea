"""`serve-api`: a saved model behind an OpenAI-style completion API."""

from __future__ import annotations

import argparse
import sys

from cli.common import CliError
from core import checkpoint as ckpt


def add_parser(sub) -> None:
    p = sub.add_parser("serve-api", help="serve a saved model as an OpenAI-style completion API")
    p.add_argument("--model", default=None, help="model name in models/ or a folder (default: the newest)")
    p.add_argument("--models-dir", default="models", help="where saved models live")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (beyond 127.0.0.1 needs --api-key)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' (default: $CHARGPT_API_KEY; none on 127.0.0.1)")  # fmt: skip
    p.add_argument("--max-tokens-limit", type=int, default=4096, help="the most max_tokens a request may ask")
    p.add_argument("--max-prompt-bytes", type=int, default=1_000_000, help="the longest prompt, in UTF-8 bytes")
    p.add_argument("--max-stop-chars", type=int, default=1_000, help="the longest stop string, in characters")
    p.add_argument("--max-replies", type=int, default=64,
                   help="replies under way at once; more are answered 429 at once")  # fmt: skip
    p.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                   help="a browser page that may call the API (e.g. http://localhost:3000; '*' for any); "
                   "repeat for more; by default browsers are refused")  # fmt: skip
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import os

    import uvicorn

    from api.server import Access, Limits, create_app, normal_origin
    from core.device import pick_device
    from core.net import is_local

    api_key = args.api_key or os.environ.get("CHARGPT_API_KEY") or None
    if not is_local(args.host) and not api_key:
        raise CliError(f"--host {args.host} lets other machines call the API: give --api-key KEY (or set "
                       "CHARGPT_API_KEY), which every request must send as 'Authorization: Bearer KEY'")  # fmt: skip
    for flag in ("max_tokens_limit", "max_prompt_bytes", "max_stop_chars", "max_replies"):
        if getattr(args, flag) < 1:
            raise CliError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    loaded = ckpt.load_model(args.model, args.models_dir, device=pick_device(args.device))
    limits = Limits(max_tokens=args.max_tokens_limit, prompt_bytes=args.max_prompt_bytes,
                    stop_chars=args.max_stop_chars, replies=args.max_replies)  # fmt: skip
    access = Access(api_key=api_key, local=is_local(args.host), origins=tuple(map(normal_origin, args.allow_origin)))
    app = create_app(loaded, limits=limits, access=access)
    shown = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
    print(f"serving {loaded.name} at http://{shown}:{args.port}/v1 (POST /v1/completions, GET /v1/models)"
          f"{', API key required' if api_key else ''}; Ctrl+C stops", file=sys.stderr)  # fmt: skip
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
