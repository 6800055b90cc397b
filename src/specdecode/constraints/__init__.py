"""Constrained generation: JSON schemas, regular expressions and Lark grammars (llguidance),
with every drafter's tree pruned to the grammar and forced tokens drafted for free.

>>> from specdecode.constraints import compile_constraint
>>> c = compile_constraint(loaded, json_schema={"type": "object"})
>>> decoder.generate_ids(ids, max_new_tokens=64, constraint=c)
"""

from specdecode.constraints.grammar import Constraint, compile_constraint

__all__ = ["Constraint", "compile_constraint", "constraint_for"]


def constraint_for(
    loaded, json_schema=None, regex=None, grammar=None, jump_forward=True
) -> Constraint | None:
    """:func:`compile_constraint` when any constraint is given, else None (the API's helper)."""
    if json_schema is None and regex is None and grammar is None:
        return None
    return compile_constraint(
        loaded, json_schema=json_schema, regex=regex, grammar=grammar, jump_forward=jump_forward
    )
