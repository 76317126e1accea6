"""mkdocs hooks: serve the committed results (tables and figures under results/) inside the site.

The pages link them as ``../results/...`` so that the links also work when the Markdown is read on a forge; the hook
adds those files to the site under ``results/`` and rewrites the links to match."""
from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parent.parent


def on_files(files, config):
    for path in sorted((ROOT / "results").rglob("*")):
        if path.suffix in (".png", ".md") and path.is_file():
            files.append(File(str(path.relative_to(ROOT)), src_dir=str(ROOT), dest_dir=config["site_dir"],
                              use_directory_urls=config["use_directory_urls"]))
    return files


def on_page_markdown(markdown, page, config, files):
    depth = page.file.src_uri.count("/")  # pages in docs/tutorials/ link ../../results/
    return markdown.replace("](" + "../" * (depth + 1) + "results/", "](" + "../" * depth + "results/")
