r"""The ``taxonomy:FILE`` cost: tree distances between classes in a hierarchy file, no features.

The file is YAML (``yaml.safe_load``): a nested mapping whose keys are group names and whose
leaves are class names, given as list items, as a string value, or as keys with no value::

    clothing:
      tops: [T-shirt/top, Pullover, Shirt]
      outerwear: Coat
    accessories:
      footwear: [Sandal, Sneaker, Ankle boot]
      Bag:                       # a leaf given as a key with no value

The top-level keys hang from one implicit root. With :math:`a(c)` the path of class ``c`` from the
root (its ancestors, then ``c``) and :math:`\mathrm{lca}` their longest common prefix, the tree
distance counts the edges between two leaves,

.. math::
    d(s, t) = |a(s)| + |a(t)| - 2\,|\mathrm{lca}(a(s), a(t))|,

so two classes of one group are at 2, classes of sibling groups at 4, and so on. ``M[s, t] =
d(s, t) / D`` with ``D`` the largest distance between any two classes of the file, so ``M`` lies in
``[0, 1]`` and does not depend on which classes a split puts on either side (``--cost-normalize``
then applies as to every cost: under ``global`` the split's largest entry becomes 1).

A file may name more classes than a task has (one file serves every class split); a task class
the file does not name, a class named twice or a leaf that is not a name is a one-line
:class:`~tllib_jtln.errors.UserError`. Names match exactly, then ignoring case, ``_``, ``-``.
"""
from __future__ import annotations

import difflib
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from ..errors import UserError
from .embeddings import loose_name

#: ``--cost taxonomy:FILE``
TAXONOMY_PREFIX = "taxonomy:"

ClassPath = tuple[str, ...]


def load_taxonomy(path: str | Path) -> dict[str, ClassPath]:
    """``{class name: its path from the root (groups, then the name)}`` of a hierarchy file."""
    from ..config import load_yaml

    where = f"--cost taxonomy:{path}"
    tree = load_yaml(Path(path).expanduser(), flag="--cost taxonomy:")
    paths: dict[str, ClassPath] = {}

    def leaf(name, ancestors: ClassPath) -> None:
        if not isinstance(name, str) or not name.strip():
            raise UserError(f"{where}: leaf {name!r} under {'/'.join(ancestors) or 'the top'} is not a class name; "
                            f"write class names as text")
        if name in paths:
            raise UserError(f"{where}: class '{name}' is named twice; a class belongs to one group")
        paths[name] = (*ancestors, name)

    def walk(node, ancestors: ClassPath) -> None:
        if isinstance(node, dict):
            for key, child in node.items():
                if child is None:
                    leaf(key, ancestors)
                else:
                    walk(child, (*ancestors, str(key)))
        elif isinstance(node, list):
            for item in node:
                walk(item, ancestors) if isinstance(item, (dict, list)) else leaf(item, ancestors)
        else:
            leaf(node, ancestors)

    walk(tree, ())
    if not paths:
        raise UserError(f"{where}: no classes in it; write groups of class names (see docs/method.md)")
    return paths


def tree_distance(a: ClassPath, b: ClassPath) -> int:
    """Edges between two nodes given by their paths from the root: ``|a| + |b| - 2 |common prefix|``."""
    common = 0
    for x, y in zip(a, b):
        if x != y:
            break
        common += 1
    return len(a) + len(b) - 2 * common


def taxonomy_cost(path: str | Path, source_classes: Sequence[str], target_classes: Sequence[str]) -> Tensor:
    """``(Ks, Kt)`` float64: ``d(s, t) / D``, the tree distance over the file's largest (see the module doc)."""
    paths = load_taxonomy(path)
    by_loose = {loose_name(name): name for name in paths}

    def find(name: str, side: str) -> ClassPath:
        found = paths.get(name) or paths.get(by_loose.get(loose_name(name), ""))
        if found is None:
            close = difflib.get_close_matches(loose_name(name), list(by_loose), n=1, cutoff=0.5)
            hint = f" (did you mean '{by_loose[close[0]]}'?)" if close else ""
            raise UserError(f"--cost taxonomy:{path}: {side} class '{name}' is not in the file{hint}; "
                            f"add it to the group it belongs to")
        return found

    source = [find(name, "source") for name in source_classes]
    target = [find(name, "target") for name in target_classes]
    leaves = list(paths.values())
    widest = max((tree_distance(a, b) for i, a in enumerate(leaves) for b in leaves[i + 1:]), default=0)
    raw = torch.tensor([[float(tree_distance(s, t)) for t in target] for s in source], dtype=torch.float64)
    return raw / widest if widest > 0 else raw
