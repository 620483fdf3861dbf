"""The course world in words: pretraining documents, SFT dialogues, DPO pairs, RL prompts, reasoning, LoRA and
eval records, each drawn by a _Writer from its own random stream."""
from __future__ import annotations

import random

from .corpus_world import Fact, World


class _Writer:
    """The world in words, drawn from rng: its facts said, asked and answered, and pretraining documents."""

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

