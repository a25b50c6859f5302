"""Prompt files: .txt (one per line), .jsonl ({"prompt": ...} per line) or .csv (a prompt column)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

from ...sae_core.errors import SAEConceptsError

PROMPT_KEYS = ("prompt", "caption", "text")


class PromptFileError(SAEConceptsError, ValueError):
    pass


def read_prompts(path) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise PromptFileError(f"{path}: prompt file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise PromptFileError(f"{path}: not UTF-8 text ({e})") from e
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        prompts = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise PromptFileError(f"{path}:{n}: not valid JSON ({e.msg})") from e
            key = next((k for k in PROMPT_KEYS if isinstance(row, dict) and k in row), None)
            if key is None or not isinstance(row[key], str):
                raise PromptFileError(f"{path}:{n}: expected an object with a string field "
                                      f"{' / '.join(PROMPT_KEYS)}")
            prompts.append(row[key].strip())
    elif suffix == ".csv":
        reader = csv.DictReader(text.splitlines())
        key = next((k for k in PROMPT_KEYS if k in (reader.fieldnames or [])), None)
        if key is None:
            raise PromptFileError(f"{path}: no prompt column; expected one of {PROMPT_KEYS}, "
                                  f"found {reader.fieldnames}")
        prompts = [(row[key] or "").strip() for row in reader]
    else:
        prompts = [line.strip() for line in text.splitlines()]
    prompts = [p for p in prompts if p]
    if not prompts:
        raise PromptFileError(f"{path}: holds no prompts")
    return prompts
