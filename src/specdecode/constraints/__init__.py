"""Constrained generation: JSON schemas, regular expressions and Lark grammars (llguidance),
with every drafter's tree pruned to the grammar and forced tokens drafted for free; and
monitor-guided decoding of code (:mod:`specdecode.constraints.monitor`), the same way.

>>> from specdecode.constraints import compile_constraint
>>> c = compile_constraint(loaded, json_schema={"type": "object"})
>>> decoder.generate_ids(ids, max_new_tokens=64, constraint=c)
"""

from specdecode.constraints.grammar import Constraint, compile_constraint

__all__ = ["Constraint", "compile_constraint", "constraint_for"]


def constraint_for(
    loaded, json_schema=None, regex=None, grammar=None, jump_forward=True, monitor=None, repo=None, code=""
):
    """:func:`compile_constraint` when any constraint is given, a monitor
    (:func:`specdecode.constraints.monitor.monitor_constraint`, over the repository ``repo``,
    the answer continuing ``code``) when ``monitor`` is, else None (the API's helper)."""
    grammatical = json_schema is not None or regex is not None or grammar is not None
    if monitor is not None or repo is not None:
        from specdecode.constraints.monitor import monitor_constraint
        from specdecode.errors import SpecDecodeError

        if grammatical:
            raise SpecDecodeError(
                "give a grammar constraint (json_schema, regex, grammar) or a monitor, not both"
            )
        return monitor_constraint(loaded, monitor, repo, code=code, jump_forward=jump_forward)
    if not grammatical:
        return None
    return compile_constraint(
        loaded, json_schema=json_schema, regex=regex, grammar=grammar, jump_forward=jump_forward
    )
