"""Multiple-choice questions read from the files a user has: MMLU, C-Eval and CMMLU CSVs, or JSONL.

CSV: MMLU's header-less rows (question, A, B, C, D, answer letter), or a header row (C-Eval:
id,question,A,B,C,D,answer[,explanation]; CMMLU: ,Question,A,B,C,D,Answer) whose columns are found
by name, case-insensitively: question, the letter columns A, B, ... and answer (subject optional).
JSONL: one object a line, {"question", "choices": [...] or "A".."D", "answer": letter or 0-based index}
(subject optional). A question's subject is its subject column/field, else its file's name without a
_test/_val/_dev/_train suffix. Every problem is a one-line ValueError naming the file and line.
It reads files only: prompts and scoring are mc.py's.
"""

from __future__ import annotations

import csv
import json
import string
from dataclasses import dataclass
from pathlib import Path

LETTERS = string.ascii_uppercase
SPLITS = ("_test", "_val", "_dev", "_train")  # MMLU's and C-Eval's file names end in their split
SUFFIXES = (".csv", ".jsonl")


@dataclass(slots=True, frozen=True)
class Question:
    question: str
    choices: tuple[str, ...]
    answer: int  # index into choices
    subject: str  # as written in the data ("abstract_algebra"); the prompt shows "abstract algebra"
    file: str  # the file's stem, for sample ids
    index: int  # 0-based position among the file's questions


def files_of(path: Path) -> list[Path]:
    """The question files a path names: itself, or a directory's *.csv and *.jsonl files, sorted."""
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES)
        if not found:
            raise ValueError(f"{path} holds no .csv or .jsonl file")
        return found
    if path.suffix.lower() not in SUFFIXES:
        raise ValueError(f"{path}: expected a .csv or .jsonl file (or a directory of them)")
    return [path]


def read(path: Path) -> list[Question]:
    """Every question in a file or in a directory's files, in order."""
    out = []
    for f in files_of(path):
        qs = read_csv(f) if f.suffix.lower() == ".csv" else read_jsonl(f)
        if not qs:
            raise ValueError(f"{f} holds no question")
        out += qs
    return out


def file_subject(path: Path) -> str:
    stem = path.stem
    for split in SPLITS:
        if stem.lower().endswith(split) and len(stem) > len(split):
            return stem[:-len(split)]
    return stem


def read_csv(path: Path) -> list[Question]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = [(n, row) for n, row in _numbered(csv.reader(f), path) if any(cell.strip() for cell in row)]
    if not rows:
        return []
    names = [cell.strip().lower() for cell in rows[0][1]]
    if {"question", "a", "b"} <= set(names):  # C-Eval / CMMLU: a header row
        columns = _columns(path, names)
        rows = rows[1:]
    elif all(len(row) == 6 for _, row in rows):  # MMLU: question, A, B, C, D, answer
        columns = {"question": 0, "choices": [1, 2, 3, 4], "answer": 5, "subject": None}
    else:
        n, row = next((n, row) for n, row in rows if len(row) != 6)
        raise ValueError(f"{path}:{n}: {len(row)} columns; a CSV without a header row needs 6 (question, A, B, C, "
                         "D, answer), else a header naming question, A, B, ... and answer")
    need = 1 + max(c for c in (columns["question"], columns["answer"], *columns["choices"], columns["subject"])
                   if c is not None)
    out = []
    for n, row in rows:
        if len(row) < need:
            raise ValueError(f"{path}:{n}: {len(row)} columns; the header's layout needs {need}")
        subject = row[columns["subject"]].strip() if columns["subject"] is not None else ""
        choices = tuple(row[c] for c in columns["choices"])
        out.append(_question(path, n, row[columns["question"]], choices, row[columns["answer"]], subject, len(out)))
    return out


def _numbered(reader, path: Path):
    try:
        for row in reader:
            yield reader.line_num, row
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except csv.Error as e:
        raise ValueError(f"{path}:{reader.line_num}: not CSV ({e})") from None


def _columns(path: Path, names: list[str]) -> dict:
    letters = []
    for letter in LETTERS.lower():
        if letter not in names:
            break
        letters.append(names.index(letter))
    if "answer" not in names:
        raise ValueError(f"{path}: the header has no answer column (a test split without answers cannot be scored)")
    return {"question": names.index("question"), "choices": letters, "answer": names.index("answer"),
            "subject": names.index("subject") if "subject" in names else None}


def read_jsonl(path: Path) -> list[Question]:
    out = []
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: not JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise ValueError(f"{path}:{n}: expected a JSON object, got {type(obj).__name__}")
        if isinstance(obj.get("choices"), list):
            choices = obj["choices"]
        else:
            choices = []
            for letter in LETTERS:
                if letter not in obj:
                    break
                choices.append(obj[letter])
        if not all(isinstance(c, (str, int, float)) and not isinstance(c, bool) for c in choices):
            raise ValueError(f"{path}:{n}: every choice must be text")
        question, subject = obj.get("question"), obj.get("subject") or ""
        if not isinstance(question, str) or not isinstance(subject, str):
            raise ValueError(f"{path}:{n}: \"question\" (and \"subject\", if given) must be text")
        out.append(_question(path, n, question, tuple(str(c) for c in choices), obj.get("answer"), subject,
                             len(out)))
    return out


def _question(path: Path, n: int, question: str, choices: tuple[str, ...], answer, subject: str,
              index: int) -> Question:
    where = f"{path}:{n}"
    if not question.strip():
        raise ValueError(f"{where}: the question is empty")
    if not 2 <= len(choices) <= len(LETTERS):
        raise ValueError(f"{where}: {len(choices)} choices; give 2 to {len(LETTERS)} (\"choices\" or \"A\", "
                         "\"B\", ...)")
    letters = LETTERS[:len(choices)]
    if isinstance(answer, int) and not isinstance(answer, bool):
        gold = answer if 0 <= answer < len(choices) else None
    elif isinstance(answer, str) and len(answer.strip()) == 1 and answer.strip().upper() in letters:
        gold = letters.index(answer.strip().upper())
    else:
        gold = None
    if gold is None:
        raise ValueError(f"{where}: the answer {answer!r} is not among the choices ({', '.join(letters)} or 0 to "
                         f"{len(choices) - 1})")
    return Question(question, choices, gold, subject.strip() or file_subject(path), path.stem, index)
