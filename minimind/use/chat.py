"""Talk to a checkpoint: `ChatSession` (history, template, streamed reply, `<think>` split apart, tools it may
call), the terminal chat (`minimind chat CKPT [--tools SPEC]`) and a notebook widget (`chat_widget`). Streaming
hands out whole characters only (`StreamDecoder`) and holds back a tag that may be cut in two, `</th` + `ink>`
(`ThinkSplitter`).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Iterator, Optional

import torch

from ..data.tokenizer import TOOL_TEMPLATES
from ..data.tools import ToolCall, ToolCallSplitter, partial_suffix
from ..model.tools import Episode, ToolBox, tool_turns

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


class StreamDecoder:
    """Token ids in, text out, whole characters only (a byte-level token can end mid-character): the decode of
    ids[prefix:] minus that of ids[prefix:read], released once it does not end in U+FFFD (as TextStreamer does)."""

    def __init__(self, tokenizer, skip_special_tokens: bool = True):
        self.tokenizer, self.skip = tokenizer, skip_special_tokens
        self.ids: list[int] = []
        self.prefix = self.read = 0

    def _decode(self, ids) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip)

    def push(self, token_id: int) -> str:
        self.ids.append(int(token_id))
        before = self._decode(self.ids[self.prefix:self.read])
        now = self._decode(self.ids[self.prefix:])
        if (len(now) > len(before) and not now.endswith("\ufffd")) or len(self.ids) - self.read >= 8:
            # released; after 8 tokens without a whole character the bytes are invalid: show them anyway
            text = now[len(before):]
            self.prefix, self.read = self.read, len(self.ids)
            return text
        return ""

    def flush(self) -> str:
        """What is left at the end (an incomplete character decodes as U+FFFD: better shown than lost)."""
        if self.read == len(self.ids):
            return ""
        before = self._decode(self.ids[self.prefix:self.read])
        now = self._decode(self.ids[self.prefix:])
        self.prefix = self.read = len(self.ids)
        return now[len(before):] if now.startswith(before) else now


class ThinkSplitter:
    """Split a text stream into ("reasoning", text) and ("content", text) pieces at <think> / </think>, dropping the
    template's newlines at the tags. in_think=True: the prompt already opened <think>."""

    def __init__(self, in_think: bool = False):
        self.in_think = in_think
        self.buf = ""
        self.strip_lead = in_think
        self.reasoning, self.content = "", ""

    def _emit(self, text: str, out: list):
        if self.strip_lead:
            text = text.lstrip("\n")
            if not text:
                return
            self.strip_lead = False
        kind = "reasoning" if self.in_think else "content"
        if kind == "reasoning":
            self.reasoning += text
        else:
            self.content += text
        if out and out[-1][0] == kind:
            out[-1] = (kind, out[-1][1] + text)
        else:
            out.append((kind, text))

    def push(self, text: str) -> list[tuple[str, str]]:
        self.buf += text
        out: list[tuple[str, str]] = []
        while True:
            # inside reasoning, look for </think>; outside, for <think> (a stray </think> is dropped)
            tags = [THINK_CLOSE] if self.in_think else [THINK_OPEN, THINK_CLOSE]
            hits = [(self.buf.find(t), t) for t in tags if t in self.buf]
            if not hits:
                keep = partial_suffix(self.buf, tags)
                ready, self.buf = self.buf[:len(self.buf) - keep], self.buf[len(self.buf) - keep:]
                if ready:
                    self._emit(ready, out)
                return out
            i, tag = min(hits)
            if self.buf[:i]:
                self._emit(self.buf[:i], out)
            self.buf = self.buf[i + len(tag):]
            if tag == THINK_OPEN or self.in_think:
                self.in_think = tag == THINK_OPEN
                self.strip_lead = True

    def flush(self) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        if self.buf:
            self._emit(self.buf, out)
            self.buf = ""
        return out

    @property
    def reasoning_text(self) -> str:
        return self.reasoning.strip("\n")

    @property
    def content_text(self) -> str:
        return self.content.strip()


class StopChecker:
    """Cut a text stream at the first of a few stop strings, holding back what might become one."""

    def __init__(self, stops: Optional[list[str]] = None):
        self.stops = [s for s in (stops or []) if s]
        self.buf = ""
        self.stopped = False

    def push(self, text: str) -> str:
        if self.stopped:
            return ""
        if not self.stops:
            return text
        self.buf += text
        hits = [(self.buf.find(s), s) for s in self.stops if s in self.buf]
        if hits:
            i = min(hits)[0]
            out, self.buf, self.stopped = self.buf[:i], "", True
            return out
        keep = partial_suffix(self.buf, self.stops)
        out, self.buf = self.buf[:len(self.buf) - keep], self.buf[len(self.buf) - keep:]
        return out

    def flush(self) -> str:
        out, self.buf = ("" if self.stopped else self.buf), ""
        return out


@dataclass
class Reply:
    content: str = ""
    reasoning: str = ""
    finish_reason: str = "stop"       # "stop" (EOS or a stop string) or "length" (max_new_tokens)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    truncated_messages: int = 0       # old turns dropped to fit the context
    tool_results: list = field(default_factory=list)  # (ToolCall, or None for a broken call; result text)
    out_of_tool_turns: bool = False   # the model still called tools when max_tool_turns model turns had passed


@dataclass
class GenerationSettings:
    max_new_tokens: int = 256
    temperature: float = 0.7          # 0: greedy
    top_p: float = 0.9
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: Optional[int] = None
    stop: list = field(default_factory=list)


def stream_text(model, tokenizer, prompt_ids: list[int], settings: GenerationSettings,
                reply: Optional[Reply] = None) -> Iterator[str]:
    """Generate from prompt_ids and yield decoded text pieces (whole characters), honouring stop strings.
    Fills `reply` (token counts, finish reason, time) as it goes."""
    reply = reply if reply is not None else Reply()
    reply.prompt_tokens = len(prompt_ids)
    start = time.perf_counter()
    sample = settings.temperature > 0
    generator = None
    if settings.seed is not None:
        generator = torch.Generator(device=model.device).manual_seed(int(settings.seed))
    ids = torch.tensor([prompt_ids], dtype=torch.long, device=model.device)  # (1, P)
    room = model.config.max_position_embeddings - len(prompt_ids)
    max_new = max(0, min(settings.max_new_tokens, room))
    decoder, stops = StreamDecoder(tokenizer), StopChecker(settings.stop)
    eos = tokenizer.eos_token_id
    reply.finish_reason = "length"
    steps = model.stream_generate(ids, max_new_tokens=max_new, do_sample=sample,
                                  temperature=settings.temperature if sample else 1.0,
                                  top_p=settings.top_p if sample else 1.0, top_k=settings.top_k if sample else 0,
                                  repetition_penalty=settings.repetition_penalty, eos_token_id=eos,
                                  generator=generator)
    try:
        for token in steps:
            t = int(token[0])  # token: (1,)
            reply.completion_tokens += 1
            if t == eos:
                reply.finish_reason = "stop"
                break
            piece = stops.push(decoder.push(t))
            if piece:
                yield piece
            if stops.stopped:
                reply.finish_reason = "stop"
                break
        else:
            if reply.completion_tokens < max_new:  # ended early for another reason
                reply.finish_reason = "stop"
        if not stops.stopped:
            tail = stops.push(decoder.flush()) + stops.flush()
            if tail:
                yield tail
    finally:
        steps.close()
        reply.seconds = time.perf_counter() - start


class ChatSession:
    """A conversation: history, chat template, streamed reply; the oldest turns go when the context is full.
    enable_thinking: None (template adds nothing), True (prompt opens <think>), False (an empty think block).
    tools: a ToolBox the model may call (an empty one is none); a user turn is then an episode of up to
    max_tool_turns model turns, each call run and its result shown to the model, until it answers."""

    def __init__(self, model, tokenizer, system: Optional[str] = None, enable_thinking: Optional[bool] = None,
                 tools: Optional[ToolBox] = None, max_tool_turns: int = 4, **settings):
        self.model, self.tokenizer = model.eval(), tokenizer
        self.system, self.enable_thinking = system, enable_thinking
        self.tools = tools if tools is not None and tools.tools else None
        if self.tools is not None:
            template = getattr(tokenizer, "template", "minimind")
            if template not in TOOL_TEMPLATES:
                raise ValueError(f"this checkpoint's chat template ({template!r}, the course's) cannot show the "
                                 "model tools: chat with tools needs a checkpoint trained with the minimind3 "
                                 "template (e.g. chapter 14's; `minimind tokenizer train --template minimind3`), "
                                 "or MiniMind's own (jingyaogong/minimind-3)")
        if max_tool_turns < 1:
            raise ValueError(f"max_tool_turns is {max_tool_turns}: the model needs at least one turn")
        self.max_tool_turns = max_tool_turns
        self.settings = GenerationSettings(**settings)
        self.history: list[dict] = []
        self.last: Optional[Reply] = None

    def reset(self) -> None:
        self.history = []
        self.last = None

    def messages(self, user: Optional[str] = None) -> list[dict]:
        msgs = ([{"role": "system", "content": self.system}] if self.system else []) + list(self.history)
        if user is not None:
            msgs.append({"role": "user", "content": user})
        return msgs

    def stream(self, user: str, **overrides) -> Iterator[tuple[str, object]]:
        """Yield ("reasoning" | "content", text) pieces of the reply and, with tools, ("tool", (call, result))
        for each call run (call None for a broken one, its result "error: ..."); the turn joins the history
        at the end. Text the model writes around its calls streams as content; the calls themselves do not."""
        settings = GenerationSettings(**{**self.settings.__dict__, **overrides})
        episode, total = Episode([{"role": "user", "content": user}]), Reply()
        for _ in tool_turns([episode], self.max_tool_turns if self.tools else 1):
            reply, calls, problems = yield from self._model_turn(self.messages() + episode.messages, settings,
                                                                 keep=len(episode.messages))
            _add_up(total, reply)
            # the calls run on the last turn too: the user sees what the model asked for
            for call, result in episode.model_turn(self.tools, reply.content, calls, problems,
                                                   reasoning=reply.reasoning):
                yield "tool", (call, result)
        last = episode.messages[-1] if episode.ended == "answer" else {}
        total.content, total.reasoning = episode.answer, last.get("reasoning_content", "")
        total.tool_results, total.out_of_tool_turns = episode.results, episode.ended == "max_turns"
        self.last = total
        self.history += episode.messages

    def _model_turn(self, msgs: list[dict], settings: GenerationSettings, keep: int):
        """One generation, streamed as ("reasoning" | "content", text); returns (reply, its calls, the problems
        of blocks that were not calls), the reply's content the text outside calls. Calls are parsed only when
        there are tools."""
        schemas = self.tools.schemas() if self.tools else None
        prompt, dropped = fit_prompt(self.tokenizer, msgs, self.model.config.max_position_embeddings,
                                     min(settings.max_new_tokens, 64), self.enable_thinking, tools=schemas,
                                     keep=keep)
        reply = Reply(truncated_messages=dropped)
        thinking = ThinkSplitter(in_think=self.enable_thinking is True)
        splitter = ToolCallSplitter() if self.tools else None
        content: list[str] = []

        def pieces(parts):
            for kind, text in parts:
                for kind2, piece in (splitter.push(text) if kind == "content" and splitter else [(kind, text)]):
                    if kind2 == "content":
                        content.append(piece)
                    if kind2 != "call":  # the calls go out as ("tool", ...) once they have run
                        yield kind2, piece

        for text in stream_text(self.model, self.tokenizer, prompt, settings, reply):
            yield from pieces(thinking.push(text))
        yield from pieces(thinking.flush())
        if splitter:
            for _, piece in splitter.flush():  # an unclosed <tool_call>: shown as the text it is
                content.append(piece)
                yield "content", piece
        reply.content, reply.reasoning = "".join(content).strip(), thinking.reasoning_text
        return reply, (splitter.calls if splitter else []), (splitter.problems if splitter else [])

    def ask(self, user: str, **overrides) -> str:
        """The whole reply's answer (reasoning is in .last.reasoning, tool calls in .last.tool_results)."""
        for _ in self.stream(user, **overrides):
            pass
        return self.last.content


def _add_up(total: Reply, turn: Reply) -> None:
    """Count one model turn into the episode's reply (the last turn's prompt and finish reason)."""
    total.prompt_tokens, total.finish_reason = turn.prompt_tokens, turn.finish_reason
    total.completion_tokens += turn.completion_tokens
    total.seconds += turn.seconds
    total.truncated_messages = max(total.truncated_messages, turn.truncated_messages)


def format_tool_result(call: Optional[ToolCall], result: str, limit: int = 200) -> str:
    """`[lookup(name="Zorin", fact="house") -> {"house": 12}]`; a broken call (None) shows its error alone."""
    if len(result) > limit:
        result = result[:limit] + "..."
    if call is None:
        return f"[tool call not understood -> {result}]"
    args = ", ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in call.arguments.items())
    return f"[{call.name}({args}) -> {result}]"


def fit_prompt(tokenizer, messages: list[dict], context: int, reserve: int,
               enable_thinking: Optional[bool] = None, *, tools: Optional[list] = None,
               keep: int = 1) -> tuple[list[int], int]:
    """(prompt ids, messages dropped): the oldest non-system messages go (with the tool results that followed
    them) until `reserve` tokens are left for the reply; the last `keep` messages always stay. tools: schemas
    for the template. ValueError if what must stay does not fit."""
    msgs = list(messages)
    dropped = 0
    extra = {"tools": tools} if tools else {}
    while True:
        ids = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True,
                                            enable_thinking=enable_thinking, **extra)
        if len(ids) + reserve <= context:
            return ids, dropped
        first = next((i for i, m in enumerate(msgs) if m["role"] != "system"), None)
        if first is None or first >= len(msgs) - keep:
            raise ValueError(f"the prompt is {len(ids)} tokens; with {reserve} tokens for the reply it does not "
                             f"fit the model's context of {context} tokens: shorten the message")
        msgs.pop(first)
        dropped += 1
        while first < len(msgs) - keep and msgs[first]["role"] == "tool":  # results whose call is gone
            msgs.pop(first)
            dropped += 1


# -- terminal ----------------------------------------------------------------------------------------------
DIM, RESET = "\033[2m", "\033[0m"
HELP = ("commands: /reset (forget the conversation), /think (show or hide reasoning), /exit (or Ctrl-D)")


def terminal_chat(model, tokenizer, show_thinking: bool = True, input_fn=None, print_fn=None,
                  color: Optional[bool] = None, **session_kwargs) -> ChatSession:
    """A read-eval-print chat loop: the reply streams as it is generated; reasoning in dim text, and with tools
    each call and its result on a dim line of its own (`[add(a=2, b=3) -> 5]`) before the answer."""
    import sys
    input_fn, print_fn = input_fn or input, print_fn or print
    session = ChatSession(model, tokenizer, **session_kwargs)
    if color is None:
        color = sys.stdout.isatty()
    dim, reset = (DIM, RESET) if color else ("", "")
    tools = f" Tools: {', '.join(session.tools.tools)}." if session.tools else ""
    print_fn(f"MiniMind chat ({model.num_parameters() / 1e6:.1f}M parameters).{tools} {HELP}")
    while True:
        try:
            line = input_fn(">>> ")
        except (EOFError, KeyboardInterrupt):
            print_fn("")
            break
        line = line.strip()
        if not line:
            continue
        if line in ("/exit", "/quit"):
            break
        if line == "/reset":
            session.reset()
            print_fn("(conversation reset)")
            continue
        if line == "/think":
            show_thinking = not show_thinking
            print_fn(f"(reasoning {'shown' if show_thinking else 'hidden'})")
            continue
        if line in ("/help", "/?"):
            print_fn(HELP)
            continue
        kind_now, after_tool_line, before = None, False, session.last
        try:
            for kind, piece in session.stream(line):
                if kind == "reasoning" and not show_thinking:
                    continue
                if kind == "tool":  # a line of its own; what follows starts a new one
                    if kind_now is not None:
                        print_fn(reset + "\n", end="", flush=True)
                    print_fn(dim + format_tool_result(*piece) + reset, flush=True)
                    kind_now, after_tool_line = None, True
                    continue
                if kind != kind_now:
                    if kind_now is not None:
                        print_fn(reset + "\n", end="", flush=True)
                    if kind == "reasoning":
                        print_fn(dim + "[thinking] ", end="", flush=True)
                    kind_now = kind
                print_fn(piece, end="", flush=True)
                after_tool_line = False
        except KeyboardInterrupt:  # stop this reply, keep the chat
            print_fn(" [interrupted]", end="")
            after_tool_line = False
        except ValueError as err:  # e.g. the conversation no longer fits the context
            print_fn(("\n" if kind_now else "") + reset + f"(error: {err})")
            continue
        if not after_tool_line:  # end the reply's line
            print_fn(reset if kind_now == "reasoning" else "")
        last = session.last if session.last is not before else None  # None: this turn did not finish
        if last is not None and last.out_of_tool_turns:
            print_fn(f"(no answer: the model was still calling tools after {session.max_tool_turns} turns)")
        if last is not None and last.truncated_messages:
            print_fn(f"(dropped {last.truncated_messages} old messages to fit the context)")
    return session


# -- notebook widget ---------------------------------------------------------------------------------------
def _html_escape(text: str) -> str:
    import html
    return html.escape(text).replace("\n", "<br>")


class ChatWidget:
    """An ipywidgets chat (transcript, input box, temperature and top-p sliders, reasoning toggle); the reply
    streams in token by token. Show it as a cell's last value, or `display(ChatWidget(...).widget)`."""

    def __init__(self, model, tokenizer, **session_kwargs):
        import ipywidgets as w
        self.session = ChatSession(model, tokenizer, **session_kwargs)
        s = self.session.settings
        self.transcript = w.HTML(value="", layout=w.Layout(min_height="120px", max_height="400px",
                                                           overflow_y="auto", border="1px solid #ccc",
                                                           padding="6px"))
        self.text = w.Text(placeholder="Ask something, press Enter", layout=w.Layout(width="70%"))
        self.send = w.Button(description="Send", button_style="primary")
        self.reset_button = w.Button(description="Reset")
        self.temperature = w.FloatSlider(value=s.temperature, min=0.0, max=2.0, step=0.05, description="temperature")
        self.top_p = w.FloatSlider(value=s.top_p, min=0.05, max=1.0, step=0.05, description="top-p")
        self.max_tokens = w.IntSlider(value=s.max_new_tokens, min=8, max=1024, step=8, description="max tokens")
        self.show_thinking = w.Checkbox(value=True, description="show reasoning")
        self.status = w.Label(value="")
        self.turns: list[str] = []
        self.text.continuous_update = False
        self.text.observe(self._on_change, names="value")
        self.send.on_click(lambda _: self.submit())
        self.reset_button.on_click(lambda _: self.reset())
        self.widget = w.VBox([self.transcript, w.HBox([self.text, self.send, self.reset_button]),
                              w.HBox([self.temperature, self.top_p]), w.HBox([self.max_tokens, self.show_thinking]),
                              self.status])

    def _ipython_display_(self):
        from IPython.display import display
        display(self.widget)

    def _on_change(self, change):
        if change["new"].strip():
            self.submit()

    def _render(self, pending: str = "") -> None:
        self.transcript.value = "".join(self.turns) + pending

    def reset(self) -> None:
        self.session.reset()
        self.turns = []
        self._render()
        self.status.value = "conversation reset"

    def submit(self, message: Optional[str] = None) -> str:
        """Send a message (the input box's text by default) and stream the reply into the transcript."""
        message = (message if message is not None else self.text.value).strip()
        if not message:
            return ""
        self.text.unobserve(self._on_change, names="value")
        self.text.value = ""
        self.text.observe(self._on_change, names="value")
        self.turns.append(f"<div><b>you:</b> {_html_escape(message)}</div>")
        reasoning, content = "", ""
        self.status.value = "generating..."
        try:
            for kind, text in self.session.stream(message, temperature=self.temperature.value,
                                                  top_p=self.top_p.value, max_new_tokens=self.max_tokens.value):
                if kind == "reasoning":
                    reasoning += text
                elif kind == "tool":
                    content += ("\n" if content else "") + format_tool_result(*text) + "\n"
                else:
                    content += text
                self._render(self._bubble(reasoning, content))
        except ValueError as err:
            self.status.value = f"error: {err}"
            self._render()
            return ""
        self.turns.append(self._bubble(reasoning, content))
        self._render()
        r = self.session.last
        self.status.value = (f"{r.completion_tokens} tokens in {r.seconds:.2f}s "
                             f"({r.completion_tokens / max(r.seconds, 1e-9):.1f} tokens/s), finish: {r.finish_reason}")
        return r.content

    def _bubble(self, reasoning: str, content: str) -> str:
        think = ""
        if reasoning and self.show_thinking.value:
            think = f"<div style='color:#888'><i>thinking:</i> {_html_escape(reasoning)}</div>"
        return f"<div><b>MiniMind:</b> {think}{_html_escape(content)}</div>"


def chat_widget(model, tokenizer, **session_kwargs) -> ChatWidget:
    """A chat widget for a notebook cell (see ChatWidget)."""
    return ChatWidget(model, tokenizer, **session_kwargs)
