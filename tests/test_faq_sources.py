"""The FAQ parsers on small pages written here in the shape of the real packages (no download): the Debian FAQ's
DocBook HTML chapters in two languages and the Python FAQ's reStructuredText."""
from __future__ import annotations

from pathlib import Path

from runner.dataprep import faq

CHAPTER_EN = """<html><body><div class="chapter"><div class="titlepage"><div><div>
<h1 class="title"><a id="pkg-basics"></a>Chapter 7. Basics of the Debian package management system</h1></div></div></div>
<div class="toc"><dl class="toc"><dt><span class="section"><a href="pkg-basics.en.html#package">7.1. What is a Debian
package?</a></span></dt></dl></div>
<div class="section"><div class="titlepage"><div><div>
<h2 class="title"><a id="package"></a>7.1. What is a Debian package?</h2></div></div></div><p>Packages generally
contain all of the files necessary to implement a set of related commands.</p></div>
<div class="section"><div class="titlepage"><div><div>
<h2 class="title"><a id="priority"></a>7.7. What is an <span class="emphasis"><em>Essential</em></span>,
<span class="emphasis"><em>Required</em></span> package?</h2></div></div></div><p>...</p>
<div class="section"><h3 class="title"><a id="sub"></a>7.7.1. A subsection is not a question</h3></div></div>
</div></body></html>"""

CHAPTER_DE = CHAPTER_EN.replace("Chapter 7. Basics of the Debian package management system",
                                "Kapitel 7. Grundlagen des Debian-Paketverwaltungssystems") \
    .replace("7.1. What is a Debian package?</h2>", "7.1. Was ist ein Debian-Paket?</h2>") \
    .replace("What is an <span", "Was ist ein <span").replace("Required</em></span> package?", "Required</em></span> Paket?")

CHAPTER_JA = """<h1 class="title"><a id="kernel"></a>第11章 Debian と カーネル</h1>
<h2 class="title"><a id="non-debian-kernel"></a>11.1. Debian 固有のパッチなしでカーネルを構築できますか?</h2>"""

RST = """:tocdepth: 2

==================
General Python FAQ
==================

.. contents::

General Information
===================

What is Python?
---------------

Python is an interpreted, interactive, object-oriented programming language.

Why was Python created in the first place?
------------------------------------------

Here's a *very* brief summary of what started it all.

Python in the real world
========================

How stable is Python?
---------------------

Very stable.

   ----------
   An indented rule inside a quoted block is not a title.
"""


def write_debian(root: Path, pages: dict[str, str]) -> Path:
    for rel, text in pages.items():
        p = root / "usr" / "share" / "doc" / "debian" / "FAQ" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text, encoding="utf-8")
    return root


def test_debian_chapter_questions_titles_and_anchors():
    chapter, title, questions = faq.debian_faq_chapter(CHAPTER_EN)
    assert chapter == "pkg-basics" and title == "Basics of the Debian package management system"
    # the table of contents' links are not questions; h3 subsections are not questions; nested tags flatten
    assert questions == [("package", "What is a Debian package?"),
                         ("priority", "What is an Essential, Required package?")]
    assert faq.debian_faq_chapter(CHAPTER_JA) == ("kernel", "Debian と カーネル", [
        ("non-debian-kernel", "Debian 固有のパッチなしでカーネルを構築できますか?")])


def test_debian_package_records_share_question_ids_across_languages(tmp_path):
    en = faq.debian_faq(write_debian(tmp_path / "en", {"pkg-basics.en.html": CHAPTER_EN,
                                                       "index.en.html": "<h1><a id='x'></a>The FAQ</h1><h2><a id='y'></a>1.1. toc</h2>"}),
                        "debian-faq", "11.1")
    de = faq.debian_faq(write_debian(tmp_path / "de", {"de/pkg-basics.de.html": CHAPTER_DE}), "debian-faq-de", "11.1")
    assert [r["question_id"] for r in en] == [r["question_id"] for r in de] == \
        ["debian-faq/pkg-basics#package", "debian-faq/pkg-basics#priority"]   # the index page is skipped
    assert {r["language"] for r in en} == {"en"} and {r["language"] for r in de} == {"de"}
    assert {r["chapter"] for r in en + de} == {"debian/pkg-basics"}
    assert de[0] == {"id": "debian-faq-de:de:pkg-basics#package", "question_id": "debian-faq/pkg-basics#package",
                     "question": "Was ist ein Debian-Paket?", "language": "de", "chapter": "debian/pkg-basics",
                     "chapter_title": "Grundlagen des Debian-Paketverwaltungssystems", "faq": "debian-faq",
                     "package": "debian-faq-de", "version": "11.1",
                     "file": "usr/share/doc/debian/FAQ/de/pkg-basics.de.html"}
    paired = faq.with_english(en + de)
    assert [r["question_en"] for r in paired if r["language"] == "de"] == \
        ["What is a Debian package?", "What is an Essential, Required package?"]
    assert faq.with_english(de)[0]["question_en"] is None   # no English in the set: no reference


def test_rst_titles_levels_follow_first_appearance():
    titles = faq.rst_titles(RST)
    assert [(lvl, t) for lvl, t, _ in titles] == [
        (0, "General Python FAQ"), (1, "General Information"), (2, "What is Python?"),
        (2, "Why was Python created in the first place?"), (1, "Python in the real world"),
        (2, "How stable is Python?")]


def test_python_faq_records(tmp_path):
    doc = tmp_path / "usr" / "share" / "doc" / "python3.11" / "html" / "_sources" / "faq"
    doc.mkdir(parents=True)
    (doc / "general.rst.txt").write_text(RST)
    (doc / "index.rst.txt").write_text("###\nFAQ\n###\n\n.. toctree::\n\n   general.rst\n")
    link = tmp_path / "usr" / "share" / "doc" / "python3.11-doc"
    link.mkdir()
    (link / "html").symlink_to("../python3.11/html")   # as in the package: the same files twice
    recs = faq.python_faq(tmp_path, "python3.11-doc", "3.11.2-6+deb12u8")
    assert [(r["section"], r["question"]) for r in recs] == [
        ("General Information", "What is Python?"),
        ("General Information", "Why was Python created in the first place?"),
        ("Python in the real world", "How stable is Python?")]
    assert recs[0]["question_id"] == "python-faq/general#what-is-python"
    assert {r["chapter"] for r in recs} == {"python/general"} and {r["language"] for r in recs} == {"en"}
    assert recs[0]["chapter_title"] == "General Python FAQ"


def test_python_faq_questions_that_slug_alike_get_distinct_ids(tmp_path):
    doc = tmp_path / "usr" / "share" / "doc" / "python3.11" / "html" / "_sources" / "faq"
    doc.mkdir(parents=True)
    (doc / "extending.rst.txt").write_text(
        "=====\nFAQ\n=====\n\nWriting C\n=========\n\nCan I create my own functions in C?\n"
        "-----------------------------------\n\nYes.\n\nCan I create my own functions in C++?\n"
        "-------------------------------------\n\nYes.\n")
    recs = faq.python_faq(tmp_path, "python3.11-doc", "3.11.2-6+deb12u8")
    assert [r["question_id"] for r in recs] == ["python-faq/extending#can-i-create-my-own-functions-in-c",
                                                 "python-faq/extending#can-i-create-my-own-functions-in-c-2"]
    assert len({r["id"] for r in recs}) == 2


def build_deb(tmp: Path, name: str, version: str, pages: dict[str, str]) -> Path:
    """A real .deb (dpkg-deb -b) holding the given files, as the Debian archive ships them."""
    import subprocess
    root = tmp / f"{name}-build"
    for rel, text in pages.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(f"Package: {name}\nVersion: {version}\nArchitecture: all\n"
                                             "Maintainer: tests <t@example.org>\nDescription: test fixture\n")
    out = tmp / "debs" / f"{name}_{version}_all.deb"
    out.parent.mkdir(exist_ok=True)
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "-b", str(root), str(out)], check=True,
                   capture_output=True)
    return out


def test_debian_source_pins_unpacks_parses_and_filters(tmp_path, monkeypatch):
    """data.sources[].debian: packages from a folder of .deb files (no download), checked against their sha256,
    unpacked into the user cache, parsed, mapped and filtered like any source; a wrong pin and a missing package
    are refused with the package, the version and what to do."""
    import hashlib

    import pytest

    from runner.dataprep import sources
    from runner.stage import StageError
    monkeypatch.setenv("FORGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("FORGE_DEBS", raising=False)
    faq_dir = "usr/share/doc/debian/FAQ/"
    debs = {n: build_deb(tmp_path, n, "11.1", pages) for n, pages in (
        ("debian-faq", {faq_dir + "pkg-basics.en.html": CHAPTER_EN}),
        ("debian-faq-de", {faq_dir + "de/pkg-basics.de.html": CHAPTER_DE}))}
    pin = {n: hashlib.sha256(p.read_bytes()).hexdigest() for n, p in debs.items()}
    packages = [{"name": n, "version": "11.1", "sha256": pin[n], "parser": "debian-faq", "license": "verbatim copies"}
                for n in debs]
    source = {"debian": {"packages": packages, "folder": str(tmp_path / "debs")},
              "mapping": {"input": "question", "output": "question_en", "id": "id", "language": "language"},
              "where": {"language": ["de"]}}
    tally: dict = {}
    recs = sources.load(source, tally=tally)
    assert {k: tally[k] for k in ("rows", "filtered_out", "no_output", "records")} == {
        "rows": 4, "filtered_out": 2, "no_output": 0, "records": 2}
    assert [(p["name"], p["sha256"], p["from"], p["questions"], p["languages"]) for p in tally["packages"]] == [
        ("debian-faq", pin["debian-faq"], "folder", 2, ["en"]), ("debian-faq-de", pin["debian-faq-de"], "folder", 2, ["de"])]
    assert [(r["id"], r["document"], r["gold"], r["language"]) for r in recs] == [
        ("debian-faq-de:de:pkg-basics#package", "Was ist ein Debian-Paket?", "What is a Debian package?", "de"),
        ("debian-faq-de:de:pkg-basics#priority", "Was ist ein Essential, Required Paket?",
         "What is an Essential, Required package?", "de")]
    assert recs[0]["source"] == "debian-faq-de:usr/share/doc/debian/FAQ/de/pkg-basics.de.html#package"
    # classification: every language, the chapter as the label
    both = sources.load({**source, "mapping": {"input": "question", "output": "chapter", "group": "question_id"},
                         "where": {}})
    assert len(both) == 4 and {r["gold"] for r in both} == {"debian/pkg-basics"}
    assert sorted(r["group"] for r in both) == ["debian-faq/pkg-basics#package"] * 2 + ["debian-faq/pkg-basics#priority"] * 2
    # a different build than the pin: refused, nothing unpacked
    bad = {**source, "debian": {**source["debian"], "packages": [{**packages[0], "version": "11.1",
                                                                  "sha256": "0" * 64, "name": "debian-faq"}]}}
    import shutil
    shutil.rmtree(tmp_path / "cache")
    with pytest.raises(StageError, match=r"debian-faq=11.1: .*sha256 .* pinned to 0{64}"):
        sources.load(bad)
    # a package neither in the folder nor downloadable: says which and how to provide it
    gone = {**source, "debian": {**source["debian"], "packages": [{**packages[0], "name": "forge-no-such-faq"}]}}
    with pytest.raises(StageError, match=r"forge-no-such-faq=11.1: .*put forge-no-such-faq_11.1_\{\w+,all\}.deb in "):
        sources.load(gone)


def test_rows_with_a_null_output_are_skipped_and_counted(tmp_path):
    from runner.dataprep import sources
    f = tmp_path / "q.jsonl"
    f.write_text('{"q": "Wie geht das?", "en": "How does it work?"}\n{"q": "Was ist das?", "en": null}\n')
    tally: dict = {}
    recs = sources.load({"path": str(f), "format": "auto", "mapping": {"input": "q", "output": "en"}}, tally=tally)
    assert [r["gold"] for r in recs] == ["How does it work?"]
    assert tally == {"rows": 2, "filtered_out": 0, "no_output": 1, "records": 1}
