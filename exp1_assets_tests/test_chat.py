"""`make chat` / `python -m exp1_assets.evaluation.chat`, driven through a terminal as a person uses it.

The chat runs on a pseudo-terminal (`pty.fork`: the pty is its controlling terminal, so typing
Ctrl-C sends SIGINT and Ctrl-D ends input, exactly as in a real terminal); the test types lines and
reads what appears on the screen. Each streamed reply must equal what plain `model.generate`
(greedy, eos `<|im_end|>`) gives for the same history, which a test computes from the checkpoint
itself: the second turn's expected reply from the two-turn history.
"""

from __future__ import annotations

import fcntl
import functools
import os
import pty
import re
import select
import shutil
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path
from typing import Any

import pytest

from exp1_assets.evaluation.chat import PROMPT
from exp1_assets_tests._training_data import conversations, render
from exp1_assets_tests.dagster_dev import BIN, REPO
from exp1_assets_tests.eval_tiny_model import make_checkpoint

MAX_NEW_TOKENS = 40
# Escape sequences readline writes on an xterm (bracketed paste on/off, keypad mode): not text.
ESCAPES = re.compile(r"\x1b(\[[0-9;?]*[A-Za-z]|[=>])")


class Terminal:
    """A command on a pseudo-terminal: type into it, read its screen output, wait for its exit."""

    def __init__(self, argv: list[str], *, env: dict[str, str]) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: the pty is its stdin/stdout/stderr and controlling terminal
            os.chdir(REPO)
            os.execvpe(argv[0], argv, env)
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 200, 0, 0))  # wide: no wrapping
        self.screen = ""  # everything read so far, escapes removed, line ends as "\n"
        self.seen = 0  # how much of it `expect` has returned
        self.exit_code: int | None = None

    def type(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def read_some(self, timeout: float) -> bool:
        """Read what is there (waiting up to `timeout`); False once the child closed the terminal."""
        if not select.select([self.fd], [], [], timeout)[0]:
            return True
        try:
            data = os.read(self.fd, 65536)
        except OSError:  # EIO: the child exited and the terminal's other end is gone
            data = b""
        if not data:
            return False
        self.screen += ESCAPES.sub("", data.decode(errors="replace")).replace("\r\n", "\n").replace("\r", "")
        return True

    def expect(self, marker: str, *, timeout: float = 60) -> str:
        """The output up to and including the next `marker` (since the last call)."""
        deadline = time.monotonic() + timeout
        while (at := self.screen.find(marker, self.seen)) < 0:
            if time.monotonic() > deadline or not self.read_some(max(0.0, min(0.2, deadline - time.monotonic()))):
                raise AssertionError(f"no {marker!r} on the screen; it shows:\n{self.screen[self.seen:]}")
        start, self.seen = self.seen, at + len(marker)
        return self.screen[start:self.seen]

    def wait(self, *, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.read_some(0.1)  # drain, or a child writing to a full terminal would never exit
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.exit_code = os.waitstatus_to_exitcode(status)
                return self.exit_code
        raise AssertionError(f"still running after {timeout}s; the screen shows:\n{self.screen[self.seen:]}")

    def close(self) -> None:
        if self.exit_code is None:  # a failed test: don't leave the child behind
            os.kill(self.pid, 9)
            os.waitpid(self.pid, 0)
        os.close(self.fd)


def chat_env(exp1_home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAKE", "MFLAGS"))}
    # CPU like the reference `generate` here (a GPU may pick another argmax on a near tie); one
    # thread: the tiny model gains nothing from two, and the machine may be busy with others.
    return env | {"EXP1_HOME": str(exp1_home), "TERM": "xterm", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


def train(folder: Path, *, steps: int) -> None:
    """A few dozen steps on templated arithmetic and word reversal: enough to answer in form and stop."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from exp1_assets.training.integrity import write_manifest

    model, tokenizer = AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    rows = [render(tokenizer, chat) for chat in conversations(count=32 * steps, seed=2)]
    width = max(len(ids) for ids, _ in rows)
    ids = torch.tensor([i + [tokenizer.pad_token_id] * (width - len(i)) for i, _ in rows])
    labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in rows])
    mask = (ids != tokenizer.pad_token_id).long()
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on 2 busy shared cores, one thread trained this 4x faster than two
    try:
        for step in range(steps):
            batch = slice(32 * step, 32 * step + 32)
            model(input_ids=ids[batch], attention_mask=mask[batch], labels=labels[batch]).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    finally:
        torch.set_num_threads(threads)
    model.save_pretrained(folder)
    write_manifest(folder)  # as training does: the chat verifies it before loading


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An EXP1_HOME whose model_checkpoint/tiny is a small trained ChatML model."""
    home = tmp_path_factory.mktemp("chat_home")
    train(make_checkpoint(home / "model_checkpoint" / "tiny"), steps=60)
    return home


@functools.cache
def load(folder: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)


def greedy_reply(folder: Path, history: list[dict[str, str]]) -> tuple[str, bool]:
    """What plain `model.generate` answers to `history` (greedy), and whether it ended at <|im_end|>."""
    model, tokenizer = load(folder)
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    text = tokenizer.apply_chat_template(history, tokenize=False, add_generation_prompt=True)
    inputs = tokenizer(text, add_special_tokens=False, return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False, eos_token_id=end,
                         pad_token_id=tokenizer.pad_token_id)
    new = out[0, inputs["input_ids"].shape[1]:]
    return tokenizer.decode(new, skip_special_tokens=True), int(new[-1]) == end


def ask(terminal: Terminal, question: str) -> str:
    """Type a question, return the reply as the screen shows it (between the echo and the next prompt)."""
    terminal.type(question + "\n")
    screen = terminal.expect(PROMPT)
    assert screen.startswith(question + "\n"), screen
    return screen[len(question) + 1:-len(PROMPT)]


def test_two_turns_through_make_chat_stream_what_generate_gives(home: Path) -> None:
    folder = home / "model_checkpoint" / "tiny"
    first, second = "What is 3 plus 4?", "Reverse the word cat."
    reply_1, stopped_1 = greedy_reply(folder, [{"role": "user", "content": first}])
    # The chat keeps each reply trimmed in the history, as the template will render it.
    history = [{"role": "user", "content": first}, {"role": "assistant", "content": reply_1.strip()},
               {"role": "user", "content": second}]
    reply_2, stopped_2 = greedy_reply(folder, history)
    alone, _ = greedy_reply(folder, history[2:])
    assert stopped_1 and stopped_2, "the trained model should end its turns at <|im_end|>: train longer"
    assert reply_2 != alone, "pick questions whose answer depends on the first turn"

    terminal = Terminal(["make", "--no-print-directory", "chat", "SIZE=tiny", f"BIN={BIN}",
                         f"CHAT_ARGS=--max-new-tokens {MAX_NEW_TOKENS}"], env=chat_env(home))
    try:
        header = terminal.expect(PROMPT)
        assert f"{folder} | " in header and "M params | cpu | greedy" in header, header
        assert ask(terminal, first) == reply_1 + "\n"
        assert ask(terminal, second) == reply_2 + "\n"  # conditioned on the first exchange
        terminal.type("\n")  # an empty line: nothing generated, a new prompt
        assert terminal.expect(PROMPT) == "\n" + PROMPT
        assert ask(terminal, "/reset") == "(conversation cleared)\n"
        assert ask(terminal, second) == alone + "\n"  # the first exchange is forgotten
        terminal.type("/quit\n")
        assert terminal.wait() == 0
    finally:
        terminal.close()


def test_ctrl_c_stops_a_reply_and_ctrl_d_exits(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer

    folder = make_checkpoint(tmp_path / "model_checkpoint" / "tiny")  # untrained: it rambles
    # Zero <|im_end|>'s (tied) embedding row: its logit is always 0, below the random model's
    # maximum, so greedy decoding never stops and Ctrl-C surely lands mid-reply.
    weights = load_file(folder / "model.safetensors")
    weights["transformer.wte.weight"][AutoTokenizer.from_pretrained(folder).convert_tokens_to_ids("<|im_end|>")] = 0
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})

    terminal = Terminal([sys.executable, "-m", "exp1_assets.evaluation.chat", "--checkpoint", str(folder),
                         "--max-new-tokens", "400"], env=chat_env(tmp_path))
    try:
        terminal.expect(PROMPT)
        terminal.type("hello\n")
        terminal.expect("hello\n")
        deadline = time.monotonic() + 60
        while len(terminal.screen) == terminal.seen:  # wait until the reply has started streaming
            assert terminal.read_some(0.1) and time.monotonic() < deadline, terminal.screen
        terminal.type("\x03")  # Ctrl-C, as the keyboard sends it
        assert terminal.expect(PROMPT).endswith("^C\n(stopped)\n" + PROMPT)  # back at the prompt, alive
        terminal.type("\x04")  # Ctrl-D on an empty line: end of input
        assert terminal.wait() == 0
    finally:
        terminal.close()


def test_make_chat_without_a_checkpoint_says_to_run_make_run(tmp_path: Path) -> None:
    proc = subprocess.run(["make", "--no-print-directory", "chat", "SIZE=tiny", f"BIN={BIN}"], cwd=REPO,
                          env=chat_env(tmp_path), capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    missing = tmp_path / "model_checkpoint" / "tiny"
    assert (f"chat: no checkpoint at {missing}: materialize model_checkpoint[tiny] first "
            f"(`make run SIZE=tiny`, or Materialize it in the web UI)") in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_damaged_checkpoint_names_the_bad_file(home: Path, tmp_path: Path) -> None:
    damaged = tmp_path / "model_checkpoint" / "tiny"
    shutil.copytree(home / "model_checkpoint" / "tiny", damaged)
    weights = damaged / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # a save cut short
    proc = subprocess.run([sys.executable, "-m", "exp1_assets.evaluation.chat", "--checkpoint", str(damaged)],
                          cwd=REPO, env=chat_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert f"chat: damaged checkpoint: {weights}: truncated" in proc.stderr, proc.stderr
    assert "rematerialize model_checkpoint[tiny]" in proc.stderr and "Traceback" not in proc.stderr
