"""Ragged index arithmetic shared by the 2-D and 3-D region code: blocks of consecutive
indices, and the pairs an index forms with the entries that follow it.

Both are built with ``np.repeat`` and one ``np.arange`` over the total length, so the cost
is a few passes over the output, without a Python loop over blocks.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np


def expand(first: np.ndarray, n: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """For blocks ``[first[i], first[i] + n[i])``: the block of each element and its index.

    Examples::

        >>> import numpy as np
        >>> from captum_gradflow.metrics._ragged import expand
        >>> [a.tolist() for a in expand(np.array([5, 0]), np.array([2, 3]))]
        [[0, 0, 1, 1, 1], [5, 6, 0, 1, 2]]
    """
    owner = np.repeat(np.arange(len(n)), n)
    start = np.r_[0, np.cumsum(n)[:-1]]
    return owner, first[owner] + np.arange(int(n.sum())) - start[owner]


def pairs_after(count: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """The pairs ``(i, j)`` with ``i < j <= i + count[i]``: each entry with the ``count[i]``
    entries after it (of a sorted list whose partners follow each other).

    Examples::

        >>> import numpy as np
        >>> from captum_gradflow.metrics._ragged import pairs_after
        >>> [a.tolist() for a in pairs_after(np.array([2, 1, 0]))]
        [[0, 0, 1], [1, 2, 2]]
    """
    return expand(np.arange(1, len(count) + 1), count)
