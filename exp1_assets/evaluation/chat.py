"""Talk to a checkpoint: a terminal chat with any `model_checkpoint/<size>` folder.

    python -m exp1_assets.evaluation.chat --size tiny          # $EXP1_HOME/model_checkpoint/tiny
    python -m exp1_assets.evaluation.chat --checkpoint PATH    # any from_pretrained chat folder
    make chat SIZE=tiny

The folder describes itself: the tokenizer carries the ChatML template the model was trained on,
and generation ends at `<|im_end|>`. Every turn re-renders the whole conversation with that
template and streams the reply as it is generated. Decoding is greedy unless `--temperature` is
above 0, so the same conversation gets the same replies (`model.generate` gives them too).

At the prompt: an empty line is ignored, `/reset` forgets the conversation, `/quit` or Ctrl-D
exits; Ctrl-C stops a reply half-way and returns to the prompt (that exchange is forgotten).
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROMPT = "you> "
COMMANDS = "/reset forgets, /quit or Ctrl-D exits, Ctrl-C stops a reply"


class TooLong(Exception):
    """One message longer than the model can read: refused, and the chat goes on."""


@dataclass
class Chat:
    """A loaded checkpoint and the conversation so far."""

    model: Any
    tokenizer: Any
    max_new_tokens: int
    temperature: float
    system: str | None = None
    history: list[dict[str, str]] = field(default_factory=list)

    def reset(self) -> None:
        self.history = [{"role": "system", "content": self.system}] if self.system else []


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from exp1_assets.sizes import SIZES

    parser = argparse.ArgumentParser(prog="python -m exp1_assets.evaluation.chat", description=__doc__.split("\n")[0])
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--size", choices=list(SIZES), default="tiny",
                       help="talk to $EXP1_HOME/model_checkpoint/<size> (default: tiny)")
    where.add_argument("--checkpoint", type=Path, help="talk to this checkpoint folder instead")
    parser.add_argument("--system", help="a system message that opens every conversation")
    parser.add_argument("--max-new-tokens", type=int, default=256, help="longest reply, in tokens (default: 256)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 (default) decodes greedily")
    parser.add_argument("--seed", type=int, default=0, help="seeds sampling (with --temperature > 0)")
    args = parser.parse_args(argv)
    if args.max_new_tokens <= 0 or args.temperature < 0:
        parser.error("--max-new-tokens must be positive and --temperature >= 0")
    return args


def checkpoint_folder(args: argparse.Namespace) -> Path:
    """The folder to load; a missing one says how to make it (before torch takes seconds to import)."""
    from exp1_assets.settings import Settings
    from exp1_assets.storage import ArtifactRoot, artifact_name

    if args.checkpoint is not None:  # under a model_checkpoint/ folder, its name is the size
        path, size = args.checkpoint, args.checkpoint.name
    else:
        path, size = ArtifactRoot(Settings.from_environ().home).path("model_checkpoint", args.size), args.size
    if path.is_dir():
        return path
    if path.parent.name != "model_checkpoint":
        raise ValueError(f"no checkpoint folder at {path}")
    raise ValueError(f"no checkpoint at {path}: materialize {artifact_name('model_checkpoint', size)} "
                     f"first (`make run SIZE={size}`, or Materialize it in the web UI)")


def load(path: Path) -> tuple[Any, Any, str]:
    """Model, tokenizer and device, after the integrity check (a damaged folder names its bad file)."""
    from transformers.utils import logging

    from exp1_assets.evaluation.job_common import load_checkpoint, resolve_device

    logging.disable_progress_bar()  # a "Loading weights" bar would interleave with the chat
    device = resolve_device("auto")
    # load_checkpoint runs verify_checkpoint, then plain AutoModelForCausalLM/AutoTokenizer.from_pretrained.
    model, tokenizer = load_checkpoint(str(path), device=device)
    return model, tokenizer, device


def prompt_ids(chat: Chat) -> Any:
    """The rendered conversation as ids; the oldest exchanges go when it outgrows the model."""
    from exp1_assets.evaluation.generation import prompt_budget

    budget = prompt_budget(chat.model, max_new_tokens=chat.max_new_tokens)
    first = 1 if chat.system else 0  # the system message always stays
    while True:
        text = chat.tokenizer.apply_chat_template(chat.history, tokenize=False, add_generation_prompt=True)
        ids = chat.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        if ids.shape[1] <= budget:
            return ids.to(chat.model.device)
        if len(chat.history) - first <= 1:
            raise TooLong(f"this message is {ids.shape[1]} tokens; with --max-new-tokens "
                          f"{chat.max_new_tokens} the model reads at most {budget}")
        del chat.history[first:first + 2]  # one user/assistant exchange
        print(f"(forgot the oldest exchange: the model reads at most {budget} tokens)", flush=True)


def reply(chat: Chat) -> str:
    """Generate the assistant's turn for the history, streaming it to stdout as it comes."""
    import torch
    from transformers import TextStreamer

    from exp1_assets.evaluation.generation import end_of_turn_id

    ids = prompt_ids(chat)
    sampling: dict[str, Any] = {"do_sample": False}
    if chat.temperature > 0:  # plain temperature sampling: no top-k/top-p cut from the config's defaults
        sampling = {"do_sample": True, "temperature": chat.temperature, "top_k": 0, "top_p": 1.0}
    streamer = TextStreamer(chat.tokenizer, skip_prompt=True, skip_special_tokens=True)
    with torch.inference_mode():
        out = chat.model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=chat.max_new_tokens,
            eos_token_id=end_of_turn_id(chat.tokenizer),  # the end of a ChatML turn, whatever the config says
            pad_token_id=chat.tokenizer.pad_token_id, streamer=streamer, **sampling)
    # What the history keeps is what the template will render next turn: trimmed, specials dropped.
    return chat.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()


def setup(argv: list[str] | None) -> Chat:
    import torch

    from exp1_assets.evaluation.generation import prompt_budget

    args = parse_args(argv)
    path = checkpoint_folder(args)
    model, tokenizer, device = load(path)
    prompt_budget(model, max_new_tokens=args.max_new_tokens)  # raises now if no prompt would fit
    torch.manual_seed(args.seed)
    chat = Chat(model=model, tokenizer=tokenizer, max_new_tokens=args.max_new_tokens,
                temperature=args.temperature, system=args.system)
    chat.reset()
    params = sum(p.numel() for p in model.parameters())
    decoding = f"temperature {args.temperature}, seed {args.seed}" if args.temperature > 0 else "greedy"
    print(f"{path.resolve()} | {params / 1e6:.2f}M params | {device} | {decoding} | {COMMANDS}", flush=True)
    return chat


def loop(chat: Chat) -> None:
    """Read a line, answer it; until /quit or end of input."""
    while True:
        try:
            line = input(PROMPT).strip()
        except EOFError:  # Ctrl-D at an empty prompt, or the end of piped input
            print()
            return
        except KeyboardInterrupt:  # at the prompt, Ctrl-C clears the line, as in a shell
            print()
            continue
        if not line:
            continue
        if line == "/quit":
            return
        if line == "/reset":
            chat.reset()
            print("(conversation cleared)")
            continue
        if line.startswith("/") and " " not in line:  # a mistyped command is not a message
            print(f"(unknown command {line}: {COMMANDS})")
            continue
        chat.history.append({"role": "user", "content": line})
        try:
            chat.history.append({"role": "assistant", "content": reply(chat)})
        except KeyboardInterrupt:
            chat.history.pop()  # half a reply would skew every later turn: forget the exchange
            print("\n(stopped)", flush=True)
        except TooLong as error:
            chat.history.pop()
            print(f"({error})", flush=True)


def main(argv: list[str] | None = None) -> int:
    # Python keeps SIGINT ignored if its parent ignored it (nohup, `trap '' INT`): Ctrl-C must still stop a reply.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with contextlib.suppress(ImportError):
        import readline  # noqa: F401  (line editing and up-arrow history at the prompt)
    try:
        chat = setup(argv)
    except ValueError as error:  # missing or damaged checkpoint, a bad setting: say which, no traceback
        print(f"chat: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    loop(chat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
