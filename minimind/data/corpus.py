"""The course corpus: a small seeded world (people, places, animals, facts) in MiniMind's JSONL formats.

`write_course_corpus` writes pretrain, sft, lora, dpo, rl, reason and eval files (same seed, same bytes). Held-out
facts appear only in pretraining text and eval.jsonl, never in a question of the training data (chapter 02).
"""
from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

from .files import atomic_path, find_root

GENERATOR_VERSION = 1


def _generator_hash() -> str:
    """A digest of this module's source and the lexicons: a cached corpus written by other code or words is
    regenerated."""
    import hashlib
    digest = hashlib.sha256(Path(__file__).read_bytes())
    for path in sorted(LEXICON_DIR.glob("*.json")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]

# How much of everything. `mini` is for unit tests; `small` is the CPU course (the tiny preset learns it
# in minutes); `large` is ten times more text over a world five times bigger, for GPU runs.
SIZES: dict[str, dict] = {
    "mini": dict(people=8, places=4, pretrain_docs=400, sft=200, dpo=100, rl=100, reason=100, lora=60,
                 tool_sft=200, tool_rl=100, strangers=100),
    "small": dict(people=24, places=10, pretrain_docs=14000, sft=4000, dpo=1500, rl=1000, reason=1500,
                  lora=600, tool_sft=3000, tool_rl=1000, strangers=2000),
    "large": dict(people=120, places=40, pretrain_docs=140000, sft=40000, dpo=15000, rl=10000,
                  reason=15000, lora=3000, tool_sft=30000, tool_rl=10000, strangers=20000),
}
HELDOUT_FRACTION = 0.25
VAL_FRACTION = 0.05

# -- the lexicon -----------------------------------------------------------------------------------------
# Every word the corpus uses, in lexicons/<lang>.json (package data). Templates: {name} a person, {S}/{Ss} the
# subject as name or pronoun ("Mira"/"She", "Mira's"/"Her"), {pron}/{pos} pronouns, the other fields are the
# fact's values. What some keys hold:
# - animals: kind -> [sound now, sound in a story, what it eats, legs, where it lives]
# - story_open, story_events, story_close: a story is an opening, a few events (each consistent with the world)
#   and an ending
# - think_*: [question, answer], the answer a <think> block then the answer (reasoning data)
# - identity_*, vet_ask: LoRA's data, a new identity and an animal-care domain (neither appears in SFT)
# - rl_ask: RL prompts (chapter 11), questions about facts the SFT data teaches, in words it never asks them in.
#   The SFT model knows every answer but often mistakes the question ("Where is Mavi from?" -> "Mavi has a dog
#   called Ba."). Wordings it already answers (nothing to learn) or all but never does (no reward to reinforce)
#   are left out but one, "Tell me what {name} does.": a lesson in what RL cannot do.
# - tool_*: tools (chapter 14). The town register holds facts about the world's people that no text of the
#   corpus mentions (house numbers, weights, shoe sizes), and the calculator does sums of two-digit numbers (the
#   tiny model cannot add past 10 in its head); tool_ask in the SFT data and held-out tasks, tool_rl_ask in RL.
#   In later_answer the answer is the last number, as checked.
LEXICON_DIR = Path(__file__).parent / "lexicons"


def _lexicon(lang: str) -> dict:
    return json.loads((LEXICON_DIR / f"{lang}.json").read_text(encoding="utf-8"))


EN = _lexicon("en")
LEXICONS = {"en": EN}  # another language: lexicons/<lang>.json with en.json's keys, then lang=


# -- the world -------------------------------------------------------------------------------------------
@dataclass
class Fact:
    relation: str
    subject: str          # a person's or a place's name
    fields: dict          # every value its templates need
    value: str            # the short answer
    split: str = "sft"    # "sft" (asked in SFT) or "heldout" (only in pretraining text; asked in eval)


@dataclass
class World:
    people: list[dict]
    places: list[dict]
    facts: list[Fact] = field(default_factory=list)
    arith: dict = field(default_factory=dict)   # {"sft": [(op, a, b)], "heldout": [...]}

    def to_dict(self) -> dict:
        return dict(people=self.people, places=self.places,
                    facts=[f.__dict__ for f in self.facts], arith=self.arith)


def _names(rng: random.Random, lex: dict, n: int, syllables: int, taken: set) -> list[str]:
    out = []
    while len(out) < n:
        name = "".join(rng.choice(lex["consonants"]) + rng.choice(lex["vowels"]) for _ in range(syllables))
        name = (name + rng.choice(lex["name_endings"])).capitalize()
        if name not in taken:
            taken.add(name)
            out.append(name)
    return out


def build_world(seed: int = 0, size: str = "small", lang: str = "en") -> World:
    """People, places and their facts, each fact assigned to the sft or the heldout split."""
    lex, spec = LEXICONS[lang], SIZES[size]
    rng = random.Random(f"world-{seed}")
    taken: set = set()
    place_names = _names(rng, lex, spec["places"], 2, taken)
    rivers, hills = _names(rng, lex, spec["places"], 2, taken), _names(rng, lex, spec["places"], 2, taken)
    places = [dict(place=p, river=r, hill=h, product=rng.choice(lex["products"]), size=rng.choice(lex["sizes"]))
              for p, r, h in zip(place_names, rivers, hills)]
    names = _names(rng, lex, spec["people"], 2, taken)
    pets = _names(rng, lex, spec["people"], 1 + (spec["people"] > 40), taken)
    order = list(range(len(names)))
    rng.shuffle(order)   # friends come in pairs: friend(a) = b and friend(b) = a
    friend = {}
    for i in range(0, len(order) - 1, 2):
        friend[order[i]], friend[order[i + 1]] = order[i + 1], order[i]
    if len(order) % 2:
        friend[order[-1]] = order[0]
    people = []
    for i, name in enumerate(names):
        people.append(dict(
            name=name, gender=rng.choice(["she", "he"]), place=places[i % len(places)]["place"],
            job=rng.choice(lex["jobs"]), animal=rng.choice(list(lex["animals"])), pet=pets[i],
            color=rng.choice(lex["colors"]), food=rng.choice(lex["foods"]), age=str(rng.randint(18, 70)),
            friend=names[friend[i]], object=rng.choice(lex["objects"]), ocolor=rng.choice(lex["colors"])))
    rng.shuffle(people)
    world = World(people=people, places=places)
    person_rel = ["home", "job", "pet", "pet_name", "color", "food", "age", "friend", "thing"]
    for rel in person_rel:
        group = []
        for p in people:
            value = p[lex["relations"][rel]["value"]]
            group.append(Fact(rel, p["name"], dict(p), value))
        _split(rng, group, key=(lambda f: tuple(sorted((f.subject, f.value)))) if rel == "friend" else None)
        world.facts += group
    for rel in ["river", "hill", "product", "size"]:
        group = [Fact(rel, pl["place"], dict(pl), pl[lex["relations"][rel]["value"]]) for pl in places]
        _split(rng, group)
        world.facts += group
    sums = [("plus", a, b) for a in range(11) for b in range(11)]
    diffs = [("minus", a, b) for a in range(21) for b in range(a + 1) if a - b <= 10][::2]
    arith = sums + diffs
    rng.shuffle(arith)
    k = int(len(arith) * HELDOUT_FRACTION)
    world.arith = {"heldout": sorted(arith[:k]), "sft": sorted(arith[k:])}
    return world


def _split(rng: random.Random, facts: list[Fact], key=None) -> None:
    """Mark about HELDOUT_FRACTION of the facts (at least one) heldout; facts sharing a key share a split."""
    keys = sorted({key(f) if key else f.subject for f in facts})
    rng.shuffle(keys)
    held = set(keys[:max(1, round(len(keys) * HELDOUT_FRACTION))])
    for f in facts:
        f.split = "heldout" if (key(f) if key else f.subject) in held else "sft"


# -- rendering -------------------------------------------------------------------------------------------
class _Writer:
    def __init__(self, world: World, lex: dict, rng: random.Random):
        self.world, self.lex, self.rng = world, lex, rng
        self.person = {p["name"]: p for p in world.people}
        self.place = {p["place"]: p for p in world.places}
        self.by_subject: dict[str, list[Fact]] = {}
        self.by_relation: dict[str, list[Fact]] = {}
        for f in world.facts:
            self.by_subject.setdefault(f.subject, []).append(f)
            self.by_relation.setdefault(f.relation, []).append(f)

    def fields(self, fact_fields: dict) -> dict:
        f = dict(fact_fields)
        if "name" in f:
            f.update(self.lex["pronouns"][f["gender"]])
            a = self.lex["animals"][f["animal"]]
            f.update(sound=a[0], sounded=a[1], eats=a[2], legs=a[3], home=a[4])
        return f

    def say(self, fact: Fact, pronoun: bool = False) -> str:
        tpl = self.rng.choice(self.lex["relations"][fact.relation]["say"])
        f = self.fields(fact.fields)
        if "name" in f:
            f["S"] = f["Pron"] if pronoun else f["name"]
            f["Ss"] = f["Pos"] if pronoun else f["name"] + "'s"
        return tpl.format(**f)

    def ask(self, fact: Fact) -> str:
        return self.rng.choice(self.lex["relations"][fact.relation]["ask"]).format(**self.fields(fact.fields))

    def answer(self, fact: Fact) -> str:
        return self.lex["relations"][fact.relation]["answer"].format(**self.fields(fact.fields))

    def arith_say(self, op: str, a: int, b: int) -> str:
        c = a + b if op == "plus" else a - b
        return self.rng.choice(self.lex["sum_say" if op == "plus" else "diff_say"]).format(a=a, b=b, c=c)

    def arith_qa(self, op: str, a: int, b: int) -> tuple[str, str, str]:
        c = a + b if op == "plus" else a - b
        ask = self.rng.choice(self.lex["sum_ask" if op == "plus" else "diff_ask"]).format(a=a, b=b)
        return ask, self.lex["sum_answer" if op == "plus" else "diff_answer"].format(a=a, b=b, c=c), str(c)

    # pretraining documents
    def profile(self, name: str) -> str:
        facts = list(self.by_subject[name])
        self.rng.shuffle(facts)
        return " ".join(self.say(f, pronoun=i > 0 and self.rng.random() < 0.5) for i, f in enumerate(facts))

    def place_doc(self, place: str) -> str:
        facts = list(self.by_subject[place])
        self.rng.shuffle(facts)
        sents = [self.say(f) for f in facts]
        people = [p["name"] for p in self.world.people if p["place"] == place]
        self.rng.shuffle(people)
        if people:
            joined = people[0] if len(people) == 1 else (
                ", ".join(people[:-1]) + f" {self.lex['and_word']} " + people[-1])
            sents.insert(self.rng.randrange(len(sents) + 1), self.lex["place_people"].format(
                people=joined, place=place))
        return " ".join(sents)

    def animal_doc(self) -> str:
        kind = self.rng.choice(list(self.lex["animals"]))
        a = self.lex["animals"][kind]
        f = dict(animal=kind, sound=a[0], eats=a[2], legs=a[3], home=a[4])
        tpls = self.rng.sample(self.lex["animal_say"], 3)
        owners = [p for p in self.world.people if p["animal"] == kind]
        sents = [t.format(**f) for t in tpls]
        if owners:
            owner = self.rng.choice(owners)["name"]
            sents.append(self.say(next(x for x in self.by_subject[owner] if x.relation == "pet")))
        return " ".join(sents)

    def fact_list(self) -> str:
        return " ".join(self.say(f) for f in self.rng.sample(self.world.facts, 6))

    def story(self, name: str) -> str:
        p = self.fields(self.person[name])
        p.update(self.place[p["place"]])
        a, b = self.rng.randint(2, 9), self.rng.randint(1, 9)
        p.update(time=self.rng.choice(self.lex["times"]), weather=self.rng.choice(self.lex["weathers"]),
                 items=self.rng.choice(self.lex["items"]), a=a, b=b, c=a + b)
        events = self.rng.sample(self.lex["story_events"], self.rng.randint(2, 4))
        parts = [self.rng.choice(self.lex["story_open"])] + events + [self.rng.choice(self.lex["story_close"])]
        return " ".join(t.format(**p) for t in parts)

    def arith_doc(self) -> str:
        pool = self.world.arith["sft"] + self.world.arith["heldout"]
        sents = [self.arith_say(*self.rng.choice(pool)) for _ in range(self.rng.randint(3, 6))]
        if self.rng.random() < 0.5:
            p = self.fields(self.rng.choice(self.world.people))
            a, b = self.rng.randint(2, 9), self.rng.randint(1, 9)
            sents.append(self.lex["word_problem"].format(**p, a=a, b=b, c=a + b,
                                                         items=self.rng.choice(self.lex["items"])))
        return " ".join(sents)

    def pretrain_doc(self) -> str:
        r = self.rng.random()
        if r < 0.30:
            return self.profile(self.rng.choice(self.world.people)["name"])
        if r < 0.40:
            return self.place_doc(self.rng.choice(self.world.places)["place"])
        if r < 0.47:
            return self.animal_doc()
        if r < 0.62:
            return self.fact_list()
        if r < 0.85:
            return self.story(self.rng.choice(self.world.people)["name"])
        return self.arith_doc()


def _msg(role: str, content: str) -> dict:
    return {"role": role, "content": content}


def _sft_dialogue(w: _Writer, facts: list[Fact]) -> list[dict]:
    lex, rng = w.lex, w.rng
    conv = [_msg("system", rng.choice(lex["systems"]))] if rng.random() < 0.15 else []
    r = rng.random()
    if r < 0.55:
        conv += [_msg("user", w.ask(f := rng.choice(facts))), _msg("assistant", w.answer(f))]
    elif r < 0.72:  # a few questions about one subject
        subject = rng.choice(facts).subject
        same = [f for f in facts if f.subject == subject]
        for f in rng.sample(same, min(len(same), rng.randint(2, 3))):
            conv += [_msg("user", w.ask(f)), _msg("assistant", w.answer(f))]
    elif r < 0.9:
        ask, ans, _ = w.arith_qa(*rng.choice(w.world.arith["sft"]))
        conv += [_msg("user", ask), _msg("assistant", ans)]
    else:
        name = rng.choice(w.world.people)["name"]
        conv += [_msg("user", rng.choice(lex["story_ask"]).format(name=name)), _msg("assistant", w.story(name))]
    return conv


def _dpo_pair(w: _Writer, facts: list[Fact]) -> dict:
    lex, rng = w.lex, w.rng
    r = rng.random()
    if r < 0.6:
        f = rng.choice(facts)
        ask, good = w.ask(f), w.answer(f)
        if rng.random() < 0.6:  # a wrong fact: the same relation, another value
            others = [g for g in w.by_relation[f.relation] if g.value != f.value]
            vkey = lex["relations"][f.relation]["value"]
            bad = lex["relations"][f.relation]["answer"].format(**{**w.fields(f.fields),
                                                                   vkey: rng.choice(others).value})
        else:
            bad = rng.choice(lex["rude"])
    elif r < 0.9:
        op, a, b = rng.choice(w.world.arith["sft"])
        ask, good, c = w.arith_qa(op, a, b)
        if rng.random() < 0.6:
            wrong = int(c) + rng.choice([-2, -1, 1, 2, 3])
            bad = good.replace(f" is {c}.", f" is {max(wrong, 0) if wrong != int(c) else int(c) + 1}.")
        else:
            bad = rng.choice(lex["rude"])
    else:
        name = rng.choice(w.world.people)["name"]
        ask, good, bad = rng.choice(lex["story_ask"]).format(name=name), w.story(name), rng.choice(lex["rude"])
    user = _msg("user", ask)
    return {"chosen": [user, _msg("assistant", good)], "rejected": [user, _msg("assistant", bad)]}


def _rl_prompts(w: _Writer, facts: list[Fact], n: int, held_fraction: float = 0.6) -> tuple[list[dict], list[dict]]:
    """RL prompts: every `rl_ask` question about every fact of `facts`, split by subject (person or place): all the
    questions about held_fraction of the subjects go to the validation file, and n training prompts are drawn
    (with repeats) from the others'. So a held-out prompt asks a known fact, in wording RL trained on, about a
    subject no training prompt names: a gain there is a skill, not a memorised prompt."""
    facts = [f for f in facts if f.relation in w.lex["rl_ask"]]
    subjects = sorted({f.subject for f in facts})
    w.rng.shuffle(subjects)
    held = set(subjects[:round(len(subjects) * held_fraction)])
    train, val = [], []
    for f in facts:
        for tpl in w.lex["rl_ask"][f.relation]:
            rec = {"conversations": [_msg("user", tpl.format(**w.fields(f.fields)))], "answer": f.value}
            (val if f.subject in held else train).append(rec)
    return [w.rng.choice(train) for _ in range(n)], val


def _reason(w: _Writer, facts: list[Fact]) -> list[dict]:
    lex, rng = w.lex, w.rng
    r = rng.random()
    a, b, c = rng.randint(1, 9), rng.randint(1, 9), rng.randint(1, 9)
    if r < 0.35:
        ask, ans = lex["think_sum3"]
        f = dict(a=a, b=b, c=c, ab=a + b, r=a + b + c)
    elif r < 0.6:
        ask, ans = lex["think_mixed"]
        c = rng.randint(0, a + b)
        f = dict(a=a, b=b, c=c, ab=a + b, r=a + b - c)
    elif r < 0.85:
        ask, ans = lex["think_story"]
        p = w.fields(rng.choice(w.world.people))
        a = max(a, 2)
        c = rng.randint(1, a + b - 2)  # plural counts: at least 2 at every step
        f = dict(p, friend=p["friend"], a=a, b=b, c=c, ab=a + b, r=a + b - c, items=rng.choice(lex["items"]))
    else:
        ask, ans = lex["think_same"]
        homes = [x for x in facts if x.relation == "home"]
        x, y = rng.sample(homes, 2)
        p1, p2 = x.value, y.value
        f = dict(name=x.subject, other=y.subject, p1=p1, p2=p2)
        f["verdict"] = (lex["same_yes"] if p1 == p2 else lex["same_no"]).format(**f)
        f["answer"] = (lex["same_answer_yes"] if p1 == p2 else lex["same_answer_no"]).format(**f)
    return [_msg("user", ask.format(**f)), _msg("assistant", ans.format(**f))]


def _lora(w: _Writer) -> list[dict]:
    lex, rng = w.lex, w.rng
    if rng.random() < 0.5:
        return [_msg("user", rng.choice(lex["identity_ask"])), _msg("assistant", rng.choice(lex["identity_answer"]))]
    ask, ans = rng.choice(lex["vet_ask"])
    p = w.fields(rng.choice(w.world.people))
    if "{name}" not in ask:  # a general question about an animal kind
        kind = rng.choice(list(lex["animals"]))
        a = lex["animals"][kind]
        p.update(animal=kind, sound=a[0], eats=a[2], legs=a[3], home=a[4])
    return [_msg("user", ask.format(**p)), _msg("assistant", ans.format(**p))]


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


# eval.jsonl splits: "heldout" (facts only in pretraining text), "seen" (facts asked in SFT), "arith" (held-out sums)
def _eval_records(w: _Writer) -> list[dict]:
    lex, rng = w.lex, w.rng
    out = []

    def add(kind, split, rel, question, answer, answer_text, choices=None, choice_texts=None):
        rec = dict(id=f"{split}-{len(out):04d}", type=kind, split=split, relation=rel, question=question,
                   answer=answer, answer_text=answer_text)
        if choices is not None:
            rec.update(choices=choices, choice_texts=choice_texts, label=choices.index(answer))
        rec["conversations"] = [_msg("user", question)]
        out.append(rec)

    held = [f for f in w.world.facts if f.split == "heldout"]
    for f in held:
        add("short", "heldout", f.relation, w.ask(f), f.value, w.answer(f))
        values = sorted({g.value for g in w.world.facts if g.relation == f.relation and g.value != f.value})
        wrong = rng.sample(values, min(3, len(values)))
        choices = [f.value] + wrong
        rng.shuffle(choices)
        vkey = lex["relations"][f.relation]["value"]
        texts = [lex["relations"][f.relation]["answer"].format(**{**w.fields(f.fields), vkey: v}) for v in choices]
        add("mc", "heldout", f.relation, w.ask(f), f.value, w.answer(f), choices, texts)
    seen = [f for f in w.world.facts if f.split == "sft"]
    for f in rng.sample(seen, min(len(seen), max(4, len(held) // 2))):
        add("short", "seen", f.relation, w.ask(f), f.value, w.answer(f))
    for op, a, b in w.world.arith["heldout"][: max(8, len(held) * 2 // 3)]:
        ask, ans, c = w.arith_qa(op, a, b)
        add("short", "arith", op, ask, c, ans)
    return out


# -- writing ---------------------------------------------------------------------------------------------
def _write_jsonl(path: Path, records) -> int:
    n = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
            n += 1
    return n


def _split_val(records: list) -> tuple[list, list]:
    k = max(1, int(len(records) * VAL_FRACTION))
    return records[k:], records[:k]


def write_course_corpus(out_dir, seed: int = 0, size: str = "small", lang: str = "en") -> dict[str, Path]:
    """Generate the course corpus into out_dir; returns {name: path} (the names of corpus_paths)."""
    if size not in SIZES:
        raise ValueError(f"unknown corpus size {size!r}; choose one of: {', '.join(SIZES)}")
    if lang not in LEXICONS:
        raise ValueError(f"no lexicon for language {lang!r}; available: {', '.join(LEXICONS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    world, spec, lex = build_world(seed, size, lang), SIZES[size], LEXICONS[lang]
    sft_facts = [f for f in world.facts if f.split == "sft"]

    def writer(stream: str) -> _Writer:  # one random stream per file: changing one file leaves the rest
        return _Writer(world, lex, random.Random(f"{stream}-{seed}"))

    w = writer("pretrain")
    docs = [{"text": w.pretrain_doc()} for _ in range(spec["pretrain_docs"])]
    # every fact at least once, whatever the draw: one profile per person, one description per place
    docs += [{"text": w.profile(p["name"])} for p in world.people]
    docs += [{"text": w.place_doc(p["place"])} for p in world.places]
    w.rng.shuffle(docs)
    pretrain, pretrain_val = _split_val(docs)
    w = writer("sft")
    sft, sft_val = _split_val([{"conversations": _sft_dialogue(w, sft_facts)}
                               for _ in range(int(spec["sft"] * (1 + VAL_FRACTION)))])
    w = writer("dpo")
    dpo, dpo_val = _split_val([_dpo_pair(w, sft_facts) for _ in range(int(spec["dpo"] * (1 + VAL_FRACTION)))])
    w = writer("rl")
    rl, rl_val = _rl_prompts(w, sft_facts, int(spec["rl"] * (1 + VAL_FRACTION)))
    w = writer("reason")
    reason = [{"conversations": _reason(w, sft_facts)} for _ in range(spec["reason"])]
    w = writer("lora")
    lora = [{"conversations": _lora(w)} for _ in range(spec["lora"])]
    evals = _eval_records(writer("eval"))
    tool_files, registry = _tool_files(world, spec, lex, writer, sft_facts, seed, size, lang)
    files = dict(pretrain=pretrain, pretrain_val=pretrain_val, sft=sft, sft_val=sft_val, lora=lora, dpo=dpo,
                 dpo_val=dpo_val, rl=rl, rl_val=rl_val, reason=reason, eval=evals, **tool_files)
    paths, lines = {}, {}
    for name, recs in files.items():
        paths[name] = out / f"{name}.jsonl"
        lines[name] = _write_jsonl(paths[name], recs)
    paths["registry"] = out / "registry.json"
    paths["registry"].write_text(json.dumps(registry, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    paths["world"] = out / "world.json"
    paths["world"].write_text(json.dumps(world.to_dict(), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    manifest = dict(generator_version=GENERATOR_VERSION, generator_hash=_generator_hash(), seed=seed, size=size,
                    lang=lang, lines=lines,
                    seconds=round(time.perf_counter() - start, 2))
    paths["manifest"] = out / "manifest.json"
    paths["manifest"].write_text(json.dumps(manifest, indent=2) + "\n")
    return paths


def _tool_files(world, spec, lex, writer, sft_facts, seed, size, lang) -> tuple[dict, dict]:
    """Chapter 14's files: tool-call SFT conversations, held-out tool tasks (register facts no training file
    asks, sums never asked), agent RL prompts in other words and their held-out set; and the register."""
    from .tools import course_tools
    registry = build_registry(world, seed, size, lang)
    schemas = course_tools({}).schemas()
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


TOOL_FILES = ["tool_sft", "tool_sft_val", "tool_eval", "tool_rl", "tool_rl_val"]


def corpus_paths(out_dir) -> dict[str, Path]:
    out = Path(out_dir)
    names = ["pretrain", "pretrain_val", "sft", "sft_val", "lora", "dpo", "dpo_val", "rl", "rl_val", "reason",
             "eval"] + TOOL_FILES
    paths = {n: out / f"{n}.jsonl" for n in names}
    paths.update(world=out / "world.json", registry=out / "registry.json", manifest=out / "manifest.json")
    return paths


def load_world(out_dir) -> dict:
    return json.loads((Path(out_dir) / "world.json").read_text(encoding="utf-8"))


def ensure_course_data(out_dir=None, seed: int = 0, size: str = "small", vocab_size: int = 6400,
                       tokenizer: bool = True, lang: str = "en") -> dict[str, Path]:
    """The course corpus and its tokenizer (out_dir/tokenizer), generated on first use and kept while manifest.json
    matches (generator, seed, size, language). Returns write_course_corpus's paths plus "tokenizer"."""
    out = Path(out_dir) if out_dir else find_root() / "data" / "course"
    paths = corpus_paths(out)
    want = dict(generator_version=GENERATOR_VERSION, generator_hash=_generator_hash(), seed=seed, size=size,
                lang=lang)
    try:
        manifest = json.loads(paths["manifest"].read_text())
        fresh = all(manifest.get(k) == v for k, v in want.items()) and all(p.exists() for p in paths.values())
    except (OSError, ValueError):
        fresh = False
    if not fresh:
        paths = write_course_corpus(out, seed=seed, size=size, lang=lang)
    if tokenizer:
        paths["tokenizer"] = out / "tokenizer"
        ensure_course_tokenizer(paths, paths["tokenizer"], vocab_size=vocab_size, retrain=not fresh)
    return paths


def course_tokenizer_texts(paths: dict) -> list:
    """What the course tokenizer learns from: the pretraining text and the SFT and reasoning dialogues."""
    return [paths["pretrain"], paths["sft"], paths["reason"], paths["lora"]]


def ensure_course_tokenizer(paths: dict, tok_dir, vocab_size: int = 6400, retrain: bool = False):
    from .datasets import iter_texts
    from .tokenizer import MiniMindTokenizer, train_tokenizer
    tok_dir = Path(tok_dir)
    meta = tok_dir / "training.json"
    want = dict(vocab_size=vocab_size, files=[Path(p).name for p in course_tokenizer_texts(paths)])
    if not retrain and meta.exists() and (tok_dir / "tokenizer.json").exists():
        try:
            if json.loads(meta.read_text()) == want:
                return MiniMindTokenizer.from_pretrained(tok_dir)
        except ValueError:
            pass
    tok = train_tokenizer(iter_texts(course_tokenizer_texts(paths)), vocab_size=vocab_size)
    tok.save_pretrained(tok_dir)
    meta.write_text(json.dumps(want) + "\n")
    return tok
