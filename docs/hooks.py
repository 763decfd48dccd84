"""mkdocs hooks of the pdenets site (configured in ``mkdocs.yml``; not a documentation page).

* **MODEL.md.** The specification lives outside the repository (``../shared/MODEL.md``) and is
  never copied into it, so it cannot drift. At build time it is looked up as
  ``$PDENETS_MODEL_MD``, ``<repo>/shared/MODEL.md`` or ``<repo>/../shared/MODEL.md``; the first
  that exists is rendered as the page ``MODEL.md`` and copied verbatim into the built site
  (``site/MODEL.md``). When none exists a stub page says where to find it, so that links to it
  stay valid and ``mkdocs build --strict`` passes either way.
* **Gallery.** One page per ``examples/[a-z]*.py``, generated from the script's module
  docstring (title = first line), with its figure ``docs/gallery/<name>.png`` and its printed
  report ``docs/gallery/<name>.txt`` when ``make docs`` has produced them (both generated and
  git-ignored), and the script's source; plus ``gallery/index.md``. Nothing is duplicated by
  hand, so the pages cannot drift from the scripts.
"""

from __future__ import annotations

import ast
import logging
import os
import re
import shutil
from pathlib import Path

from mkdocs.structure.files import File, Files

log = logging.getLogger("mkdocs.hooks.pdenets")

_MODEL_ENV = "PDENETS_MODEL_MD"
# examples announced in the issue that wait for library features (title, what it will show)
_PLACEHOLDERS: list[tuple[str, str]] = []  # every announced example exists now


def _root(config) -> Path:
    return Path(config.config_file_path).resolve().parent


def model_md_path(config) -> Path | None:
    """The MODEL.md to publish, or None when it is not available."""
    root = _root(config)
    env = os.environ.get(_MODEL_ENV, "")
    candidates = [Path(env)] if env else []
    candidates += [root / "shared" / "MODEL.md", root.parent / "shared" / "MODEL.md"]
    for c in candidates:
        if c.is_file():
            return c.resolve()
    return None


_STUB = """# MODEL.md — the mathematical specification

The specification of the PDE model (sections §1–§10 cited throughout these pages and in the
docstrings) is kept outside the repository, in `../shared/MODEL.md` next to the clone, so
that there is exactly one copy. It was not found when this site was built: build with the
clone beside `shared/`, or point `PDENETS_MODEL_MD` at the file, and this page becomes the
specification.
"""


def _escape_markdown(text: str) -> str:
    """Escape ``*`` and ``_`` of a docstring's prose (not in code spans, indented code blocks
    or bullet markers), so that formulas such as u* or μ_j are not read as emphasis."""
    out = []
    for line in text.splitlines():
        if line.startswith("    ") or not line.strip():
            out.append(line)
            continue
        bullet = ""
        m = re.match(r"^(\s*\* )", line)
        if m:
            bullet, line = m.group(1), line[m.end():]
        parts = re.split(r"(``.*?``|`[^`]*`)", line)
        parts = [p if p.startswith("`") else p.replace("*", r"\*").replace("_", r"\_")
                 for p in parts]
        out.append(bullet + "".join(parts))
    return "\n".join(out)


def _examples(config) -> list[tuple[str, str, str, str]]:
    """(name, title, body, source) of every gallery script."""
    result = []
    for path in sorted((_root(config) / "examples").glob("[a-z]*.py")):
        source = path.read_text(encoding="utf-8")
        doc = ast.get_docstring(ast.parse(source)) or path.stem
        title, _, body = doc.partition("\n")
        # the usage line(s) at the end become the page's "Run it" section
        body = "\n".join(ln for ln in body.splitlines()
                         if not ln.startswith(f"    python examples/{path.stem}.py"))
        result.append((path.stem, title.strip().rstrip("."), body.strip(), source))
    return result


def _gallery_page(config, name: str, title: str, body: str, source: str) -> str:
    docs = Path(config.docs_dir)
    body = _escape_markdown(body).replace("MODEL.md", "[MODEL.md](../MODEL.md)")
    lines = [f"# {title}", "", body, ""]
    if (docs / "gallery" / f"{name}.png").is_file():
        lines += [f"![{title}]({name}.png)", ""]
    else:
        lines += ['!!! note "Figure not built"',
                  "    Run `make docs` (or the command below) to produce this figure.", ""]
    lines += ["Run it (`--fast`: the small sizes of the test suite; `--json`: one JSON object):",
              "", "```sh", f"python examples/{name}.py --out DIR", "```", ""]
    report = docs / "gallery" / f"{name}.txt"
    if report.is_file():
        lines += ["Its report in the build of this site:", "", "```text",
                  report.read_text(encoding="utf-8").rstrip(), "```", ""]
    lines += [f'??? example "Source: examples/{name}.py"', "", "    ```python"]
    lines += [("    " + s) if s else "" for s in source.rstrip().splitlines()]
    lines += ["    ```", ""]
    return "\n".join(lines)


def _gallery_index(config, examples) -> str:
    docs = Path(config.docs_dir)
    lines = ["# Gallery", "",
             "Runnable scripts in `examples/`. Each writes one figure into `--out DIR` "
             "(atomically), prints a report (or one JSON object with `--json`), and runs in "
             "the test suite in fast mode (`tests/test_gallery.py`), where its numbers are "
             "checked against closed forms and convergence orders. `make docs` runs them all "
             "and shows their figures here.", "",
             "| example | what it shows | figure |", "|---|---|---|"]
    for name, title, body, _ in examples:
        summary = _escape_markdown(body.split("\n\n")[0].replace("\n", " "))
        fig = (f"![{name}]({name}.png){{ width=240 }}"
               if (docs / "gallery" / f"{name}.png").is_file() else "(not built)")
        lines.append(f"| [{title}]({name}.md) | {summary} | {fig} |")
    for title, what in _PLACEHOLDERS:
        lines.append(f"| {title} *(planned)* | {what} | – |")
    return "\n".join(lines) + "\n"


def on_config(config):
    """Expand the nav entry ``Gallery: gallery/index.md`` into the index and one page per
    example."""
    examples = _examples(config)
    for i, entry in enumerate(config.nav or []):
        if isinstance(entry, dict) and entry.get("Gallery") == "gallery/index.md":
            config.nav[i] = {"Gallery": ["gallery/index.md"] + [
                {title: f"gallery/{name}.md"} for name, title, _, _ in examples]}
    return config


def on_files(files: Files, config) -> Files:
    """Add MODEL.md (or its stub) and the generated gallery pages."""
    model = model_md_path(config)
    if model is None:
        log.info("MODEL.md not found (set %s); publishing a stub page", _MODEL_ENV)
        files.append(File.generated(config, "MODEL.md", content=_STUB))
    else:
        files.append(File.generated(config, "MODEL.md", abs_src_path=str(model)))
    examples = _examples(config)
    for name, title, body, source in examples:
        files.append(File.generated(config, f"gallery/{name}.md",
                                    content=_gallery_page(config, name, title, body, source)))
    files.append(File.generated(config, "gallery/index.md",
                                content=_gallery_index(config, examples)))
    return files


def on_post_build(config) -> None:
    """Copy MODEL.md verbatim into the site (beside its rendered page)."""
    model = model_md_path(config)
    if model is not None:
        shutil.copyfile(model, Path(config.site_dir) / "MODEL.md")


def on_serve(server, config, builder):
    """``mkdocs serve``: rebuild when an example changes."""
    server.watch(str(_root(config) / "examples"))
    return server
