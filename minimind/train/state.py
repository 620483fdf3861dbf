"""Resumable training state, no pickle: RUN/resume/ holds model and optimizer tensors (safetensors) and the rest
(step, data position, RNG states, scaler) as JSON; it is written into a temporary folder and swapped in by
renames, so a run killed mid-write leaves the previous state loadable.
"""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch

RESUME_DIR = "resume"


def optimizer_to_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state dict into tensors (for safetensors) and JSON-able rest."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, state in sd["state"].items():
        for name, value in state.items():
            if torch.is_tensor(value):
                tensors[f"{idx}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{name}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_tensors(optimizer: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    state: dict[int, dict] = {}
    for key, value in list(tensors.items()) + list(meta["scalars"].items()):
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda{i}"] = s
    py = random.getstate()
    np_state = np.random.get_state()
    return tensors, {"python": [py[0], list(py[1]), py[2]],
                     "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]]}


def set_rng_state(tensors: dict, meta: dict) -> None:
    torch.set_rng_state(tensors["torch"])
    if torch.cuda.is_available():
        states = [tensors[k] for k in sorted(tensors) if k.startswith("cuda")]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)
    v, inner, gauss = meta["python"]
    random.setstate((v, tuple(inner), gauss))
    name, keys, *rest = meta["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), *rest))


def save_resume_state(run_dir: Path, model_tensors: dict[str, torch.Tensor], optimizer, trainer_state: dict,
                      scaler=None) -> Path:
    """Write run_dir/resume atomically: a temporary folder, then two renames."""
    from safetensors.torch import save_file
    run_dir = Path(run_dir)
    final, tmp, old = run_dir / RESUME_DIR, run_dir / f".{RESUME_DIR}.tmp", run_dir / f".{RESUME_DIR}.old"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model_tensors.items()}, str(tmp / "model.safetensors"))
    opt_tensors, opt_meta = optimizer_to_tensors(optimizer)
    save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
    rng_tensors, rng_meta = rng_state()
    save_file(rng_tensors, str(tmp / "rng.safetensors"))
    meta = {"trainer": trainer_state, "optimizer": opt_meta, "rng": rng_meta,
            "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None}
    (tmp / "state.json").write_text(json.dumps(meta, indent=1))
    # the swap: after the first rename the old state is still complete under .resume.old
    if final.exists():
        if old.exists():
            shutil.rmtree(old)
        final.rename(old)
    tmp.rename(final)
    if old.exists():
        shutil.rmtree(old)
    return final


def find_resume_state(run_dir: Path) -> Path | None:
    """The newest complete resume folder (falls back to the old one if a swap was interrupted)."""
    for name in (RESUME_DIR, f".{RESUME_DIR}.old"):
        folder = Path(run_dir) / name
        if (folder / "state.json").exists():
            return folder
    return None


def load_resume_state(folder: Path):
    from safetensors.torch import load_file
    folder = Path(folder)
    meta = json.loads((folder / "state.json").read_text())
    return (load_file(str(folder / "model.safetensors")), load_file(str(folder / "optimizer.safetensors")),
            load_file(str(folder / "rng.safetensors")), meta)
