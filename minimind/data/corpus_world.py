"""The course world: how big it is, its words (the lexicon, package data), and its people, places and facts, each
fact in the sft split (asked in SFT) or the heldout one (only in pretraining text; asked in eval)."""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

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


def _split_val(records: list) -> tuple[list, list]:
    """(train, val): the first VAL_FRACTION of the records (at least one) are the validation set."""
    k = max(1, int(len(records) * VAL_FRACTION))
    return records[k:], records[:k]


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

