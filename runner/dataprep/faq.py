"""Questions out of human-written FAQs: the Debian FAQ's DocBook HTML (one file per chapter, the same section
anchors in every translation) and the Python FAQ's reStructuredText (one file per topic). Each question becomes
one record: its text, language, chapter, a question id that is the same in every translation, and where it came
from. Pure parsing: fetching the packages is `runner/dataprep/debs.py`'s job."""
from __future__ import annotations

import html.parser
import re
from pathlib import Path

NUMBER = re.compile(r"^\s*\d+(\.\d+)*\.?\s+")   # "7.1. " before a question, "Chapter 7. " stripped separately
CHAPTER = re.compile(r"^(\S+\s+\d+\.\s*|第\s*\d+\s*章\s*|\d+\s*장\.?\s*)")  # "Chapter 7. ", "Kapitel 7. ", "第1章 "
SKIP_CHAPTERS = ("index", "faqinfo")              # the table of contents and the FAQ about the FAQ


class _DocBookChapter(html.parser.HTMLParser):
    """The h1 (chapter title, its anchor is the chapter id) and every h2 (a question; its anchor is the question id)
    of one DocBook chapter page, as text with the tags inside removed."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.heads: list[tuple[str, str, str]] = []   # (tag, anchor, text)
        self._in: str | None = None
        self._anchor = ""
        self._text: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag in ("h1", "h2"):
            self._in, self._anchor, self._text = tag, "", []
        elif self._in and tag == "a" and not self._anchor:
            self._anchor = dict(attrs).get("id") or ""

    def handle_endtag(self, tag):
        if tag == self._in:
            self.heads.append((tag, self._anchor, " ".join("".join(self._text).split())))
            self._in = None

    def handle_data(self, data):
        if self._in:
            self._text.append(data)


def debian_faq_chapter(text: str) -> tuple[str, str, list[tuple[str, str]]]:
    """(chapter id, chapter title, [(question id, question)]) of one chapter page; question numbers are stripped
    ("7.1. What is a Debian package?" -> "What is a Debian package?")."""
    p = _DocBookChapter()
    p.feed(text)
    p.close()
    h1 = next(((a, t) for tag, a, t in p.heads if tag == "h1"), ("", ""))
    title = CHAPTER.sub("", h1[1])
    questions = [(a, NUMBER.sub("", t)) for tag, a, t in p.heads if tag == "h2" and a and NUMBER.sub("", t)]
    return h1[0], title, questions


def debian_faq(root: Path, package: str, version: str) -> list[dict]:
    """Every question of a `debian-faq*` package unpacked at `root`: chapter pages are
    usr/share/doc/debian/FAQ/[<lang>/]<chapter>.<lang>.html (English at the top, translations in a folder)."""
    base = root / "usr" / "share" / "doc" / "debian" / "FAQ"
    out = []
    for page in sorted(base.glob("**/*.html")):
        chapter, _, lang = page.name[:-len(".html")].rpartition(".")
        if not chapter or chapter in SKIP_CHAPTERS:
            continue
        anchor, title, questions = debian_faq_chapter(page.read_text(encoding="utf-8", errors="replace"))
        for qid, q in questions:
            out.append({"id": f"{package}:{lang}:{chapter}#{qid}", "question_id": f"debian-faq/{chapter}#{qid}",
                        "question": q, "language": lang, "chapter": f"debian/{chapter}", "chapter_title": title,
                        "faq": "debian-faq", "package": package, "version": version,
                        "file": str(page.relative_to(root))})
    return out


def rst_titles(text: str) -> list[tuple[int, str, int]]:
    """Section titles of a reStructuredText document as (level, title, line number): an underline (optionally
    with a matching overline) of one repeated punctuation character at least as long as the title. Levels follow
    the order in which the adornment styles first appear, as docutils does."""
    lines = text.splitlines()
    styles: list[tuple[str, bool]] = []
    out = []
    for i in range(1, len(lines)):
        under, title = lines[i].rstrip(), lines[i - 1].rstrip()
        if len(under) < 3 or len(set(under)) != 1 or under[0] not in "=-~^*+#\"'`:._" or not title.strip():
            continue
        if len(set(title.strip())) == 1 and title.strip()[0] == under[0]:   # the overline itself, not a title
            continue
        if len(title) > len(under):
            continue
        over = i >= 2 and lines[i - 2].rstrip() == under
        style = (under[0], over)
        if style not in styles:
            styles.append(style)
        out.append((styles.index(style), title.strip(), i))
    return out


def python_faq_file(text: str) -> tuple[str, list[tuple[str, str]]]:
    """(document title, [(section, question)]): questions are the titles one level below the sections
    (the deepest level in the file); the document title is the top one."""
    titles = rst_titles(text)
    if not titles:
        return "", []
    doc = next((t for lvl, t, _ in titles if lvl == 0), "")
    deepest = max(lvl for lvl, _, _ in titles)
    section, out = "", []
    for lvl, t, _ in titles:
        if lvl == deepest and deepest > 0:
            out.append((section, t))
        elif lvl > 0:
            section = t
    return doc, out


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:80]


def python_faq(root: Path, package: str, version: str) -> list[dict]:
    """Every question of the Python FAQ in a `python3.x-doc` package unpacked at `root`
    (usr/share/doc/python3.x/html/_sources/faq/<topic>.rst.txt; English only)."""
    out, pages = [], {}
    for page in sorted(root.glob("usr/share/doc/python3*/html/_sources/faq/*.rst.txt")):
        pages.setdefault(page.resolve(), page)    # python3.x-doc/html is a link to python3.x/html
    for page in sorted(pages.values()):
        topic = page.name[:-len(".rst.txt")]
        if topic == "index":
            continue
        title, questions = python_faq_file(page.read_text(encoding="utf-8", errors="replace"))
        seen: dict[str, int] = {}
        for section, q in questions:
            slug = _slug(q)   # "...in C?" and "...in C++?" slug alike: the second becomes <slug>-2, and so on
            seen[slug] = seen.get(slug, 0) + 1
            slug = slug if seen[slug] == 1 else f"{slug}-{seen[slug]}"
            qid = f"python-faq/{topic}#{slug}"
            out.append({"id": f"{package}:en:{topic}#{slug}", "question_id": qid, "question": q,
                        "language": "en", "chapter": f"python/{topic}", "chapter_title": title,
                        "section": section, "faq": "python-faq", "package": package, "version": version,
                        "file": str(page.relative_to(root))})
    return out


PARSERS = {"debian-faq": debian_faq, "python-faq": python_faq}


def with_english(records: list[dict]) -> list[dict]:
    """Each record gains `question_en`: the English text of the same question id (None when English lacks it);
    the human translations are the references for rendering a question into English."""
    en = {r["question_id"]: r["question"] for r in records if r["language"] == "en"}
    return [{**r, "question_en": en.get(r["question_id"])} for r in records]
