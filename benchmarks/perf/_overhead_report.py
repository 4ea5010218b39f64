"""The Markdown report of :mod:`benchmarks.perf.overhead` (a function of its JSON data only)."""
from __future__ import annotations

from typing import Any

from .._common import fmt_spread, fmt_time
from .._report import md_table, paragraphs, section

__all__ = ["GENERALIST", "INFERENCE", "KEY", "LEAN", "ORTHOGONAL", "PARTS", "PART_NAMES",
           "RADEMACHER", "RADEMACHER_TORCH", "render"]

#: The timed configuration with Rademacher directions (the others use the default, Gaussian).
RADEMACHER = "ZOSGD (Rademacher)"
#: The same with the compiled kernels off (``torchzo.oracle.kernels.disabled()``): torch ops.
RADEMACHER_TORCH = "ZOSGD (Rademacher, torch ops)"
#: The timed configuration with orthogonal directions (a QR of each group of q draws).
ORTHOGONAL = "ZOSGD (orthogonal)"
#: The shipped generalist as it runs (its bar: at most 3x ZOAdam's step overhead).
GENERALIST = "ZOLSTM (generalist)"
#: ZOSGD at inference memory, and the lean learned architecture there (its bar: at most 1.5x
#: that step, with at most 2 bytes of state a parameter).
INFERENCE = "ZOSGD (inference)"
LEAN = "ZOLSTM lean (inference)"

# The oracle's parts timed beside ZOSGD's step (see ``benchmarks.perf.overhead._contenders``).
PARTS = ["wrapper", "directions", "perturb", "accumulate"]
PART_NAMES = {
    "wrapper": "call_closure wrapper",
    "directions": "direction sampling",
    "perturb": "perturb",
    "accumulate": "accumulate",
}
KEY = ["d", "layout", "threads"]


def _us(s: dict[str, float]) -> str:
    return fmt_spread({k: v * 1e6 for k, v in s.items() if k in ("median", "p25", "p75")})


def _rademacher_share(t: dict[str, Any]) -> str:
    part, total = t["zosgd_breakdown_s"].get("directions_rademacher"), t["overhead_s"].get(
        RADEMACHER)
    if part is None or total is None:
        return ""
    return f"{fmt_time(part['median'])} ({100 * part['median'] / total['median']:.0f}%)"


def _intro(data: dict[str, Any]) -> list[str]:
    cfg, m = data["config"], data["machine"]
    q = cfg["q"]
    return [*section(
        "Optimizer overhead: torchzo vs torch.optim.Adam",
        "What one `step()` costs the optimizer itself, with a closure that costs nothing "
        f"(it returns a precomputed 0-dim tensor). ZO optimizers use q={q} and the "
        f"`{cfg['estimator']}` estimator, so a step makes q+1={q + 1} closure calls; the time of "
        f"{q + 1} bare closure calls, measured in the same repetition, is subtracted. "
        "`torch.optim.Adam` (`.grad` pre-filled; `foreach` default, i.e. the single-tensor path "
        "on CPU, as for the ZO optimizers) runs on the same shapes in the same run. Each "
        "repetition times every contender once, in shuffled order; cells are the median over "
        f"{cfg['reps']} repetitions with the interquartile range in parentheses. Ratios and "
        "differences are taken per repetition, then summarized.",
        "Layouts: `flat` is one tensor of d elements; `model` is d split MLP-like into 5 "
        "(weight matrix, bias) pairs.",
        f"Intra-op threads: {cfg['threads']} (`--threads`). One by default because the "
        "oracle's Gaussian generator (the compiled kernel) runs on one thread, and because on "
        "a machine shared with other jobs, multi-threaded timings measure OpenMP barrier "
        "stalls (a thread of the team waiting for a core) more than work.",
        f"Machine: {m['cpu']}, {m['logical_cpus']} logical CPUs ({m['cpus_usable']} usable, "
        f"shared with other jobs during the run: load average {m['loadavg'][0]:.2f} at start, "
        f"{data['loadavg_end'][0]:.2f} at end), torch {m['torch']} (default: {m['torch_threads']} "
        f"intra-op threads), Python {m['python']}, {m['platform']}.",
        level=1), *paragraphs(*_kernels(data),
                              f"Command: `{data['command']}` ({data['elapsed_s']:.0f} s).")]


def _kernels(data: dict[str, Any]) -> list[str]:
    k = data.get("kernels")
    if k is None:
        return []
    if k["available"]:
        return [f"Rademacher kernels (`torchzo.oracle.kernels`): built with `{k['command']}`; "
                f"`{RADEMACHER_TORCH}` is the same optimizer with them off."]
    return [f"Rademacher kernels (`torchzo.oracle.kernels`): unavailable ({k['reason']}), so "
            f"`{RADEMACHER}` ran on torch ops too."]


def _ratios(timing: list[dict[str, Any]], names: list[str], q: int) -> list[str]:
    """Each step's overhead over Adam's step, and per query."""
    generalist = all("generalist_over_zoadam" in t for t in timing)
    lean = all("lean_over_zosgd_inference" in t for t in timing)
    rows = [[t["d"], t["layout"], t["threads"], _us(t["time_s"]["Adam"])]
            + [fmt_spread(t["ratio_to_adam"][n]) for n in names]
            + [fmt_spread(t["zolstm_over_zoadam"])]
            + ([fmt_spread(t["generalist_over_zoadam"])] if generalist else [])
            + ([fmt_spread(t["lean_over_zosgd_inference"])] if lean else [])
            for t in timing]
    per_query = [[t["d"], t["layout"], t["threads"]] + [_us(t["per_query_s"][n]) for n in names]
                 for t in timing]
    return [*section("Step overhead as a multiple of Adam's step"),
            md_table([*KEY, "Adam step (µs)", *(f"{n} / Adam" for n in names), "ZOLSTM / ZOAdam"]
                     + ([f"{GENERALIST} / ZOAdam"] if generalist else [])
                     + ([f"{LEAN} / {INFERENCE}"] if lean else []), rows),
            *section(f"Overhead per query (step overhead / {q + 1}), µs"),
            md_table([*KEY, *names], per_query)]


def _floor_section(timing: list[dict[str, Any]], names: list[str], q: int) -> list[str]:
    """The overhead as a multiple of the memory floor measured in the same repetitions."""
    if not timing or "over_floor" not in timing[0]:
        return []
    rows = [[t["d"], t["layout"], t["threads"], _us(t["floor_s"]["add"]),
             _us(t["floor_s"]["copy"]), _us(t["floor_s"]["step"])]
            + [fmt_spread(t["over_floor"][n]) for n in names] for t in timing]
    return [*section(
        "Overhead as a multiple of the memory floor",
        "A query cannot cost less than a few passes over the d floats (perturb, restore, "
        "accumulate). The floor of a step is taken as q + 1 add passes: one add pass is "
        "`torch._foreach_add_(g, u, alpha=...)` over the case's tensors (read 2d floats, write "
        "d), the accumulate of one direction; a copy (`torch._foreach_copy_`, read d, write d) "
        f"is shown beside it. Both are timed as contenders in the same repetitions as the steps; "
        f"each cell is an optimizer's step overhead divided by {q + 1} add passes of the same "
        "repetition, i.e. its overhead per query as a multiple of one add pass."),
        md_table([*KEY, "add pass (µs)", "copy (µs)", f"floor: {q + 1} adds (µs)",
                  *(f"{n} / floor" for n in names)], rows)]


def _breakdown(timing: list[dict[str, Any]], q: int) -> list[str]:
    """Where ZOSGD's step overhead goes, part by part."""
    rows = []
    for t in timing:
        b, total = t["zosgd_breakdown_s"], t["overhead_s"]["ZOSGD"]["median"]
        rows.append([t["d"], t["layout"], t["threads"], fmt_time(total)] + [
            f"{fmt_time(b[k]['median'])} ({100 * b[k]['median'] / total:.0f}%)"
            for k in [*PARTS, "other"]] + [_rademacher_share(t)])
    return [*section(
        "Where the overhead goes (ZOSGD)",
        "Each part is the library's own code (`call_closure`, `Layout.sample`, "
        f"`ParameterBackup.perturb`, `torch._foreach_add_`) run as many times as one step runs it "
        f"({q + 1}, {q}, {q}, {q}), timed in the same repetitions; the wrapper is `call_closure` "
        "minus the bare closure. *Other* is the rest of the step's overhead: seeds, backup "
        "clone and restore, the zero accumulator, Python glue between calls, and the update. "
        "Medians; percentages of the ZOSGD step overhead. The last column is the direction "
        f"draw of {RADEMACHER} (`Layout(params, \"rademacher\").direction`, {q} times: packed "
        "signs where the kernels run, floats where they do not), as a percentage of that "
        "optimizer's step overhead."),
        md_table([*KEY, "overhead", *PART_NAMES.values(), "other", "Rademacher draw"], rows)]


def _split(split: list[dict[str, Any]], q: int) -> list[str]:
    """A whole step split into oracle, update and closure."""
    if not split:
        return []
    rows = [[c["d"], name, fmt_spread(o["step_s"], fmt_time), fmt_time(c["closure_s"]["median"]),
             fmt_time(o["oracle_s"]["median"]), fmt_time(o["update_s"]["median"]),
             f"{100 * o['oracle_share']['median']:.0f}%"]
            for c in split for name, o in c["optimizers"].items()]
    return [*section(
        "Step time split: oracle, update, closure (one flat tensor)",
        f"A whole `step()` of each optimizer; *closure*: the {q + 1} calls of the free "
        "closure; *update*: the optimizer's update of the parameters from an estimate "
        "(each group's update rule; for ZOLSTM the step's plan and the learned update, the "
        "QueryRNN run for the next step's query scales included), timed on its own; "
        "*oracle*: the rest (seeds, direction sampling, perturb and restore, accumulation, "
        "Python glue). Interleaved repetitions as above (fewer at large d: "
        + ", ".join(f"{c['reps']} at d={c['d']}" for c in split) + "); medians, "
        "IQR in parentheses for the step; fast contenders looped within a sample as above. "
        "A real closure adds its own cost times q + 1 to the step."),
        md_table(["d", "optimizer", "step (IQR)", "closure", "oracle", "update",
                  "oracle share of the step"], rows)]


def _two(x: float) -> str:
    return f"{x:.2f}"


def _memory(mem: list[dict[str, Any]]) -> list[str]:
    """Bytes per parameter at a step's peak and between steps."""
    dims = sorted({r["d"] for r in mem})
    rows = []
    for name in dict.fromkeys(r["optimizer"] for r in mem):
        by_d = {r["d"]: r for r in mem if r["optimizer"] == name}
        last = by_d[dims[-1]]
        rows.append([name]
                    + [_two(by_d[d]["steady_step"]["peak_extra_bytes_per_param"]) for d in dims]
                    + [_two(last["first_step"]["peak_extra_bytes_per_param"]),
                       _two(last["state_bytes_per_param"]
                            + last.get("scratch_bytes_per_param", 0.0))])
    return [*section(
        "Memory per parameter (float32, one flat tensor)",
        "*Peak extra*: the highest number of bytes allocated during a step beyond what existed "
        "before it (parameters, Adam's `.grad`, optimizer state), divided by d, from the "
        "allocator events `torch.profiler` records with `profile_memory=True`. The first step "
        "also allocates the optimizer state; *steady* is a later step. *Kept*: bytes held "
        "between steps, divided by d: the optimizer state's tensors, and for the ZO optimizers "
        "the scratch (a step's copies of the parameters and of the state it may undo, and its "
        "estimate unless the update keeps it, held for the next step's so that their pages "
        "are not faulted in afresh every step; a steady step's peak extra is that much lower). "
        "Adam's `.grad` (4 bytes/param, which the ZO optimizers do not need) is "
        "not counted."),
        md_table(["optimizer", *(f"peak extra, steady, d={d}" for d in dims),
                  f"peak extra, first step, d={dims[-1]}",
                  f"kept (state + scratch), d={dims[-1]}"], rows)]


def _rss(checks: list[dict[str, Any]], mem: list[dict[str, Any]]) -> list[str]:
    """The profiler's peaks beside the resident set's, measured in fresh processes."""
    if not checks:
        return []
    d = checks[0]["d"]
    by_name = {r["optimizer"]: r for r in mem if r["d"] == d}
    rows = []
    for r in checks:
        p = by_name.get(r["optimizer"])
        if "error" in r or p is None:
            rows.append([r["optimizer"], "failed", "", "", ""])
            continue
        rows.append([r["optimizer"]] + [_two(src[ph]["peak_extra_bytes_per_param"])
                                        for ph in ("first_step", "steady_step") for src in (p, r)])
    return [*paragraphs(
        f"Check of the method: the same steps at d={d} in a fresh process each, measuring "
        "the resident-set high-water mark (`VmHWM`, reset through `/proc/self/clear_refs` "
        "before each step) above the resident set before the step. Buffers of "
        f"{4 * d / 2**20:.0f} MiB are mapped and unmapped by the allocator, so RSS follows "
        "allocation closely."),
        md_table(["optimizer", "first step: profiler", "first step: RSS",
                  "steady: profiler", "steady: RSS"], rows)]


def render(data: dict[str, Any]) -> str:
    timing, q = data["timing"], data["config"]["q"]
    names = list(timing[0]["ratio_to_adam"]) if timing else []
    return "\n".join([*_intro(data), *_ratios(timing, names, q),
                      *_floor_section(timing, names, q), *_breakdown(timing, q),
                      *_split(data.get("split") or [], q), *_memory(data["memory"]),
                      *_rss(data["rss_check"], data["memory"])])
