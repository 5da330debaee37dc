"""The book's structure and apparatus: table of contents, numbering, bibliography, cross-references.

The full build (``make book``) executes every notebook; here the book is built with execution
off, so a broken table of contents, reference or directive fails in seconds. The build runs on
a copy of the sources in which (1) every cell that declares a figure (myst-nb ``mystnb.figure``
metadata) gets a placeholder image as its output, standing in for the executed figure, (2) every
number the prose takes from a run (``{glue:text}`key```) gets a placeholder glue output, so the
glue references resolve (whether each key is really glued is checked by ``make book``, which
executes the chapters with ``-W``), and (3) one extra probe chapter exercises figure, chapter and equation numbering and their
cross-references, so the mechanism is checked before the chapters use it.
"""

from __future__ import annotations

import base64
import importlib
import io
import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the tomli backport (dev extra)
    import tomli as tomllib

import pytest
import yaml
from PIL import Image
from pybtex.database import parse_file

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
BIBLIOGRAPHY = ROOT / "book" / "references.bib"
CHAPTER_PARTS = ("CLIP", "WinCLIP", "FE-CLIP", "Practice")
PROBE = "notebooks/zz_probe"  # the probe chapter added to the build copy only
CITE_ROLE = re.compile(r"\{cite(?::\w+)?\}`([^`]+)`")
# What the bibliography must hold (issue 12): the method, its sources, related methods, data sets, losses, metrics.
REQUIRED_ENTRIES = {
    "gong2025feclip", "radford2021clip", "jeong2023winclip", "chen2023aprilgan", "zhou2024anomalyclip",
    "cao2024adaclip", "qu2024vcpclip", "bergmann2019mvtec", "bergmann2021mvtec", "zou2022visa",
    "mishra2021btad", "jezek2021mpdd", "lin2017focal", "milletari2016vnet", "bergmann2020uninformed",
    "ahmed1974dct", "hwang2026feclip", "ilharco2021openclip",
}


def _toc() -> dict:
    return yaml.safe_load((ROOT / "_toc.yml").read_text())


def _config() -> dict:
    return yaml.safe_load((ROOT / "_config.yml").read_text())


def _toc_files() -> list[str]:
    toc = _toc()
    files = [toc["root"]]
    for part in toc["parts"]:
        assert part.get("caption"), f"every part needs a caption: {part}"
        files += [chapter["file"] for chapter in part["chapters"]]
    return files


def _page_sources() -> dict[str, str]:
    """The text of every page: the book/*.md pages and the markdown cells of the notebooks."""
    sources = {path.relative_to(ROOT).as_posix(): path.read_text() for path in sorted((ROOT / "book").glob("*.md"))}
    for notebook in NOTEBOOKS:
        cells = json.loads(notebook.read_text())["cells"]
        sources[notebook.relative_to(ROOT).as_posix()] = "\n".join(
            "".join(cell["source"]) for cell in cells if cell["cell_type"] == "markdown"
        )
    return sources


def test_toc_is_jb_book_with_the_expected_parts() -> None:
    toc = _toc()
    assert toc["format"] == "jb-book"
    captions = [part["caption"] for part in toc["parts"]]
    for wanted in CHAPTER_PARTS:
        assert wanted in captions


def test_chapter_parts_are_numbered_and_front_and_back_matter_are_not() -> None:
    for part in _toc()["parts"]:
        numbered = part.get("numbered", False)
        assert numbered is (part["caption"] in CHAPTER_PARTS), part["caption"]
    assert _config()["html"]["use_multitoc_numbering"] is True  # one count across the parts


def test_every_toc_entry_exists_and_every_notebook_is_in_the_toc() -> None:
    files = _toc_files()
    for entry in files:
        candidates = [ROOT / f"{entry}{suffix}" for suffix in (".md", ".ipynb")]
        assert any(c.is_file() for c in candidates), f"{entry} in _toc.yml has no .md or .ipynb file"
    listed = {entry for entry in files if entry.startswith("notebooks/")}
    assert {f"notebooks/{nb.stem}" for nb in NOTEBOOKS} == listed


def test_config_executes_with_cache_and_a_timeout() -> None:
    config = _config()
    assert config["execute"]["execute_notebooks"] == "cache"
    assert config["execute"]["timeout"] > 0
    assert config["launch_buttons"]["colab_url"].startswith("https://colab.research.google.com")
    assert "dollarmath" in config["parse"]["myst_enable_extensions"]


def test_config_sets_up_the_apparatus() -> None:
    config = _config()
    for key in ("logo",):
        assert (ROOT / config[key]).is_file(), config[key]
    html = config["html"]
    assert (ROOT / html["favicon"]).is_file(), html["favicon"]
    assert html["use_edit_page_button"] is True
    assert html["baseurl"].startswith("https://") and html["baseurl"].endswith("/")
    assert len(config["title"]) <= 20, "the sidebar title must fit beside the logo"
    assert [ROOT / path for path in config["bibtex_bibfiles"]] == [BIBLIOGRAPHY]
    sphinx = config["sphinx"]
    assert sphinx["config"]["bibtex_reference_style"] == "author_year"
    assert {"sphinx_exercise", "sphinx-mathjax-offline"} <= set(sphinx["extra_extensions"])
    assert "mathjax_path" not in sphinx["config"], "MathJax comes with the book, not from a CDN"


def test_book_extensions_are_declared_and_installed() -> None:
    book_extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["book"]
    names = {re.split(r"[<>=!~\[ ;]", requirement, maxsplit=1)[0] for requirement in book_extra}
    assert {"sphinx-exercise", "sphinx-mathjax-offline"} <= names
    for module in _config()["sphinx"]["extra_extensions"]:
        importlib.import_module(module)


def test_every_bibliography_entry_has_a_doi_an_arxiv_id_or_an_address() -> None:
    for key, entry in parse_file(str(BIBLIOGRAPHY)).entries.items():
        fields = {name.lower() for name in entry.fields}
        assert fields & {"doi", "eprint", "url"}, f"{key} has no DOI, arXiv id or URL"
        if "eprint" in fields:
            assert re.fullmatch(r"\d{4}\.\d{4,5}", entry.fields["eprint"]), f"{key}: not an arXiv id"
        if "doi" in fields:
            assert entry.fields["doi"].startswith("10."), f"{key}: not a DOI"


def test_the_bibliography_covers_the_works_the_book_builds_on() -> None:
    keys = set(parse_file(str(BIBLIOGRAPHY)).entries)
    assert REQUIRED_ENTRIES <= keys, REQUIRED_ENTRIES - keys


def test_every_entry_is_cited_and_every_citation_has_an_entry() -> None:
    keys = set(parse_file(str(BIBLIOGRAPHY)).entries)
    cited: dict[str, set[str]] = {}
    for page, text in _page_sources().items():
        for match in CITE_ROLE.finditer(text):
            for key in match.group(1).split(","):
                cited.setdefault(key.strip(), set()).add(page)
    assert keys - set(cited) == set(), f"entries never cited: {sorted(keys - set(cited))}"
    unknown = {key: sorted(pages) for key, pages in cited.items() if key not in keys}
    assert not unknown, f"citations without an entry: {unknown}"


def test_the_reference_implementation_is_defined_once_with_its_address() -> None:
    intro = (ROOT / "book" / "intro.md").read_text()
    glossary = (ROOT / "book" / "glossary.md").read_text()
    address = "https://github.com/taewanHwang/anomalib"
    assert "**The reference implementation**" in intro and address in intro
    assert "\nReference implementation\n" in glossary and address in glossary
    assert "hwang2026feclip" in intro and "hwang2026feclip" in glossary


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_notebooks_are_committed_without_outputs(notebook: Path) -> None:
    cells = json.loads(notebook.read_text())["cells"]
    for index, cell in enumerate(cells):
        if cell["cell_type"] == "code":
            assert not cell.get("outputs"), f"{notebook.name} cell {index} has outputs"
            assert cell.get("execution_count") is None, f"{notebook.name} cell {index} has an execution count"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_notebooks_follow_the_chapter_shape(notebook: Path) -> None:
    cells = json.loads(notebook.read_text())["cells"]
    text = "\n".join("".join(c["source"]) for c in cells)
    code = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
    assert "colab.research.google.com" in text, f"{notebook.name}: no Colab badge"
    assert "FECLIP_PROFILE" in code[1] or "FECLIP_PROFILE" in code[0] or "resolve_profile" in code[1], (
        f"{notebook.name}: the parameters cell must set PROFILE from FECLIP_PROFILE"
    )
    for heading in ("## Summary", "## Exercises"):
        assert heading in text, f"{notebook.name}: missing '{heading}'"
    assert "import feclip" in text or "from feclip" in text
    assert "assert " in "\n".join(code), f"{notebook.name}: asserts nothing"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.name)
def test_notebooks_use_no_live_interact(notebook: Path) -> None:
    """``widgets.interact`` can stall an unattended kernel run for minutes (jupyter/nbclient#312): use interact_manual."""
    code = "\n".join("".join(c["source"]) for c in json.loads(notebook.read_text())["cells"] if c["cell_type"] == "code")
    assert "widgets.interact(" not in code and "@interact\n" not in code, notebook.name


# --- the built book -----------------------------------------------------------------------------------


@dataclass
class BuiltBook:
    """A finished build: the command's result, the HTML folder and the figure names it must show."""

    result: subprocess.CompletedProcess
    html: Path
    figure_names: list[str]

    def page(self, name: str) -> str:
        return (self.html / f"{name}.html").read_text()


def _placeholder_png() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 120, 40)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _probe_notebook() -> dict:
    """A chapter with one numbered figure, one numbered equation and references to both."""
    markdown = [
        "(ch-probe)=\n# Probe\n\nThis is {numref}`Chapter %s <ch-probe>`; its figure is {numref}`fig-probe`.",
        "$$\na = b\n$$ (eq-probe)\n\nEquation {eq}`eq-probe` and the book's {eq}`eq-fusion`.",
    ]
    figure = {"mystnb": {"figure": {"name": "fig-probe", "caption": "A probe figure: notice the orange square."}}}
    cells = [{"cell_type": "markdown", "metadata": {}, "source": text} for text in markdown]
    cells.append({"cell_type": "code", "metadata": figure, "source": "draw()", "outputs": [], "execution_count": None})
    return {"cells": cells, "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
            "nbformat": 4, "nbformat_minor": 5}


GLUE_REFERENCE = re.compile(r"\{glue(?::\w+)?\}`([^`:]+)")


@pytest.fixture(scope="module")
def built_book(tmp_path_factory: pytest.TempPathFactory) -> BuiltBook:
    tmp = tmp_path_factory.mktemp("book")
    source = tmp / "src"
    ignored = shutil.ignore_patterns(".*", "_build", "*.egg-info", "__pycache__", "feclip", "tests", "benchmarks",
                                     "data", "runs", "wheels")
    shutil.copytree(ROOT, source, ignore=ignored)
    (source / f"{PROBE}.ipynb").write_text(json.dumps(_probe_notebook()))
    toc = _toc()
    next(part for part in toc["parts"] if part["caption"] == "Practice")["chapters"].append({"file": PROBE})
    (source / "_toc.yml").write_text(yaml.safe_dump(toc, sort_keys=False))

    placeholder = {"output_type": "display_data", "data": {"image/png": _placeholder_png()}, "metadata": {}}
    names = []
    for notebook in sorted((source / "notebooks").glob("*.ipynb")):
        content = json.loads(notebook.read_text())
        for cell in content["cells"]:
            name = cell.get("metadata", {}).get("mystnb", {}).get("figure", {}).get("name")
            if cell["cell_type"] == "code" and name:
                cell["outputs"] = [placeholder]
                names.append(name)
        glued = sorted({key for cell in content["cells"] if cell["cell_type"] == "markdown"
                        for key in GLUE_REFERENCE.findall("".join(cell["source"]))})
        if glued:
            first_code = next(cell for cell in content["cells"] if cell["cell_type"] == "code")
            first_code["outputs"] = first_code.get("outputs", []) + [
                {"output_type": "display_data", "data": {"text/plain": "0.5"},
                 "metadata": {"scrapbook": {"name": key, "mime_prefix": ""}}} for key in glued]
        notebook.write_text(json.dumps(content))

    config = _config()
    config["execute"]["execute_notebooks"] = "off"
    config_path = tmp / "_config.yml"
    config_path.write_text(yaml.safe_dump(config))
    jupyter_book = Path(sys.executable).parent / "jupyter-book"
    command = [str(jupyter_book if jupyter_book.exists() else shutil.which("jupyter-book")), "build", str(source)]
    command += ["--config", str(config_path), "--path-output", str(tmp / "out"), "-W", "--keep-going", "-q"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    return BuiltBook(result, tmp / "out" / "_build" / "html", names)


def test_book_builds_without_warnings_with_execution_off(built_book: BuiltBook) -> None:
    assert built_book.result.returncode == 0, built_book.result.stdout[-4000:] + built_book.result.stderr[-4000:]
    assert (built_book.html / "book" / "intro.html").is_file()


def _heading(page: str) -> str:
    match = re.search(r"<h1>((?:(?!</h1>).)*?)<a class=\"headerlink\"", page, flags=re.S)
    assert match, "no h1"
    return match.group(1)


def test_chapters_are_numbered_one_to_nine_and_the_other_pages_are_not(built_book: BuiltBook) -> None:
    for number, notebook in enumerate(NOTEBOOKS, start=1):
        heading = _heading(built_book.page(f"notebooks/{notebook.stem}"))
        assert heading.startswith(f'<span class="section-number">{number}. </span>'), (notebook.name, heading)
    for page in ("intro", "how_to_run", "references", "glossary"):
        assert "section-number" not in _heading(built_book.page(f"book/{page}")), page
    sections = re.findall(r'<h2><span class="section-number">([\d.]+) </span>', built_book.page("notebooks/03_frequencies"))
    assert sections[:2] == ["3.1.", "3.2."], sections


def test_figures_get_numbered_captions_and_numref_links(built_book: BuiltBook) -> None:
    assert "fig-probe" in built_book.figure_names
    for name in built_book.figure_names:
        page = next(path for path in built_book.html.rglob("*.html") if f'<figure class="align-default" id="{name}"' in path.read_text())
        figure = page.read_text().split(f'id="{name}"', 1)[1].split("</figure>", 1)[0]
        assert re.search(r'<span class="caption-number">Fig\. \d+\.\d+ </span>', figure), name
        assert "<img" in figure and "<figcaption>" in figure, name
    probe = built_book.page(PROBE)
    chapter = len(NOTEBOOKS) + 1
    assert f'<span class="caption-number">Fig. {chapter}.1 </span>' in probe
    assert "notice the orange square" in probe
    assert re.search(rf'href="#fig-probe"><span class="std std-numref">Fig\. {chapter}\.1</span>', probe)
    assert re.search(rf'href="#ch-probe"><span class="std std-numref">Chapter {chapter}</span>', probe)


def test_equations_are_numbered_and_referenced_across_pages(built_book: BuiltBook) -> None:
    chapter = len(NOTEBOOKS) + 1
    probe = built_book.page(PROBE)
    assert f'<span class="eqno">({chapter}.1)' in probe
    assert re.search(rf'href="#equation-eq-probe">\({chapter}\.1\)</a>', probe)
    assert '<span class="eqno">(1)' in built_book.page("book/intro")
    for page in (PROBE, "book/how_to_run", "book/glossary"):
        assert "intro.html#equation-eq-fusion" in built_book.page(page), page


def test_glossary_terms_are_linked_from_the_pages(built_book: BuiltBook) -> None:
    glossary = built_book.page("book/glossary")
    for term in ("Zero-shot", "DCT", "Reference-implementation", "Smoke-profile", "Full-profile"):
        assert f'id="term-{term}"' in glossary, term
        assert f'href="glossary.html#term-{term}"' in built_book.page("book/intro"), term
    assert "https://github.com/taewanHwang/anomalib" in glossary


def test_bibliography_lists_every_entry_with_its_link(built_book: BuiltBook) -> None:
    references = built_book.page("book/references")
    entries = parse_file(str(BIBLIOGRAPHY)).entries
    assert references.count('role="doc-biblioentry"') == len(entries)
    for key, entry in entries.items():
        if "doi" in entry.fields:
            link = f"https://doi.org/{entry.fields['doi']}"
        elif "eprint" in entry.fields:
            link = f"https://arxiv.org/abs/{entry.fields['eprint']}"
        else:
            link = entry.fields["url"]
        assert f'href="{link}"' in references, (key, link)


def test_citations_are_author_year_and_link_to_the_bibliography(built_book: BuiltBook) -> None:
    intro = built_book.page("book/intro")
    assert re.search(r'href="references\.html#id\d+"[^>]*>Gong <em>et al\.</em>', intro)
    assert re.search(r'href="references\.html#id\d+"[^>]*>Radford <em>et al\.</em>, 2021</a>', intro)


def test_mathjax_is_served_with_the_book(built_book: BuiltBook) -> None:
    assert (built_book.html / "_static" / "mathjax" / "tex-chtml.js").is_file()
    assert (built_book.html / "_static" / "mathjax" / "output" / "chtml" / "fonts" / "woff-v2").is_dir()
    pages_with_maths = {"book/intro", "notebooks/03_frequencies", PROBE}
    for page in built_book.html.rglob("*.html"):
        sources = re.findall(r'<script[^>]*src="([^"]*mathjax[^"]*)"', page.read_text(), flags=re.I)
        assert all(src.endswith("_static/mathjax/tex-chtml.js") and "://" not in src for src in sources), (page, sources)
        if page.relative_to(built_book.html).with_suffix("").as_posix() in pages_with_maths:
            assert sources, f"{page} has maths but loads no MathJax"


def test_exercises_carry_badges_and_fold_their_solutions(built_book: BuiltBook) -> None:
    page = built_book.page("book/how_to_run")
    assert '<div class="exercise easy admonition" id="ex-how-to-run-cache">' in page
    assert '<div class="exercise medium full-profile admonition" id="ex-how-to-run-full">' in page
    assert page.count('<div class="solution dropdown admonition"') == 2
    assert "_static/togglebutton.js" in page and "_static/feclip.css" in page
    css = (built_book.html / "_static" / "feclip.css").read_text()
    for badge in ("easy", "medium", "hard", "full profile"):
        assert f'content: "{badge}' in css or f"\\00b7 {badge}" in css, badge


def test_logo_favicon_short_title_edit_button_and_base_url(built_book: BuiltBook) -> None:
    intro = built_book.page("book/intro")
    assert '<link rel="icon" href="../_static/favicon.png"/>' in intro
    assert 'src="../_static/logo.svg"' in intro and (built_book.html / "_static" / "logo.svg").is_file()
    assert '<p class="title logo__title">FE-CLIP</p>' in intro
    assert "https://github.com/feclip/feclip/edit/main/book/intro.md" in intro
    assert '<link rel="canonical" href="https://feclip.github.io/feclip/book/intro.html" />' in intro
