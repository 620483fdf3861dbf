"""MiniMind's published datasets (jingyaogong/minimind_dataset: `minimind data download`) and models (e.g.
jingyaogong/minimind-3: `from_pretrained("jingyaogong/minimind-3")`) from the Hugging Face hub.

Downloads resume, are checked against their format, and fail at once offline, saying what to fetch by hand.
"""
from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

REPO_ID = "jingyaogong/minimind_dataset"

# name -> (file in the repo, kind of records, what it is)
DATASETS: dict[str, tuple[str, str, str]] = {
    "pretrain_hq": ("pretrain_hq.jsonl", "pretrain", "pretraining text, MiniMind2's main pretraining corpus"),
    "sft_mini_512": ("sft_mini_512.jsonl", "sft", "SFT dialogues up to 512 tokens, the quick SFT set"),
    "sft_512": ("sft_512.jsonl", "sft", "SFT dialogues up to 512 tokens, the full set"),
    "dpo": ("dpo.jsonl", "dpo", "chosen/rejected preference pairs"),
    "r1_mix_1024": ("r1_mix_1024.jsonl", "sft", "reasoning dialogues with <think> traces, up to 1024 tokens"),
    "rlaif-mini": ("rlaif-mini.jsonl", "rl", "prompts for reinforcement learning"),
    "lora_identity": ("lora_identity.jsonl", "sft", "identity dialogues for a LoRA"),
    "lora_medical": ("lora_medical.jsonl", "sft", "medical dialogues for a domain LoRA"),
}


class DownloadError(FileNotFoundError):
    """The file could not be fetched; the message says how to get it by hand."""


def dataset_names() -> list[str]:
    return list(DATASETS)


def _resolve(name: str) -> tuple[str, str, str]:
    key = name[:-len(".jsonl")] if name.endswith(".jsonl") else name
    if key not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; MiniMind publishes: {', '.join(DATASETS)}")
    return DATASETS[key]


def _endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def _manual_message(filename: str, target: Path, why: str, repo_id: str = REPO_ID) -> str:
    url = f"{_endpoint()}/datasets/{repo_id}/resolve/main/{filename}"
    return (f"cannot download {filename} from the Hugging Face hub ({why}).\n"
            f"  fix: download {url}\n"
            f"       (with a browser, `wget`, or `hf download {repo_id} {filename} "
            f"--repo-type dataset --local-dir {target.parent}`)\n"
            f"       and put it at {target}; or set HF_ENDPOINT to a mirror you can reach "
            f"(e.g. https://hf-mirror.com) and run this again")


def _offline_reason() -> str | None:
    """Why the hub cannot be reached, or None when it looks reachable (a quick check: seconds, not minutes)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    url = urlparse(_endpoint())
    host, port = url.hostname, url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=3):
            return None
    except OSError as err:
        return f"no connection to {host}: {err.strerror or err}"


def _hub_download(repo_id: str, filename: str, local_dir: Path, revision=None, force=False) -> str:
    """The one network call (tests replace it): huggingface_hub shows a progress bar and resumes."""
    from huggingface_hub import hf_hub_download
    return hf_hub_download(repo_id=repo_id, filename=filename, repo_type="dataset", revision=revision,
                           local_dir=str(local_dir), force_download=force)


def download_dataset(name: str, out_dir, repo_id: str = REPO_ID, revision: str | None = None,
                     force: bool = False, check: bool = True) -> Path:
    """Fetch MiniMind's dataset NAME (e.g. "pretrain_hq") into out_dir/NAME.jsonl and return its path; a file already
    there is kept unless force=True. check=True validates the first lines against the format."""
    filename, kind, _ = _resolve(name)
    out = Path(out_dir)
    target = out / filename
    if target.exists() and not force:
        print(f"{target} is already there ({target.stat().st_size / 2**20:.1f} MiB); --force fetches it again")
    else:
        why = _offline_reason()
        if why:
            raise DownloadError(_manual_message(filename, target, why, repo_id))
        out.mkdir(parents=True, exist_ok=True)
        try:
            path = Path(_hub_download(repo_id, filename, out, revision=revision, force=force))
        except Exception as err:  # network, auth, missing file: one clear message, no traceback
            raise DownloadError(_manual_message(filename, target, f"{type(err).__name__}: {err}", repo_id)) from err
        if path.resolve() != target.resolve():
            os.replace(path, target)
    if check:
        from .records import check_file
        check_file(target, kind, limit=1000)
    return target


# the files of a model repository worth fetching: config, weights (either format), tokenizer, template
MODEL_FILES = ["*.json", "*.safetensors", "*.bin", "*.pth", "*.jinja", "*.txt", "*.model"]


def _hub_snapshot(repo_id: str, revision=None) -> str:
    """The one network call for models (tests replace it): a cached snapshot in huggingface_hub's cache."""
    from huggingface_hub import snapshot_download
    return snapshot_download(repo_id=repo_id, revision=revision, allow_patterns=MODEL_FILES)


def download_model(repo_id: str, revision: str | None = None) -> Path:
    """A model repository from the hub (e.g. "jingyaogong/MiniMind2-Small") as a local folder in
    huggingface_hub's cache (HF_HOME); fetched once, reused afterwards, even offline."""
    try:  # already cached: no network needed
        from huggingface_hub import snapshot_download
        return Path(snapshot_download(repo_id=repo_id, revision=revision, allow_patterns=MODEL_FILES,
                                      local_files_only=True))
    except Exception:
        pass
    manual = (f"  fix: on a machine with internet run `hf download {repo_id} --local-dir {repo_id.split('/')[-1]}`"
              f" (pip install huggingface_hub), copy that folder here and pass its path instead of {repo_id!r}; "
              "or set HF_ENDPOINT to a mirror you can reach (e.g. https://hf-mirror.com)")
    why = _offline_reason()
    if why:
        raise DownloadError(f"cannot download the model {repo_id!r} from the Hugging Face hub ({why}).\n{manual}")
    try:
        return Path(_hub_snapshot(repo_id, revision))
    except Exception as err:  # no such repo, auth, network: one clear message
        raise DownloadError(f"cannot download the model {repo_id!r} from the Hugging Face hub "
                            f"({type(err).__name__}: {err}).\n{manual}") from err
