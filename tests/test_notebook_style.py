"""House style of the chapters (notebooks), as the published book needs it.

Each rule is a small checker that lists the violations it finds, tested on hand-made cells,
then applied to every chapter.

The patterns, exactly as the chapters write them:

* **Code fits the page**: no line of a code cell is longer than 88 characters.
* **Every figure has a caption and a number**: a code cell that draws a figure carries myst-nb
  cell metadata ``{"mystnb": {"figure": {"name": "fig-<chapter>-<what>", "caption": "<what
  to notice>"}}}``; one figure per cell. Prose refers to it with ``{numref}`fig-03-basis```
  (rendered "Fig. 3.2").
* **Widgets stay out of the HTML**: a cell that builds an ipywidget (``interact_manual``,
  ``widgets.*``) carries the cell tag ``remove-output``; the cell before or after it draws the
  same thing for a few values side by side, as a captioned figure.
* **Exercises**: under ``## Exercises``, each exercise is a sphinx-exercise directive with a
  label and one difficulty class (``easy``, ``medium`` or ``hard``), plus ``full-profile``
  when it needs the GPU, weights and data; its solution follows, folded::

      :::{exercise} Short title
      :label: ex-03-window
      :class: medium full-profile

      The task.
      :::

      :::{solution} ex-03-window
      :class: dropdown

      The answer.
      :::

* **Runtime note**: in a markdown cell before the first code cell::

      :::{admonition} Runtime
      :class: runtime
      Smoke profile: 40 s on a 2-core CPU (measured).
      Full profile: 25 min on one H100 (estimate).
      :::

  each line says ``measured`` or ``estimate``.
* **Cross-references, not "chapter 6"**: a chapter's title cell starts with a label such as
  ``(ch-training)=``; prose writes ``{numref}`Chapter %s <ch-training>``` or
  ``{doc}`06_training```, never a typed chapter number.
* **One name for one source**: "the reference implementation" (defined in book/intro.md and the
  glossary), never "the seed implementation".
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))

MAX_LINE = 88
DIFFICULTIES = {"easy", "medium", "hard"}
FULL_PROFILE = "full-profile"
# Attribute calls that draw into a figure (matplotlib, seaborn, pandas' .plot).
DRAWING_CALLS = {
    "bar", "barh", "boxplot", "contour", "contourf", "errorbar", "figure", "heatmap", "hist",
    "histplot", "imshow", "lineplot", "matshow", "pcolormesh", "plot", "scatter", "show",
    "stripplot", "subplots", "violinplot",
}
WIDGET_CALL = re.compile(r"\binteract(?:_manual)?\(|\binteractive\(|\bwidgets\.\w+\(")
DIRECTIVE = re.compile(r"^(?P<fence>`{3,}|:{3,})\{(?P<name>exercise|solution)\}[ \t]*(?P<argument>.*)$")
CHAPTER_NUMBER = re.compile(r"\b[Cc]hapters? \d")
ROLE_OR_CODE = re.compile(r"\{[\w:-]+\}`[^`]*`|`[^`]*`")


def _cells(notebook: Path) -> list[dict]:
    return json.loads(notebook.read_text())["cells"]


def _source(cell: dict) -> str:
    source = cell["source"]
    return source if isinstance(source, str) else "".join(source)


def _tags(cell: dict) -> set[str]:
    return set(cell.get("metadata", {}).get("tags", []))


def _python(source: str) -> ast.Module | None:
    """The cell's code as Python, IPython magics and shell escapes blanked; ``None`` if it does not parse."""
    lines = ["" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines()]
    try:
        return ast.parse("\n".join(lines))
    except SyntaxError:
        return None


def _calls(node: ast.AST, skip_definitions: bool) -> list[ast.Call]:
    """Calls under ``node``; with ``skip_definitions``, not those inside function or class bodies."""
    found, stack = [], [node]
    while stack:
        current = stack.pop()
        for child in ast.iter_child_nodes(current):
            if skip_definitions and isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
                continue
            if isinstance(child, ast.Call):
                found.append(child)
            stack.append(child)
    return found


def _draws(call: ast.Call, drawing_functions: set[str]) -> bool:
    function = call.func
    if isinstance(function, ast.Attribute):
        return function.attr in DRAWING_CALLS
    return isinstance(function, ast.Name) and function.id in drawing_functions


def figure_cells(cells: list[dict]) -> list[int]:
    """Indices of the code cells that draw a figure when run.

    A cell draws when, outside function bodies, it calls a drawing method (``plt.subplots``,
    ``ax.imshow``, ``frame.plot``, ...) or a function defined in the notebook that does. Cells
    that build a widget are left out: their output is removed (see :func:`unhidden_widgets`).
    """
    trees = {i: _python(_source(c)) for i, c in enumerate(cells) if c["cell_type"] == "code"}
    drawing_functions: set[str] = set()
    for _ in range(3):  # a drawing function may call another one defined earlier
        for tree in filter(None, trees.values()):
            for node in ast.walk(tree):
                if isinstance(node, ast.FunctionDef) and any(
                    _draws(call, drawing_functions) for call in _calls(node, skip_definitions=False)
                ):
                    drawing_functions.add(node.name)
    return [
        i
        for i, tree in trees.items()
        if tree is not None
        and not WIDGET_CALL.search(_source(cells[i]))
        and any(_draws(call, drawing_functions) for call in _calls(tree, skip_definitions=True))
    ]


def long_code_lines(cells: list[dict], limit: int = MAX_LINE) -> list[str]:
    """``cell N line M (L chars)`` for every code line longer than ``limit``."""
    return [
        f"cell {i} line {number} ({len(line)} chars)"
        for i, cell in enumerate(cells)
        if cell["cell_type"] == "code"
        for number, line in enumerate(_source(cell).splitlines(), start=1)
        if len(line) > limit
    ]


def uncaptioned_figures(cells: list[dict]) -> list[str]:
    """Figure cells without a ``mystnb.figure`` name (``fig-...``) and a caption of a few words."""
    problems = []
    for i in figure_cells(cells):
        if "remove-output" in _tags(cells[i]):
            continue
        figure = cells[i].get("metadata", {}).get("mystnb", {}).get("figure", {})
        name, caption = str(figure.get("name", "")), str(figure.get("caption", ""))
        if not re.fullmatch(r"fig-[a-z0-9]+(?:-[a-z0-9]+)*", name):
            problems.append(f"cell {i}: figure name {name!r} is not fig-<chapter>-<what>")
        if len(caption.split()) < 5:
            problems.append(f"cell {i}: caption {caption!r} does not say what to notice")
    return problems


def figure_names(cells: list[dict]) -> list[str]:
    """The ``mystnb.figure`` names the cells declare."""
    names = (c.get("metadata", {}).get("mystnb", {}).get("figure", {}).get("name") for c in cells)
    return [name for name in names if name]


def unhidden_widgets(cells: list[dict]) -> list[str]:
    """Code cells that build a widget but do not carry the ``remove-output`` tag."""
    return [
        f"cell {i}: builds a widget without the remove-output tag"
        for i, cell in enumerate(cells)
        if cell["cell_type"] == "code" and WIDGET_CALL.search(_source(cell)) and "remove-output" not in _tags(cell)
    ]


def _directives(markdown: str) -> list[tuple[str, str, dict[str, str]]]:
    """``(name, argument, options)`` of the exercise and solution directives in ``markdown``."""
    found, lines = [], markdown.splitlines()
    for index, line in enumerate(lines):
        match = DIRECTIVE.match(line.strip())
        if not match:
            continue
        options = {}
        for option in lines[index + 1 :]:
            option_match = re.match(r"^\s*:(\w[\w-]*):\s*(.*)$", option)
            if not option_match:
                break
            options[option_match.group(1)] = option_match.group(2).strip()
        found.append((match.group("name"), match.group("argument").strip(), options))
    return found


def exercise_problems(cells: list[dict]) -> list[str]:
    """Violations of the exercise pattern in the ``## Exercises`` section."""
    markdown = "\n".join(_source(c) for c in cells if c["cell_type"] == "markdown")
    if "## Exercises" not in markdown:
        return ["no '## Exercises' section"]
    directives = _directives(markdown.split("## Exercises", 1)[1])
    exercises = [(argument, options) for name, argument, options in directives if name == "exercise"]
    solutions = {argument: options for name, argument, options in directives if name == "solution"}
    if not exercises:
        return ["the Exercises section has no {exercise} directive"]
    problems = []
    for title, options in exercises:
        label, classes = options.get("label", ""), set(options.get("class", "").split())
        if not label:
            problems.append(f"exercise {title!r} has no :label:")
        if len(classes & DIFFICULTIES) != 1 or classes - DIFFICULTIES - {FULL_PROFILE}:
            problems.append(f"exercise {title!r}: :class: must be one of easy/medium/hard (+ full-profile)")
        solution = solutions.get(label)
        if solution is None:
            problems.append(f"exercise {title!r} has no {{solution}} {label}")
        elif "dropdown" not in solution.get("class", "").split():
            problems.append(f"solution {label} is not folded (:class: dropdown)")
    return problems


def runtime_note_problems(cells: list[dict]) -> list[str]:
    """Violations of the runtime-note pattern (before the first code cell)."""
    first_code = next((i for i, c in enumerate(cells) if c["cell_type"] == "code"), len(cells))
    intro = "\n".join(_source(c) for c in cells[:first_code] if c["cell_type"] == "markdown")
    notes = [block for block in re.split(r"^:{3,}\{admonition\}", intro, flags=re.M)[1:] if ":class: runtime" in block]
    if len(notes) != 1:
        return [f"{len(notes)} runtime notes before the first code cell, want 1"]
    problems = []
    for profile in ("Smoke profile", "Full profile"):
        line = next((line for line in notes[0].splitlines() if profile.lower() in line.lower()), None)
        if line is None:
            problems.append(f"the runtime note has no '{profile}:' line")
        elif "measured" not in line and "estimate" not in line:
            problems.append(f"'{line.strip()}' says neither measured nor estimate")
    return problems


def typed_chapter_numbers(cells: list[dict]) -> list[str]:
    """Prose that types a chapter number ("chapter 6") instead of a cross-reference."""
    problems = []
    for i, cell in enumerate(cells):
        if cell["cell_type"] != "markdown":
            continue
        prose = ROLE_OR_CODE.sub("", _source(cell))
        problems += [f"cell {i}: {match.group(0)!r}" for match in CHAPTER_NUMBER.finditer(prose)]
    return problems


def seed_implementation_mentions(cells: list[dict]) -> list[str]:
    """Cells that say "seed implementation" (the book's term is "the reference implementation")."""
    return [
        f"cell {i} ({cell['cell_type']})"
        for i, cell in enumerate(cells)
        for _ in re.finditer(r"seed implementation", _source(cell), flags=re.I)
    ]


def _markdown(text: str, **metadata) -> dict:
    return {"cell_type": "markdown", "metadata": metadata, "source": text}


def _code(text: str, **metadata) -> dict:
    return {"cell_type": "code", "metadata": metadata, "source": text, "outputs": [], "execution_count": None}


CAPTION = {"mystnb": {"figure": {"name": "fig-03-basis", "caption": "The eight basis vectors: notice the sign changes."}}}


# --- the checkers, on hand-made cells -----------------------------------------------------------------


def test_long_code_lines_counts_characters_per_line() -> None:
    cells = [_code("x = 1\n" + "y" * 88 + "\n" + "z" * 89), _markdown("w" * 200)]
    assert long_code_lines(cells) == ["cell 0 line 3 (89 chars)"]


def test_figure_cells_follow_calls_not_text() -> None:
    cells = [
        _code("import matplotlib.pyplot as plt\nFIGURE_SIZE = 3  # plt.subplots is mentioned here only"),
        _code("def draw(ax):\n    ax.imshow(x)\n\ndef panel():\n    fig, ax = plt.subplots()\n    draw(ax)"),
        _code("panel()"),
        _code("fig, ax = plt.subplots()\nax.plot([1, 2])\nplt.show()"),
        _code("frame.plot(marker='o')"),
        _code("widgets.interact_manual(panel)"),
        _code("%matplotlib inline\nvalues = compute()"),
    ]
    assert figure_cells(cells) == [2, 3, 4]


def test_uncaptioned_figures_wants_a_name_and_a_caption() -> None:
    draw = "fig, ax = plt.subplots()"
    assert uncaptioned_figures([_code(draw, **CAPTION)]) == []
    assert uncaptioned_figures([_code(draw, tags=["remove-output"])]) == []
    assert len(uncaptioned_figures([_code(draw)])) == 2
    short = {"mystnb": {"figure": {"name": "fig-03-basis", "caption": "Basis."}}}
    assert uncaptioned_figures([_code(draw, **short)]) == ["cell 0: caption 'Basis.' does not say what to notice"]
    assert figure_names([_code(draw, **CAPTION), _code("x = 1")]) == ["fig-03-basis"]


def test_unhidden_widgets_wants_the_remove_output_tag() -> None:
    widget = "widgets.interact_manual(show, k=widgets.IntSlider(1))"
    assert unhidden_widgets([_code(widget, tags=["remove-output"]), _code("show(1)")]) == []
    assert unhidden_widgets([_code(widget, tags=["hide-input"])]) == ["cell 0: builds a widget without the remove-output tag"]


def test_exercise_problems_accepts_the_pattern_and_names_each_breach() -> None:
    good = (
        "## Exercises\n\n:::{exercise} Window sizes\n:label: ex-03-window\n:class: medium full-profile\n\nDo it.\n:::\n\n"
        ":::{solution} ex-03-window\n:class: dropdown\n\nDone.\n:::\n"
    )
    assert exercise_problems([_markdown(good)]) == []
    assert exercise_problems([_markdown("## Exercises\n\n1. Vary the window.\n")]) == [
        "the Exercises section has no {exercise} directive"
    ]
    no_difficulty = good.replace(":class: medium full-profile", ":class: full-profile")
    assert len(exercise_problems([_markdown(no_difficulty)])) == 1
    unfolded = good.replace(":class: dropdown", ":class: tip")
    assert exercise_problems([_markdown(unfolded)]) == ["solution ex-03-window is not folded (:class: dropdown)"]
    no_solution = good.split(":::{solution}")[0]
    assert exercise_problems([_markdown(no_solution)]) == ["exercise 'Window sizes' has no {solution} ex-03-window"]


def test_runtime_note_problems_wants_one_labelled_note_before_the_code() -> None:
    note = (
        "# Frequencies\n\n:::{admonition} Runtime\n:class: runtime\nSmoke profile: 40 s on a CPU (measured).\n"
        "Full profile: 25 min on one H100 (estimate).\n:::\n"
    )
    assert runtime_note_problems([_markdown(note), _code("x = 1")]) == []
    assert runtime_note_problems([_code("x = 1"), _markdown(note)]) == ["0 runtime notes before the first code cell, want 1"]
    unlabelled = note.replace("(estimate)", "")
    assert runtime_note_problems([_markdown(unlabelled)]) == [
        "'Full profile: 25 min on one H100 .' says neither measured nor estimate"
    ]


def test_typed_chapter_numbers_ignores_roles_and_code() -> None:
    cells = [
        _markdown("As {numref}`Chapter %s <ch-training>` showed, and `chapter 6` in code."),
        _markdown("The model chapter 6 trains."),
        _code("print('chapter 6')"),
    ]
    assert typed_chapter_numbers(cells) == ["cell 1: 'chapter 6'"]


def test_seed_implementation_mentions_are_found_in_any_cell() -> None:
    cells = [_markdown("The reference implementation."), _code("label = 'Seed implementation'")]
    assert seed_implementation_mentions(cells) == ["cell 1 (code)"]


# --- the chapters ---------------------------------------------------------------------------------------


def _violations(check) -> list[str]:
    return [f"{nb.name}: {problem}" for nb in NOTEBOOKS for problem in check(_cells(nb))]


def test_no_code_line_is_longer_than_88_characters() -> None:
    violations = _violations(long_code_lines)
    assert not violations, f"{len(violations)} long lines, e.g. {violations[:10]}"


def test_every_figure_has_a_name_and_a_caption() -> None:
    violations = _violations(uncaptioned_figures)
    assert not violations, violations


def test_figure_names_are_unique_across_the_book() -> None:
    names = [name for nb in NOTEBOOKS for name in figure_names(_cells(nb))]
    assert len(names) == len(set(names)), sorted(name for name in names if names.count(name) > 1)


def test_every_widget_cell_has_its_output_removed() -> None:
    violations = _violations(unhidden_widgets)
    assert not violations, violations


def test_exercises_use_the_exercise_pattern() -> None:
    violations = _violations(exercise_problems)
    assert not violations, violations


def test_every_chapter_states_its_runtime() -> None:
    violations = _violations(runtime_note_problems)
    assert not violations, violations


def test_chapters_cross_reference_instead_of_typing_chapter_numbers() -> None:
    violations = _violations(typed_chapter_numbers)
    assert not violations, violations


def test_chapters_say_reference_implementation() -> None:
    violations = _violations(seed_implementation_mentions)
    assert not violations, violations


INSTALL_VERSION = re.compile(r'^FECLIP_VERSION = "(?P<version>[^"]+)"', re.MULTILINE)


def test_every_chapter_installs_the_same_pinned_release() -> None:
    """One install cell, word for word, in every chapter; its version is the package's own."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: the tomli backport (dev extra)
        import tomli as tomllib

    import feclip

    cells = [_cells(nb)[1] for nb in NOTEBOOKS]
    sources = {_source(cell) for cell in cells}
    assert len(sources) == 1, "the chapters' install cells differ"
    (source,) = sources
    assert "hide-cell" in _tags(cells[0]) and "find_spec(\"feclip\")" in source
    assert INSTALL_VERSION.search(source)["version"] == feclip.__version__
    assert "@v{FECLIP_VERSION}" in source
    # The widget pin the cell installs on Colab satisfies the book extra's requirement.
    pinned = re.search(r'"ipywidgets==(?P<version>[\d.]+)"', source)["version"]
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["book"]
    (requirement,) = [r for r in extra if r.startswith("ipywidgets")]
    lowest = re.fullmatch(r"ipywidgets>=(?P<version>[\d.]+)", requirement)["version"]

    def version(text: str) -> tuple[int, ...]:
        return tuple(int(part) for part in text.split("."))

    assert version(pinned) >= version(lowest), (pinned, requirement)


def test_every_chapter_title_carries_its_label() -> None:
    for notebook in NOTEBOOKS:
        title = _source(_cells(notebook)[0])
        assert re.match(r"\(ch-[a-z-]+\)=\n# ", title), notebook.name
