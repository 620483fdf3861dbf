"""The course recipe: which data each stage reads, what it starts from, how long the tiny run trains; and
`ensure_stage`, which builds (or reuses) what a chapter needs."""
from __future__ import annotations

from pathlib import Path

import torch

from ..data.corpus import ensure_course_data
from ..data.files import find_root
from ..train.run import train_stage

# data/val_data name files of the course corpus (or MiniMind's datasets); init names another stage.
COURSE = {
    "pretrain": dict(data="pretrain", val_data="pretrain_val", init=None, max_steps=300),
    "sft": dict(data="sft", val_data="sft_val", init="pretrain", max_steps=250),
    "lora": dict(data="lora", val_data=None, init="sft", max_steps=120),
    "reason": dict(data="reason", val_data=None, init="sft", max_steps=200),
}
# MiniMind's published files for the same roles (`minimind data download NAME --out data/minimind`)
MINIMIND_FILES = {"pretrain": "pretrain_hq", "sft": "sft_mini_512", "lora": "lora_identity",
                  "reason": "r1_mix_1024", "dpo": "dpo", "rl": "rlaif-mini"}


def data_paths(data: str = "course", root=None) -> dict:
    """Paths of every stage's files: the generated course corpus (with its tokenizer), or MiniMind's
    datasets in data/minimind (downloaded before, with a tokenizer trained on them in data/minimind/tokenizer)."""
    root = Path(root) if root else find_root()
    if data == "course":
        return ensure_course_data(root / "data" / "course")
    if data == "minimind":
        folder = root / "data" / "minimind"
        paths = {role: folder / f"{name}.jsonl" for role, name in MINIMIND_FILES.items()}
        missing = [p.name for p in paths.values() if not p.exists()]
        if missing:
            names = " ".join(n[:-len(".jsonl")] for n in missing)
            raise FileNotFoundError(f"MiniMind's datasets are missing from {folder}: {missing}. Fetch them with "
                                    f"`minimind data download NAME --out {folder}` for NAME in: {names}")
        paths["tokenizer"] = folder / "tokenizer"
        if not (paths["tokenizer"] / "tokenizer.json").exists():
            raise FileNotFoundError(f"no tokenizer in {paths['tokenizer']}: train one with `minimind tokenizer "
                                    f"train --data {paths['pretrain']} --out {paths['tokenizer']}`")
        return paths
    raise ValueError(f"unknown data source {data!r}: use 'course' or 'minimind'")


def stage_done(folder: Path) -> bool:
    return (Path(folder) / "summary.json").exists()


def ensure_stage(stage: str, run_dir, paths: dict, preset: str = "tiny", device: str = "auto",
                 quiet: bool = True, dtype: str = "auto", seed: int = 0, **overrides) -> Path:
    """run_dir/stage, trained with the course recipe unless a finished run is already there (and the stages
    it starts from, first). This is how each notebook runs alone: what it needs is built or reused. seed: the
    course run's seed (`minimind course --seed`), every stage's training seed."""
    run_dir = Path(run_dir)
    out = run_dir / stage
    if stage_done(out):
        return out
    recipe = {**COURSE[stage], **overrides}
    init = ensure_stage(recipe["init"], run_dir, paths, preset, device, quiet, dtype, seed) if recipe["init"] else None
    steps = recipe["max_steps"] if preset == "tiny" else None
    train_stage(stage, out, data=paths[recipe["data"]],
                val_data=paths.get(recipe["val_data"]) if recipe["val_data"] else None,
                tokenizer=paths["tokenizer"], preset=preset, init=init, max_steps=steps, device=device,
                dtype=dtype, progress=not quiet, eval_every=steps or 0, seed=seed)
    return out


def sample_callback(tokenizer, prompts: list[str], max_new_tokens: int = 40, chat: bool = False):
    """A train() callback that records greedy continuations of `prompts` at every eval point."""
    def callback(step, model):
        samples = []
        for prompt in prompts:
            text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                                 add_generation_prompt=True) if chat else prompt
            ids = torch.tensor([tokenizer.encode(text)], device=model.device)
            out = model.generate(ids, max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_token_id)
            samples.append(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
        return {"samples": samples}
    return callback


def fill_in(recipe: dict, **given) -> tuple:
    """The values of `given`, in order, each None replaced by the recipe's value for that name: a chapter's
    parameters left unset take its preset's recipe, e.g. `steps, lr = fill_in(recipe, steps=steps, lr=lr)`."""
    missing = [name for name, value in given.items() if value is None and name not in recipe]
    if missing:
        raise KeyError(f"the recipe has no value for {', '.join(missing)}: set it as a parameter, or add it to the "
                       f"recipe (which has {', '.join(recipe)})")
    return tuple(recipe[name] if value is None else value for name, value in given.items())
