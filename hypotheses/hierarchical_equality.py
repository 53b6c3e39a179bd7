"""Hierarchical equality: does the network first compare w with x and y with z?

The task (Premack 1983; Geiger et al. 2020): four entities, the output is True when
the two pairs are both equal or both different. The hypothesis: the network
computes ``wx = w == x`` and ``yz = y == z``, then compares them.
"""

from abstraction import causal_model

ENTITIES = range(20)
"""Entity ids; the task maps each id to a random 4-dim vector."""


@causal_model(inputs={"w": ENTITIES, "x": ENTITIES, "y": ENTITIES, "z": ENTITIES})
def hierarchical_equality(w, x, y, z):  # type: ignore[no-untyped-def]
    wx = w == x
    yz = y == z
    return wx == yz
