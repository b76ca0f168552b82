"""The plan as text: what was assumed, one line per term, the total and the verdict."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from . import PlanReport

PARTS = ("vision", "merger", "language", "embeddings", "lm_head", "other")


def _count(n: float) -> str:
    if n >= 1e9:
        return f"{n / 1e9:.2f} B"
    return f"{n / 1e6:.1f} M" if n >= 1e6 else f"{n:,.0f}"


def _context(r: PlanReport) -> list[str]:
    p, s, f = r.plan, r.plan.setup, r.facts
    parts = ", ".join(f"{k} {_count(p.params[k])}" for k in PARTS if p.params.get(k))
    if s.mode == "full":
        trained = f"full: {_count(p.params['trainable'])} trainable"
    else:
        trained = f"{s.mode} r={s.lora_r}: {_count(p.params['lora'])} LoRA"
        if p.params["copies"]:
            trained += f" + {_count(p.params['copies'])} in modules_to_save ({', '.join(s.modules_to_save)})"
    shard = {1: "optimizer states", 2: "gradients and optimizer states", 3: "weights, gradients, optimizer"}
    engine = s.engine.name
    if s.engine.stage:
        engine += f" ({shard[s.engine.stage]} divided by {s.nproc} rank(s): --nproc {s.nproc})"
    rows = "packed rows" if s.packing else "samples"
    lines = [
        f"model    {f.family.title}, {f.origin}",
        f"params   {_count(p.params['total'])}: {parts}",
        f"train    {trained}; {s.dtype}; {engine}",
        f"batch    {s.batch} x {s.seq}-token {rows}; gradient checkpointing "
        f"{'on' if s.gradient_checkpointing else 'off'}; {s.attn} attention",
    ]
    if s.sp > 1:
        from .estimate import precision
        from .sequence import traffic

        t = traffic(f, s, precision(s))
        linear = f", {t.linear_layer / 2**20:.1f} MiB a linear-attention layer" if t.linear_layer else ""
        lines.append(
            f"sequence {s.sp} ranks a sample ({s.seq // s.sp} tokens each; data parallel {s.nproc // s.sp}); "
            f"all-to-all sends {t.attention_layer / 2**20:.1f} MiB a rank per attention layer{linear} "
            f"in forward, {t.step / 2**30:.2f} GiB a micro-batch in all"
        )
    if s.ep > 1:
        from .estimate import precision
        from .experts import all_to_all, experts_of

        ex = experts_of(f)
        layer, step = all_to_all(f, s, precision(s))
        lines.append(
            f"experts  {s.ep} ranks split each layer's {ex.count} experts ({ex.count // s.ep} each, "
            f"{s.nproc // s.ep} copies); all-to-all sends {layer / 2**20:.1f} MiB a rank per MoE layer "
            f"in forward, {step / 2**30:.2f} GiB a micro-batch in all"
        )
    return lines


def _experts(r: PlanReport) -> list[str]:
    """ZeRO-3 against expert parallelism, with the verdict and why."""
    if not r.experts:
        return []
    lines = [f"mixture of experts on {r.plan.setup.nproc} ranks (per rank; received per micro-batch):"]
    for o in r.experts:
        fits = (
            "" if r.capacity_gib is None else (" fits" if o.total_gib <= r.capacity_gib else " does not fit")
        )
        lines.append(f"  - {o.name}: {o.total_gib:.1f} GiB{fits}, {o.moved_gib:.1f} GiB moved")
    if len(r.experts) == 2:
        zero, ep = r.experts
        if r.capacity_gib is not None and (zero.total_gib <= r.capacity_gib) != (
            ep.total_gib <= r.capacity_gib
        ):
            best = zero if zero.total_gib <= r.capacity_gib else ep
            lines.append(f"  {best.name} fits and the other does not")
        elif ep.moved_gib < zero.moved_gib:
            lines.append(
                f"  {ep.name}: {zero.moved_gib / max(ep.moved_gib, 1e-9):.0f}x less traffic: ZeRO-3 gathers "
                f"every expert on every rank in every pass, expert parallelism sends the tokens to them "
                f"(train.expert_parallel: {ep.setup.ep})"
            )
    return lines


def format_plan(r: PlanReport) -> str:
    """The report printed by `qwenvl-ft plan`."""
    p = r.plan
    lines = [f"qwenvl-ft plan {r.recipe}".rstrip(), *_context(r), ""]
    width = max(len(t.name) for t in p.terms)
    lines.append(f"{'per rank':<{width}}  {'GiB':>7}")
    for t in p.terms:
        when = {"step": " [optimizer step]"}.get(t.phase, "")
        lines.append(f"{t.name:<{width}}  {t.gib:7.2f}  {t.note}{when}")
    lines.append(
        f"{'total':<{width}}  {p.total_gib:7.2f}  static + max(forward/backward, optimizer step) + overhead"
    )
    lines += [f"note: {n}" for n in p.notes]
    lines += _experts(r)
    if r.capacity_gib is None:
        lines.append("pass --gpu NAME or --gpu-memory GIB for a verdict")
        return "\n".join(lines)
    lines.append(f"{'GPU ' + r.gpu:<{width}}  {r.capacity_gib:7.2f}")
    left = r.capacity_gib - p.total_gib
    if r.fits:
        lines.append(f"FITS: {left:.1f} GiB headroom ({left / r.capacity_gib:.0%} of the GPU)")
        if left < 0.05 * r.capacity_gib:
            lines.append("  (tight: less headroom than the estimate's uncertainty)")
        return "\n".join(lines)
    lines.append(f"DOES NOT FIT: {-left:.1f} GiB over")
    if r.levers:
        lines.append("biggest levers (one change each, new total per rank):")
        for lever in r.levers:
            verdict = "fits" if lever.total_gib <= r.capacity_gib else "still over"
            lines.append(f"  - {lever.change}: {lever.total_gib:.1f} GiB ({verdict})")
    if r.sequence_fit:
        n, total = r.sequence_fit
        lines.append(
            f"sequence parallelism: train.sequence_parallel: {n} is the smallest that fits ({total:.1f} GiB "
            f"per rank; --nproc a multiple of {n})"
        )
    return "\n".join(lines)
