"""``ar``: plain autoregressive decoding, the reference every method must reproduce."""

from specdecode.drafters.base import Drafter
from specdecode.registry import register


@register("ar", "plain autoregressive decoding (one token per target forward); the reference output")
class Autoregressive(Drafter):
    def __init__(self, ctx) -> None:
        pass
