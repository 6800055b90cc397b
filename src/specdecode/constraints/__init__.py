"""Constrained generation: JSON schemas, regular expressions and Lark grammars (llguidance),
with every drafter's tree pruned to the grammar and forced tokens drafted for free.

>>> from specdecode.constraints import compile_constraint
>>> c = compile_constraint(loaded, json_schema={"type": "object"})
>>> decoder.generate_ids(ids, max_new_tokens=64, constraint=c)
"""

from specdecode.constraints.grammar import Constraint, compile_constraint

__all__ = ["Constraint", "compile_constraint"]
