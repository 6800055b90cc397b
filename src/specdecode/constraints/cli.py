"""``specdecode generate`` options for constrained generation: ``--json-schema``, ``--regex``,
``--grammar``, ``--no-jump-forward``, ``--constraint-sampling`` and ``--particles``; and the
monitor's ``--monitor`` and ``--repo``."""

from __future__ import annotations

import json
from pathlib import Path

from specdecode.errors import SpecDecodeError

HELP = """\
constrained generation (the reply follows a JSON schema, a regex or a Lark grammar):
  specdecode generate --json-schema person.json "Extract the person: Ann, 31, pilot."
  specdecode generate --regex "[0-9]{3}-[0-9]{4}" --raw "Call me at "
  specdecode generate --grammar answer.lark --method hybrid "Is water wet?"
Every method drafts under the constraint (drafts the grammar forbids are never scored; the
tokens it forces are drafted for free); greedy output equals plain greedy decoding with the
grammar's mask at every step. JSON is laid out with ", " and ": " and no other white space
unless the schema's "x-guidance" object says otherwise. finish_reason "constraint": the
grammar allowed no next token.
--constraint-sampling mask (the default) samples each token from the locally masked
distribution (the product of renormalized masked conditionals, which over-weights prefixes
whose continuations the model finds unlikely); awrs samples by adaptive weighted rejection
(only drawn tokens are checked), and with --particles K > 1 runs sequential Monte Carlo,
which approaches the global constrained distribution p(text | text follows the grammar) as K
grows. awrs needs a temperature > 0 and decodes without speculation (one forward per token,
the K particles batched); K = 1 samples what mask samples.
  specdecode generate --regex "(yes|no)" --temperature 1 --constraint-sampling awrs --particles 16 "Is it?"
"""


def add_arguments(p) -> None:
    g = p.add_argument_group("constrained generation")
    one = g.add_mutually_exclusive_group()
    one.add_argument(
        "--json-schema",
        metavar="FILE",
        default=None,
        help="the reply is JSON valid against the JSON schema in FILE",
    )
    one.add_argument(
        "--regex", metavar="RE", default=None, help="the reply matches the regular expression RE"
    )
    one.add_argument(
        "--grammar", metavar="FILE", default=None, help="the reply follows the Lark grammar in FILE (.lark)"
    )
    g.add_argument(
        "--no-jump-forward",
        dest="jump_forward",
        action="store_false",
        help="do not draft the tokens the grammar forces (for comparison; the output is the same)",
    )
    g.add_argument(
        "--constraint-sampling",
        choices=["mask", "awrs"],
        default="mask",
        help="how sampling obeys the constraint: mask (default; the locally masked distribution) or awrs "
        "(adaptive weighted rejection; with --particles > 1, sequential Monte Carlo towards the global "
        "constrained distribution; no speculation)",
    )
    g.add_argument(
        "--particles",
        type=int,
        default=1,
        metavar="K",
        help="SMC particles for --constraint-sampling awrs (default: 1, AWRS alone)",
    )


def _read(path: str, what: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecDecodeError(f"{what} file {path!r} does not exist") from None
    except IsADirectoryError:
        raise SpecDecodeError(f"{what} file {path!r} is a directory") from None
    except UnicodeDecodeError as e:
        raise SpecDecodeError(f"{what} file {path!r} is not UTF-8 text (byte at offset {e.start})") from None
    except OSError as e:
        raise SpecDecodeError(f"cannot read {what} file {path!r}: {e.strerror or e}") from None


def constraint_kwargs(args) -> dict:
    """The API's constraint arguments from the parsed options, files read and JSON parsed (so a
    bad file is one line before any model loads)."""
    out: dict = {}
    if getattr(args, "json_schema", None) is not None:
        text = _read(args.json_schema, "the JSON schema")
        try:
            out["json_schema"] = json.loads(text)
        except json.JSONDecodeError as e:
            raise SpecDecodeError(f"the JSON schema in {args.json_schema!r} is not valid JSON: {e}") from None
    elif getattr(args, "regex", None) is not None:
        out["regex"] = args.regex
    elif getattr(args, "grammar", None) is not None:
        out["grammar"] = _read(args.grammar, "the Lark grammar")
    if out:
        from specdecode.constraints.grammar import check_constraint

        check_constraint(**out)
    if out and not getattr(args, "jump_forward", True):
        out["jump_forward"] = False
    sampling, particles = getattr(args, "constraint_sampling", "mask"), getattr(args, "particles", 1)
    from specdecode.constraints.awrs import check_options

    check_options(
        sampling, particles, constrained=bool(out), temperature=args.temperature, top_k=args.top_k,
        top_p=args.top_p, method=args.method, flags=True,
    )  # fmt: skip
    if sampling != "mask":
        out.update(constraint_sampling=sampling, particles=particles)
    return out


# ---- `specdecode generate --monitor python --repo DIR` ------------------------------------------
MONITOR_HELP = """\
monitor-guided decoding (code completion that only uses names the repository defines):
  specdecode generate --raw --monitor python --repo ./shop --max-new-tokens 16 "$(cat head.py)"
(head.py: the start of a file in ./shop, ending for instance with "store.")
After an attribute-access dot (and after "from m import "), jedi lists the names the object
(or module) has, from the code so far plus the repository; the model may only write one of them. Elsewhere nothing is constrained. With
--raw the prompt is the code the answer continues; without it, the code is the reply's last
``` block. Every method still drafts; greedy output equals greedy decoding with the monitor's
mask at every step."""


def add_monitor_arguments(p) -> None:
    g = p.add_argument_group("monitor-guided decoding")
    g.add_argument(
        "--monitor",
        metavar="LANG",
        default=None,
        help="constrain names after `obj.` to those a static analyzer finds (python: jedi)",
    )
    g.add_argument(
        "--repo", metavar="DIR", default=None, help="the repository the code belongs to (for --monitor)"
    )


def monitor_kwargs(args) -> dict:
    """The API's ``monitor`` and ``repo`` from the parsed options, checked before loading."""
    language, repo = getattr(args, "monitor", None), getattr(args, "repo", None)
    if language is None and repo is None:
        return {}
    if any(getattr(args, k, None) is not None for k in ("json_schema", "regex", "grammar")):
        raise SpecDecodeError(
            "give a grammar constraint (--json-schema, --regex, --grammar) or a monitor, not both"
        )
    from specdecode.constraints.monitor import check_monitor

    return {"monitor": language, "repo": str(check_monitor(language, repo))}
