"""Reading a study file: YAML decoding with the limits a small data file deserves, and
``extends:`` chains merged under the file that names them.

Every error is a one-line :class:`SpecError` (``<file>: <key path>: <what is wrong>
(<what is allowed>)``); ``study/spec.py`` validates what this module returns.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml


class SpecError(ValueError):
    """One line: file, key path, the bad value and what is allowed."""


#: a study file is small: more nodes than this (aliases counted each time they are used:
#: a "billion laughs" file) or deeper nesting than this is refused before anything walks it
MAX_NODES = 100_000
MAX_DEPTH = 50


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key written twice in one mapping (PyYAML keeps
    the last silently; a merge key ``<<`` may still be overridden)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            try:
                duplicate = key in seen
            except TypeError:
                continue  # unhashable: SafeConstructor reports it
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _check_size(fname: str, raw: Any) -> None:
    """Refuse alias bombs and deep nesting (iteratively, stopping at the first excess)."""
    stack: list[tuple[Any, int]] = [(raw, 0)]
    nodes = 0
    while stack:
        node, depth = stack.pop()
        nodes += 1
        if nodes > MAX_NODES:
            raise SpecError(
                f"{fname}: too large: more than {MAX_NODES} values once YAML aliases are "
                "expanded (a study file is small; use aliases sparingly)"
            )
        if depth > MAX_DEPTH:
            raise SpecError(f"{fname}: nested too deep (at most {MAX_DEPTH} levels)")
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)


def load_yaml(path: Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a study file and resolve ``extends:`` (relative to the file)."""
    path = path.resolve()
    if path in _seen:
        chain = " -> ".join(p.name for p in (*_seen, path))
        raise SpecError(f"{path.name}: extends: circular chain ({chain})")
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "no such study file"
        if _seen:
            raise SpecError(
                f"{_seen[-1].name}: extends: {path}: {what} (a study file, relative to "
                f"{_seen[-1].name})"
            )
        raise SpecError(f"{path}: {what} (a study YAML file)")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(
            f"{path.name}: not UTF-8 text (byte {exc.start} cannot be decoded) "
            "(a study file is UTF-8 encoded YAML)"
        ) from None
    except OSError as exc:
        raise SpecError(f"{path.name}: cannot be read: {exc.strerror} (a readable file)") from None
    try:
        raw = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError(
            f"{path.name}: {where}invalid YAML: {problem} (YAML text: a mapping of sections, "
            "each key once)"
        ) from None
    except RecursionError:
        raise SpecError(f"{path.name}: nested too deep (at most {MAX_DEPTH} levels)") from None
    _check_size(path.name, raw)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise SpecError(
            f"{path.name}: top level is a {type(raw).__name__} (a mapping of sections: "
            "name, trial, search, baselines, ...)"
        )
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    if not isinstance(parent, str):
        raise SpecError(f"{path.name}: extends: expected a file name, got {parent!r}")
    base = load_yaml(path.parent / parent, (*_seen, path))
    return deep_merge(base, raw)


def merge_terms(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Loss terms: ``over``'s settings deep-merge into ``base``'s; a ``null`` term is dropped."""
    out = copy.deepcopy(base)
    for name, spec in over.items():
        if spec is None:
            out.pop(name, None)
        elif isinstance(spec, dict) and isinstance(out.get(name), dict):
            out[name] = deep_merge(out[name], spec)
        else:
            out[name] = copy.deepcopy(spec)
    return out


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out
