"""Chapter 14's corpus: the town register (facts that only the lookup tool knows), tool-call SFT conversations,
and tool tasks with their answers (held-out ones, and RL prompts in other words)."""
from __future__ import annotations

import json
import random

from .corpus_text import _msg, _sft_dialogue, _Writer
from .corpus_world import EN, LEXICONS, SIZES, VAL_FRACTION, Fact, World, _names, _split_val

TOOL_FILES = ["tool_sft", "tool_sft_val", "tool_eval", "tool_rl", "tool_rl_val"]


def _tool_files(world, spec, lex, writer, sft_facts, seed, size, lang) -> tuple[dict, dict]:
    """Chapter 14's files: tool-call SFT conversations, held-out tool tasks (register facts no training file
    asks, sums never asked), agent RL prompts in other words and their held-out set; and the register."""
    from .tools import course_tool_schemas
    registry = build_registry(world, seed, size, lang)
    schemas = course_tool_schemas()
    train, held = registry_pairs(registry, "sft"), registry_pairs(registry, "heldout")
    strangers = registry_pairs(registry, "strangers")
    w = writer("tool_eval")
    tool_eval = _tool_tasks(w, registry, held, schemas, None, rl=False, sums=set())
    # the held-out sums, either way round ("Take b from a" names b first)
    asked = {pair for r in tool_eval if r["kind"] == "sum" for pair in (_sum_of(r), _sum_of(r)[::-1])}
    w = writer("tool_sft")
    n = int(spec["tool_sft"] * (1 + VAL_FRACTION))
    dialogues = [_tool_dialogue(w, registry, train, strangers, sft_facts, schemas, asked) for _ in range(n)]
    tool_sft, tool_sft_val = _split_val([{"conversations": c} for c in dialogues])
    w = writer("tool_rl")
    # about the world's people only: RL is to teach which tool and which fact a new wording asks for, a choice
    # that transfers; strangers' names add the copying of unseen names, which sparse rewards teach far too slowly
    tool_rl = _tool_tasks(w, registry, train, schemas, spec["tool_rl"], rl=True, sums=asked)
    tool_rl_val = _tool_tasks(w, registry, held, schemas, None, rl=True, sums=asked)
    return dict(tool_sft=tool_sft, tool_sft_val=tool_sft_val, tool_eval=tool_eval, tool_rl=tool_rl,
                tool_rl_val=tool_rl_val), registry


def _sum_of(record: dict) -> tuple:
    """(a, b) of a sum task's question: the numbers it names."""
    import re
    return tuple(int(x) for x in re.findall(r"\d+", record["conversations"][-1]["content"]))



def build_registry(world: World, seed: int = 0, size: str = "small", lang: str = "en") -> dict:
    """The town register (chapter 14's lookup tool): for each of the world's people, facts that no text of the
    corpus mentions (house number, weight, shoe size) and their age. One of each person's three register facts
    is held out ("heldout": {name: fact}): asked only in the held-out tool tasks, so a right answer there was read
    from the tool, never remembered. The register also lists many strangers (people of no text), whom the tool
    SFT data asks about: each once or twice, so that SFT teaches reading the answer, not remembering it."""
    lex, rng = LEXICONS[lang], random.Random(f"registry-{seed}")

    def entry(age: int) -> dict:
        return dict(age=age, house=rng.randint(2, 69), weight=rng.randint(40, 69), shoe=rng.randint(35, 46))
    people = {p["name"]: entry(int(p["age"])) for p in world.people}
    names = sorted(people)
    rng.shuffle(names)
    facts = list(lex["tool_ask"])
    taken = set(people) | {p["pet"] for p in world.people}
    taken |= {v for p in world.places for v in (p["place"], p["river"], p["hill"])}
    taken |= {w.capitalize() for w in _words(lex)}  # no stranger called "Take"
    strangers = _names(rng, lex, SIZES[size]["strangers"], 2, taken)
    return dict(people={**people, **{n: entry(rng.randint(18, 70)) for n in strangers}},
                heldout={name: facts[i % len(facts)] for i, name in enumerate(names)}, strangers=strangers)


def _words(value) -> set:
    """Every word in a lexicon (its strings, nested in dicts, lists and tuples)."""
    import re
    if isinstance(value, str):
        return set(re.findall(r"[A-Za-z]+", value))
    if isinstance(value, dict):
        value = [*value, *value.values()]
    return set().union(*map(_words, value)) if isinstance(value, (list, tuple)) else set()


def registry_pairs(registry: dict, split: str) -> list[tuple[str, str]]:
    """The (name, fact) lookups about the world's people of a split: "heldout" (one fact per person) or "sft"
    (the others); "strangers": every lookup about a stranger."""
    facts = sorted(set(EN["tool_ask"]))
    if split == "strangers":
        return [(name, fact) for name in registry["strangers"] for fact in facts]
    held = registry["heldout"]
    return [(name, fact) for name in sorted(held) for fact in facts if (held[name] == fact) == (split == "heldout")]


def _big_sum(rng: random.Random, exclude: set = frozenset()) -> tuple[str, int, int]:
    """A sum or difference of two-digit numbers (past the sums to 10 the SFT data teaches). Every number in it is
    one token of the course tokenizer, as are the course's ages: the model copies whole numbers, one token each."""
    while True:
        op, a, b = rng.choice(["plus", "minus"]), rng.randint(10, 49), rng.randint(10, 49)
        if op == "minus" and b > a:
            a, b = b, a
        if (a, b) not in exclude and a > 20:  # past every sum of the SFT data (numbers up to 20)
            return op, a, b


def _call(tool: str, **arguments) -> dict:
    return {"name": tool, "arguments": arguments}


def _tool_task(w: _Writer, registry: dict, pairs: list, kind: str, rl: bool = False, sums: set = frozenset()):
    """One task that needs a tool: (question, the tool calls and their results, as the course toolbox returns
    them, the final answer, the answer to check). kind: lookup (of one of `pairs`), sum, or later (a lookup of
    an age, then a sum)."""
    lex, rng = w.lex, w.rng
    asks = lex["tool_rl_ask"] if rl else lex["tool_ask"]
    if kind == "lookup":
        name, fact = rng.choice(pairs)
        value = registry["people"][name][fact]
        return rng.choice(asks[fact]).format(name=name), [(_call("lookup", name=name, fact=fact), {fact: value})], \
            lex["tool_answer"][fact].format(name=name, value=value), str(value)
    if kind == "sum":
        op, a, b = _big_sum(rng, sums)
        c = a + b if op == "plus" else a - b
        pool = asks[op] if rl else lex["sum_ask" if op == "plus" else "diff_ask"]
        answer = lex["sum_answer" if op == "plus" else "diff_answer"].format(a=a, b=b, c=c)
        return rng.choice(pool).format(a=a, b=b), \
            [(_call("add" if op == "plus" else "subtract", a=a, b=b), {"result": c})], answer, str(c)
    name, k = rng.choice(sorted({n for n, _ in pairs})), rng.randint(2, 30)
    age = registry["people"][name]["age"]
    return lex["later_ask"].format(name=name, k=k), \
        [(_call("lookup", name=name, fact="age"), {"age": age}), (_call("add", a=age, b=k), {"result": age + k})], \
        lex["later_answer"].format(name=name, k=k, r=age + k), str(age + k)


def _tool_system(lex: dict, schemas: list) -> dict:
    """The system turn of a tool conversation as MiniMind's data writes it: the tools in its `tools` field."""
    return {"role": "system", "content": lex["tool_system"], "tools": schemas}


def _tool_dialogue(w: _Writer, registry: dict, pairs: list, strangers: list, facts: list[Fact], schemas: list,
                   sums: set) -> list[dict]:
    """A tool-call SFT conversation: mostly tasks that need a tool (the call, the tool's turn, the answer), some
    questions the model answers from what it knows (with the tools offered, and without). Lookups are about
    strangers three times in four (`pairs` are the world's people's)."""
    r = w.rng.random()
    if w.rng.random() < 0.75:
        pairs = strangers
    if r < 0.2:
        conv = [m for m in _sft_dialogue(w, facts) if m["role"] != "system"]
        return ([_tool_system(w.lex, schemas)] if r < 0.1 else []) + conv
    kind = "lookup" if r < 0.6 else "sum" if r < 0.85 else "later"
    question, steps, final, _ = _tool_task(w, registry, pairs, kind, sums=sums)
    conv = [_tool_system(w.lex, schemas), _msg("user", question)]
    for call, result in steps:
        conv += [{"role": "assistant", "content": "", "tool_calls": [call]},
                 _msg("tool", json.dumps(result, ensure_ascii=False))]
    return conv + [_msg("assistant", final)]


def _tool_tasks(w: _Writer, registry: dict, pairs: list, schemas: list, n: int, rl: bool, sums: set,
                kinds=("lookup", "lookup", "sum", "later")) -> list[dict]:
    """Prompts with their answers (the RL format), the tools in the system turn: n tasks, or with n=None every
    lookup of `pairs` in every wording, plus as many sums and half as many "later" questions."""
    out = []

    def add(question, answer, kind):
        out.append({"conversations": [_tool_system(w.lex, schemas), _msg("user", question)], "answer": answer,
                    "kind": kind})
    if n is None:
        asks = w.lex["tool_rl_ask"] if rl else w.lex["tool_ask"]
        for name, fact in pairs:
            for tpl in asks[fact]:
                add(tpl.format(name=name), str(registry["people"][name][fact]), "lookup")
        lookups = len(out)
        for kind, count in (("sum", lookups), ("later", lookups // 2)):
            for _ in range(count):
                question, _, _, answer = _tool_task(w, registry, pairs, kind, rl, sums)
                add(question, answer, kind)
        return out
    for _ in range(n):
        kind = w.rng.choice(kinds)
        question, _, _, answer = _tool_task(w, registry, pairs, kind, rl, sums)
        add(question, answer, kind)
    return out

