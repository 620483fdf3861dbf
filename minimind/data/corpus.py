"""The course corpus: a small seeded world (people, places, animals, facts) in MiniMind's JSONL formats.

`write_course_corpus` writes pretrain, sft, lora, dpo, rl, reason and eval files (same seed, same bytes). Held-out
facts appear only in pretraining text and eval.jsonl, never in a question of the training data (chapter 02).
"""
from __future__ import annotations

import json
import random
import time
from pathlib import Path

from .corpus_text import _dpo_pair, _eval_records, _lora, _reason, _rl_prompts, _sft_dialogue, _Writer
from .corpus_tools import TOOL_FILES, _tool_files, build_registry, registry_pairs
from .corpus_world import (
    EN,
    HELDOUT_FRACTION,
    LEXICON_DIR,
    LEXICONS,
    SIZES,
    VAL_FRACTION,
    Fact,
    World,
    _split_val,
    build_world,
)
from .files import atomic_path, find_root

# the corpus's public names, wherever they live (corpus_world, corpus_text, corpus_tools): import them from here
__all__ = ["EN", "GENERATOR_VERSION", "HELDOUT_FRACTION", "LEXICONS", "SIZES", "TOOL_FILES", "VAL_FRACTION", "Fact",
           "World", "build_registry", "build_world", "corpus_paths", "course_tokenizer_texts", "ensure_course_data",
           "ensure_course_tokenizer", "load_world", "registry_pairs", "write_course_corpus"]

GENERATOR_VERSION = 1
# what a corpus is made from: a change to any of them regenerates a cached corpus
_GENERATOR_FILES = ("corpus.py", "corpus_world.py", "corpus_text.py", "corpus_tools.py")


def _generator_hash() -> str:
    """A digest of the generator's source and the lexicons: a cached corpus written by other code or words is
    regenerated."""
    import hashlib
    digest = hashlib.sha256()
    for path in [Path(__file__).parent / name for name in _GENERATOR_FILES] + sorted(LEXICON_DIR.glob("*.json")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


# -- writing ---------------------------------------------------------------------------------------------
def _write_jsonl(path: Path, records) -> int:
    n = 0
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
            n += 1
    return n


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
    from .records import iter_texts
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
