"""Plans for the scripted LIBERO expert: an ordered list of steps from a task's BDDL goal and its scene.

A LIBERO goal is a conjunction of predicates (``fastwam.envs.libero_expert`` has a skill for each):

    (In obj region)   (On obj target)   (Open region|fixture)   (Close region|fixture)
    (Turnon fixture)  (Turnoff fixture)

``plan(goal, containers)`` turns it into ``Step`` s, one per conjunct, ordered by what the scene
imposes rather than by task names:

1. ``open``: the goal's own, and a precondition for every ``in`` whose region lies inside something
   articulated (``containers``: a drawer's region opens itself; the microwave's heating region opens
   with the microwave's door): the object cannot enter it closed. A precondition is not part of
   the goal, so a later step may undo it (close the drawer again) without failing the plan.
2. ``in`` / ``on``, in the goal's order.
3. ``turnon`` / ``turnoff``: a fixture's switch, after what is placed on it (a moka pot on a stove).
4. ``close``: last, after everything that had to enter what it closes.

The executor (``LiberoExpert``) skips a step whose predicate already holds, checks after every step
that the goal's earlier conjuncts still hold (and goes back to the first that does not), and retries
a step that ends without its predicate. A goal naming a predicate outside these is refused by name.

    >>> steps = plan([["Close", "cabinet_bottom_region"], ["In", "bowl_1", "cabinet_bottom_region"]],
    ...              {"cabinet_bottom_region": "cabinet_bottom_region"})
    >>> [str(s) for s in steps]
    ['(open cabinet_bottom_region) [precondition]', '(in bowl_1 cabinet_bottom_region)', '(close cabinet_bottom_region)']
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

ARITY = {"in": 2, "on": 2, "open": 1, "close": 1, "turnon": 1, "turnoff": 1}
RANK = {"open": 0, "in": 1, "on": 1, "turnon": 2, "turnoff": 2, "close": 3}


@dataclass(frozen=True)
class Step:
    """One predicate to make true: ``(predicate, *args)`` as BDDL writes it, lowercased. ``goal``:
    a conjunct of the task's goal (False: a precondition the planner added)."""

    predicate: str
    args: tuple[str, ...]
    goal: bool = True

    @property
    def conjunct(self) -> list[str]:
        """As LIBERO's ``_eval_predicate`` takes it."""
        return [self.predicate, *self.args]

    def __str__(self) -> str:
        return f"({' '.join(self.conjunct)})" + ("" if self.goal else " [precondition]")


def conjuncts(goal: Sequence[Sequence[str]]) -> list[Step]:
    """A parsed BDDL goal state (LIBERO's ``goal_state``: a list of conjuncts) -> one Step each;
    ValueError naming a predicate without a skill or a conjunct of the wrong arity."""
    steps = []
    for conjunct in goal:
        if not conjunct or not all(isinstance(x, str) for x in conjunct):
            raise ValueError(f"goal conjunct {conjunct!r}: expected (predicate arg ...)")
        predicate, args = conjunct[0].lower(), tuple(conjunct[1:])
        if predicate not in ARITY:
            raise ValueError(f"goal conjunct ({' '.join(conjunct)}): the expert has no skill for predicate "
                             f"{conjunct[0]!r}; it handles {', '.join(ARITY)}")
        if len(args) != ARITY[predicate]:
            raise ValueError(f"goal conjunct ({' '.join(conjunct)}): {predicate} takes {ARITY[predicate]} "
                             f"argument(s), got {len(args)}")
        steps.append(Step(predicate, args))
    if not steps:
        raise ValueError("empty goal: nothing to plan")
    return steps


def plan(goal: Sequence[Sequence[str]], containers: Mapping[str, str]) -> list[Step]:
    """The ordered steps that reach ``goal`` (module docstring). ``containers``: region -> what must be
    open for an object to go in it (the region itself for a drawer, the fixture for a door), for the
    regions of the scene inside something articulated."""
    steps = conjuncts(goal)
    opened = {s.args[0] for s in steps if s.predicate == "open"}
    closed = {s.args[0] for s in steps if s.predicate == "close"}
    both = sorted(opened & closed)
    if both:
        raise ValueError(f"goal asks {both[0]} both open and closed")
    needed = [containers[s.args[1]] for s in steps if s.predicate == "in" and s.args[1] in containers]
    preconditions = [Step("open", (c,), goal=False) for c in dict.fromkeys(needed) if c not in opened]
    return sorted(preconditions + steps, key=lambda s: RANK[s.predicate])  # stable: the goal's order within a rank
