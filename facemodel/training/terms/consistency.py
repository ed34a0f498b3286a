"""Code consistency (our deviation): pairs sharing a factor's code get the same regressed
targets from the critic's regression heads (term ``regression``)."""

from __future__ import annotations

from .base import Contribution, GeneratorContext, Term, TermConfig


class ConsistencyConfig(TermConfig):
    """``weight``: lambda_consistency (needs ``regression.weight`` > 0 to see anything)."""


class Consistency(Term):
    """Mean squared difference of the standardised regressed targets of each pair, for every
    factor whose code the pairs share."""

    name = "consistency"
    Config = ConsistencyConfig
    logs = ("g_cons",)

    def generator(self, ctx: GeneratorContext) -> Contribution:
        cons = ctx.zero()
        for f in ctx.config.factors:
            if f.name != ctx.batch.labelled and f.name in ctx.out.regression:
                r = ctx.out.regression[f.name].float()
                cons = cons + (r[ctx.a] - r[ctx.b]).square().mean()
        return self.config.weight * cons, {"g_cons": float(cons.detach())}
