"""Course corpora and tokenizers built once per test session (the tests of tokenizer, corpus and data)."""
import functools
import tempfile
from pathlib import Path

from minimind.data.corpus import ensure_course_data

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "data" / "fixtures"
_TMP = Path(tempfile.mkdtemp(prefix="minimind-course-tests-"))


@functools.lru_cache(maxsize=None)
def course(size: str = "mini", seed: int = 0) -> dict:
    """ensure_course_data into a session temp folder: corpus paths plus "tokenizer"."""
    return ensure_course_data(_TMP / f"{size}-{seed}", seed=seed, size=size)


@functools.lru_cache(maxsize=None)
def tokenizer(size: str = "mini"):
    from minimind.data.tokenizer import MiniMindTokenizer
    return MiniMindTokenizer.from_pretrained(course(size)["tokenizer"])
