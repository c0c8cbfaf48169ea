"""`chat`: talk with a saved model in the terminal."""

from __future__ import annotations

import argparse
import sys

from cli.flags import add_dataclass_flags, given
from core import checkpoint as ckpt
from core.config import replace_known
from core.sampling import SamplingConfig


def add_parser(sub) -> None:
    p = sub.add_parser("chat", help="chat with a saved model in the terminal")
    p.add_argument("--model", default=None, help="model name in models/ or a folder (default: the newest)")
    p.add_argument("--models-dir", default="models", help="where saved models live")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    add_dataclass_flags(p, SamplingConfig, "sampling")
    p.set_defaults(func=run)


CHAT_HELP = """commands: /help this help, /reset forget the conversation, quit or exit (or Ctrl-D) to leave
Each message is appended to the conversation; the model continues it until a blank line once its reply holds
--min-reply-chars characters."""


def run(args: argparse.Namespace) -> int:
    from core.chat import ChatSession
    from core.device import pick_device

    loaded = ckpt.load_model(args.model, args.models_dir, device=pick_device(args.device))
    settings = replace_known(SamplingConfig(), given(args, SamplingConfig)).validate()
    session = ChatSession(loaded, settings)
    if hasattr(sys.stdin, "reconfigure"):  # bytes that are not UTF-8 arrive as U+FFFD, which the notice names
        sys.stdin.reconfigure(errors="replace")
    interactive = sys.stdin.isatty()
    if interactive:
        print(f"chatting with {loaded.name} ({loaded.model.num_params() / 1e6:.2f}M parameters). {CHAT_HELP}")
    while True:
        try:
            message = input("you> " if interactive else "")
        except EOFError:
            break
        except KeyboardInterrupt:
            print()
            break
        command = message.strip()
        if command.lower() in ("quit", "exit", "/quit", "/exit"):
            break
        if command == "/help":
            print(CHAT_HELP)
            continue
        if command == "/reset":
            session.reset()
            print("(conversation cleared)")
            continue
        if not command:
            continue
        notice = session.unknown_notice(message)
        if notice:
            print(notice, file=sys.stderr)
        if interactive:
            print("bot> ", end="", flush=True)
        try:
            for piece in session.reply(message):
                print(piece, end="", flush=True)
        except KeyboardInterrupt:
            print(" (interrupted)", end="")
        print(flush=True)
    return 0
