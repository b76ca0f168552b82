"""`qwenvl-ft chat MODEL_OR_RUN_DIR`: interactive multi-turn chat with images, streamed.

Type a message and press Enter. Commands:
  /image PATH     attach an image to the next message (repeat for several)
  /boxes OUT.png  draw the last answer's boxes on the last image
  /reset          start a new conversation
  /quit           leave (or Ctrl-D)
MODEL_OR_RUN_DIR is a base or merged checkpoint, a full run, or a LoRA run / checkpoint directory.
On generations with a thinking mode (--thinking on|off; default: the mode the run was trained in), the reasoning
streams after "thinking> " and the answer after "model> ".
"""

from __future__ import annotations

import argparse

from .predict_cmd import add_thinking_argument, load_predictor


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "chat",
        help="chat with a model or a run, with images",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", help="checkpoint directory, or a qwenvl-ft run / checkpoint directory")
    p.add_argument("--image", action="append", default=[], help="image(s) for the first message")
    p.add_argument("--system", help="system prompt")
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16")
    p.add_argument("--base", help="base model directory, overriding the one a LoRA run recorded")
    add_thinking_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..chat import Chat

    predictor = load_predictor(args, args.model)
    chat = Chat(predictor, args.system, args.max_new_tokens)
    pending = list(args.image)
    print("qwenvl-ft chat: /image PATH, /boxes OUT.png, /reset, /quit")
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            print()
            return 0
        if not line:
            continue
        command, _, rest = line.partition(" ")
        if command == "/quit":
            return 0
        if command == "/reset":
            chat.reset()
            pending = []
        elif command == "/image":
            pending.append(rest.strip())
        elif command == "/boxes":
            boxes = chat.boxes()
            print(f"{len(boxes)} box(es): {[tuple(round(v, 1) for v in b) for b in boxes]}")
            if boxes and rest.strip():
                print(f"drawn: {chat.draw_boxes(rest.strip())}")
        else:
            stream = _Printer()
            chat.ask(line, pending, on_text=stream.answer, on_reasoning=stream.reasoning)
            stream.answer("")  # the label even when the answer is empty
            pending = []
            print()


class _Printer:
    """Prints the reasoning after "thinking> ", then the answer after "model> ", as they stream."""

    def __init__(self):
        self.label = None

    def _print(self, label: str, piece: str) -> None:
        if self.label != label:
            print(("\n" if self.label else "") + label, end="", flush=True)
            self.label = label
        print(piece, end="", flush=True)

    def reasoning(self, piece: str) -> None:
        self._print("thinking> ", piece)

    def answer(self, piece: str) -> None:
        self._print("model> ", piece)
