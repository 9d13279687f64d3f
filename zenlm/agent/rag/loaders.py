"""Documents from a directory: plain text, Markdown, source files, HTML (tags stripped) and PDF (pypdf).

load_directory(root) walks it in sorted order and returns Documents (source path relative to root, text).
Hidden files and folders, unknown suffixes and empty files are skipped; a file that is not valid UTF-8 is
read with replacement characters. It does not chunk (chunking.py does).
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

TEXT_SUFFIXES = {".txt", ".md", ".markdown", ".rst", ".text"}
HTML_SUFFIXES = {".html", ".htm", ".xhtml"}
SOURCE_SUFFIXES = {
    ".py", ".pyi", ".c", ".h", ".cc", ".cpp", ".hpp", ".cu", ".rs", ".go", ".java", ".kt", ".js", ".ts", ".tsx",
    ".jsx", ".rb", ".php", ".cs", ".swift", ".scala", ".sh", ".sql", ".lua", ".r", ".jl", ".toml", ".yaml", ".yml",
    ".json", ".ini", ".cfg",
}
PDF_SUFFIXES = {".pdf"}
SUFFIXES = TEXT_SUFFIXES | HTML_SUFFIXES | SOURCE_SUFFIXES | PDF_SUFFIXES


@dataclass(slots=True)
class Document:
    source: str  # path relative to the indexed directory, with forward slashes
    text: str


class _TextOfHTML(HTMLParser):
    """Collects the visible text of an HTML page: no script/style, block elements end a line."""

    SKIP = {"script", "style", "noscript", "template", "head"}
    BLOCK = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "section", "article",
             "table", "ul", "ol", "blockquote", "title", "dd", "dt"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skipping = 0

    def handle_starttag(self, tag, attrs):
        if tag in self.SKIP:
            self.skipping += 1
        elif tag in self.BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if tag in self.SKIP:
            self.skipping = max(0, self.skipping - 1)
        elif tag in self.BLOCK:
            self.parts.append("\n")

    def handle_data(self, data):
        if not self.skipping:
            self.parts.append(data)


def html_text(markup: str) -> str:
    parser = _TextOfHTML()
    parser.feed(markup)
    parser.close()
    text = html.unescape("".join(parser.parts))
    lines = (re.sub(r"[ \t\r\f\v]+", " ", line).strip() for line in text.split("\n"))
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def pdf_text(path: Path) -> str:
    """Each page's text, pages separated by a blank line."""
    try:
        from pypdf import PdfReader
    except ImportError as e:
        raise ValueError(f"{path}: reading PDF needs pypdf (pip install 'zenlm[rag]')") from e
    reader = PdfReader(str(path))
    return "\n\n".join((page.extract_text() or "").strip() for page in reader.pages).strip()


def load_file(path: Path) -> str:
    """The text of one file, by its suffix; ValueError for a suffix it does not read."""
    suffix = path.suffix.lower()
    if suffix in PDF_SUFFIXES:
        return pdf_text(path)
    if suffix not in SUFFIXES:
        raise ValueError(f"{path}: unsupported file type {suffix or '(none)'!r}")
    text = path.read_bytes().decode("utf-8", errors="replace")
    return html_text(text) if suffix in HTML_SUFFIXES else text


def load_directory(root: str | Path) -> list[Document]:
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"{root}: not a directory")
    docs = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        if path.suffix.lower() not in SUFFIXES:
            continue
        text = load_file(path)
        if text.strip():
            docs.append(Document(rel.as_posix(), text))
    return docs
