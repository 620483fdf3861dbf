"""The book builds without warnings, and every page of the table of contents renders in a real browser:
its title, no error output, and every figure of the notebook loaded."""
import json
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml
from browser import chromium, needs_chromium

ROOT = Path(__file__).resolve().parents[1]
IMAGE_TYPES = ("image/png", "image/jpeg", "image/svg+xml", "image/gif")
# Jupyter Book 1.x puts sphinx-thebe's configuration script in every page twice, so the second copy's
# `const THEBE_JS_URL` throws; harmless (thebe only runs when a reader presses a launch button)
KNOWN_JS_ERRORS = ("Identifier 'THEBE_JS_URL' has already been declared",)


def toc_files() -> list[str]:
    """The root page and every chapter of _toc.yml, in reading order (paths without suffix)."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in toc.get("parts", []):
        files += [c["file"] for c in part.get("chapters", [])]
    return files


def source_of(page: str) -> Path:
    return next(p for p in (ROOT / f"{page}.ipynb", ROOT / f"{page}.md") if p.exists())


def expected_title(source: Path) -> str:
    """The first '# ' heading of a page's source (a notebook's markdown cells, or a .md file)."""
    if source.suffix == ".ipynb":
        nb = nbformat.read(source, as_version=4)
        text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    else:
        text = source.read_text()
    heading = re.search(r"^# (.+)$", text, re.M)
    assert heading, f"{source.name} has no '# ' title"
    return heading.group(1).strip()


def figure_count(source: Path) -> int:
    """Image outputs in a notebook (one per output, whatever its formats); 0 for a .md page."""
    if source.suffix != ".ipynb":
        return 0
    nb = nbformat.read(source, as_version=4)
    return sum(1 for c in nb.cells if c.cell_type == "code" for o in c.outputs
               if any(t in o.get("data", {}) for t in IMAGE_TYPES))


@pytest.fixture(scope="module")
def html(tmp_path_factory):
    out = tmp_path_factory.mktemp("book")
    jb = Path(sys.executable).with_name("jupyter-book")
    result = subprocess.run([str(jb), "build", str(ROOT), "--path-output", str(out), "--warningiserror",
                             "--keep-going"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out / "_build" / "html"


@pytest.mark.slow
def test_book_builds_with_every_chapter_and_figure(html):
    for nb_path in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        page = html / "notebooks" / f"{nb_path.stem}.html"
        assert page.exists(), f"{page.name} was not rendered"
        figures = figure_count(nb_path)
        assert page.read_text().count("<img") >= figures, f"{page.name} lacks some of its {figures} figures"


# what a page shows in the browser: its title, error outputs, and each image of the article with whether it
# loaded (complete, with a decoded width)
PAGE_STATE = """(() => {
  const article = document.querySelector('article') || document.querySelector('main') || document.body;
  const h1 = article.querySelector('h1');
  return {
    title: h1 ? h1.textContent.replace(/#$/, '').trim() : null,
    doc_title: document.title,
    errors: [...article.querySelectorAll('.output.traceback, .output.error')]
      .map(e => e.textContent.slice(0, 300)),
    tracebacks: article.textContent.includes('Traceback (most recent call last)'),
    images: [...article.querySelectorAll('img')].map(i => ({src: i.getAttribute('src'), loaded: i.complete,
                                                            width: i.naturalWidth})),
  };
})()"""


@pytest.mark.slow
@needs_chromium
def test_every_toc_page_renders_in_chromium(html, tmp_path):
    pages = toc_files()
    problems = []
    with chromium(tmp_path) as browser:
        browser.call("Runtime.enable")
        for page in pages:
            source = source_of(page)
            path = html / f"{page}.html"
            if not path.exists():
                problems.append(f"{page}: not rendered")
                continue
            browser.clear_events()
            browser.goto(path.as_uri())
            browser.wait("[...document.images].every(i => i.complete)", timeout=30)
            state = browser.js(PAGE_STATE)
            title = expected_title(source)
            if state["title"] != title or title not in state["doc_title"]:
                problems.append(f"{page}: title {state['title']!r} / {state['doc_title']!r}, expected {title!r}")
            if state["errors"] or state["tracebacks"]:
                problems.append(f"{page}: error output {state['errors'][:2]}")
            broken = [i["src"] for i in state["images"] if not (i["loaded"] and i["width"] > 0)]
            if broken:
                problems.append(f"{page}: images that did not load: {broken}")
            loaded = len(state["images"]) - len(broken)
            if loaded < figure_count(source):
                problems.append(f"{page}: {loaded} images shown, the notebook has {figure_count(source)} figures")
            thrown = [e for e in browser.exceptions() if not any(k in e for k in KNOWN_JS_ERRORS)]
            if thrown:
                problems.append(f"{page}: JavaScript exceptions {thrown[:2]}")
        browser.goto((html / f"{pages[0]}.html").as_uri())  # a last look: the sidebar lists every chapter
        listed = browser.js("[...document.querySelectorAll('nav.bd-links a')].map(a => a.getAttribute('href'))")
    assert not problems, "\n".join(problems)
    missing = [p for p in pages[1:] if not any(Path(h).with_suffix("").as_posix().endswith(Path(p).name)
                                               for h in listed)]
    assert not missing, f"the sidebar does not link {missing}: {json.dumps(listed)}"
