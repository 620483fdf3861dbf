"""What `minimind bench` prints and writes: the goals and whether each is met, the Markdown tables, and the
book page's block of tables between two markers."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

# The goals the benchmark is judged by (issue "Performance"): ratios, each measured in one run.
GOALS = {"training": 1.1,   # training tokens/s over transformers' Llama (CPU: tiny and minimind2-small)
         "decoding": 1.0,   # decoding tokens/s over transformers' generate
         "moe": 1.5,        # MoE time per token over its dense twin's, at most
         # precision and compile (result["variants"][i]["ratios"]), at least
         "auto_vs_transformers_fp32": 2.0,  # ours in the --dtype auto precision over transformers fp32, eager
         "bf16_vs_transformers_bf16": 1.1,  # ours over transformers, both bf16 autocast, eager
         "compiled_vs_eager": 1.1}          # ours compiled over ours eager, same dtype
SKIPPED = {"minimind_code": "MiniMind's code", "compiled": "the compiled variants"}
VARIANT_GOALS = {"auto_vs_transformers_fp32": "precision (--dtype auto)", "bf16_vs_transformers_bf16": "bf16 eager",
                 "compiled_vs_eager": "torch.compile"}


def goal_lines(result: dict) -> list[str]:
    """One line per goal: the measured ratio, the goal, met or not."""
    def verdict(ok: bool) -> str:
        return "met" if ok else "**not met**"
    lines = []
    for r in result["training"]:
        lines.append(f"- training, {r['preset']}: {r['ratio']:.2f}x transformers' Llama (goal: at least "
                     f"{GOALS['training']}x): {verdict(r['ratio'] >= GOALS['training'])}")
    for r in result["decoding"]:
        lines.append(f"- decoding, {r['preset']} at batch {r['batch_size']}: {r['ratio']:.2f}x transformers' generate "
                     f"(goal: at least {GOALS['decoding']}x): {verdict(r['ratio'] >= GOALS['decoding'])}")
    moe = result.get("moe")
    if moe:
        ratio = moe["time_per_token_ratio"]
        lines.append(f"- MoE, {moe['preset']}: {ratio:.2f}x its dense twin's time per token (goal: at most "
                     f"{GOALS['moe']}x): {verdict(ratio <= GOALS['moe'])}")
    for row in result.get("variants") or []:
        for key, label in VARIANT_GOALS.items():
            r = row["ratios"].get(key)
            if r is None:
                why = row["skipped"].get("compiled") if key == "compiled_vs_eager" else None
                lines.append(f"- {label}, {row['preset']}: not measured ({why or 'its variants did not run'})")
                continue
            lines.append(f"- {label}, {row['preset']}: {r['fast']} {r['value']:.2f}x {r['slow']} (goal: at least "
                         f"{GOALS[key]}x): {verdict(r['value'] >= GOALS[key])}")
    return lines


def _fmt(x, spec: str = ",.0f") -> str:
    return "-" if x is None else format(x, spec)


def _dtypes(settings: dict) -> str:
    """'float32'; or, where --dtype auto chose by model size, 'auto (tiny float32, minimind2-small bfloat16)'."""
    per = settings.get("dtypes") or {}
    if len(set(per.values())) > 1:
        return f"{settings.get('dtype_asked')} ({', '.join(f'{p} {d}' for p, d in per.items())})"
    return next(iter(per.values()), settings["dtype"])


def format_table(result: dict) -> str:
    """The result as Markdown tables (what `minimind bench` prints and book/performance.md shows)."""
    m, s = result["machine"], result["settings"]
    lines = [f"{m['device_name']} ({m['device']}), torch {m['torch']}, transformers {m['transformers']}, "
             f"{m['threads']} thread(s) of {m['cpu_count']} cores, load average {m['load_average_before']} "
             f"before, {m.get('load_average_after')} after; dtype {_dtypes(s)}, compile {s['compile']}", "",
             "| training | batch x seq | ours tok/s | transformers tok/s | ratio | MFU ours | MFU theirs |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in result["training"]:
        lines.append(f"| {r['preset']} | {r['batch_size']} x {r['seq_len']} | {_fmt(r['ours_tokens_per_s'])} | "
                     f"{_fmt(r['transformers_tokens_per_s'])} | {r['ratio']:.2f}x | {_fmt(r['ours_mfu'], '.1%')} | "
                     f"{_fmt(r['transformers_mfu'], '.1%')} |")
    lines += ["",
              "| decoding | batch | prompt + new | ours tok/s | transformers generate tok/s | ratio | same tokens |",
              "| --- | ---: | --- | ---: | ---: | ---: | --- |"]
    for r in result["decoding"]:
        lines.append(f"| {r['preset']} | {r['batch_size']} | {r['prompt_len']} + {r['new_tokens']} | "
                     f"{_fmt(r['ours_tokens_per_s'])} | {_fmt(r['transformers_tokens_per_s'])} | {r['ratio']:.2f}x | "
                     f"{'yes' if r['same_tokens'] else 'no'} |")
    if result.get("fast_paths"):
        lines += ["", "| fast paths | batch x seq | labels masked | variant | tok/s | all on is faster by |",
                  "| --- | --- | ---: | --- | ---: | ---: |"]
        for r in result["fast_paths"]:
            lines.append(f"| {r['preset']} | {r['batch_size']} x {r['seq_len']} | {r['prompt_fraction']:.0%} | "
                         f"{r['variant']} | {_fmt(r['tokens_per_s'])} | {r['speedup_of_all_on']:.2f}x |")
    moe = result.get("moe")
    if moe:
        lines += ["", "| MoE vs dense twin | batch x seq | active params | MoE tok/s | dense tok/s | "
                      "MoE time per token / dense |", "| --- | --- | --- | ---: | ---: | ---: |",
                  f"| {moe['preset']} | {moe['batch_size']} x {moe['seq_len']} | {moe['moe_active_params']:,} vs "
                  f"{moe['dense_active_params']:,} | {_fmt(moe['moe_tokens_per_s'])} | "
                  f"{_fmt(moe['dense_tokens_per_s'])} | {moe['time_per_token_ratio']:.2f}x |"]
    if result.get("variants"):
        lines += ["", "| precision and compile | batch x seq | variant | tok/s | vs transformers fp32 eager |",
                  "| --- | --- | --- | ---: | ---: |"]
        for row in result["variants"]:
            for v in row["variants"]:
                lines.append(f"| {row['preset']} | {row['batch_size']} x {row['seq_len']} | {v['name']} | "
                             f"{_fmt(v['tokens_per_s'])} | {v['vs_transformers_fp32']:.2f}x |")
        lines.append("")
        for row in result["variants"]:
            lines += [f"- {row['preset']}, `{key}`: {r['fast']} is {r['value']:.2f}x as fast as {r['slow']}"
                      for key, r in row["ratios"].items()]
            if row["compile_s"]:
                lines.append(f"- {row['preset']}: first compiled step, compiling included: "
                             + ", ".join(f"{k} {t:.0f} s" for k, t in row["compile_s"].items()))
            lines += [f"- {row['preset']}: {SKIPPED.get(what, what)} skipped: {why}"
                      for what, why in row["skipped"].items()]
    p = result.get("projection")
    if p:
        lines += ["", f"pretrain_hq epoch ({p['samples']:,} samples x {p['seq_len']} = {p['tokens']:.3g} tokens, "
                      f"{p['preset']}, {p['flops_per_token']:.3g} FLOPs/token) on an RTX 3090: "
                  + (f"{p['hours']:.2f} h at the measured MFU {p['mfu']:.1%}" if p["hours"] else
                     "no MFU measured here (needs a GPU with a known peak)")
                  + f"; the seed project's {p['seed_hours']} h implies MFU {p['seed_implied_mfu']:.1%}"]
    lines += ["", "Against the goals:", ""] + goal_lines(result)
    return "\n".join(lines)


# The book's performance page holds the tables of a committed JSON result between these two lines,
# written by `minimind bench --json FILE --page PAGE` (tests check that they match the JSON).
PAGE_BEGIN = "<!-- begin: tables written by `minimind bench` from {json} -->"
PAGE_END = "<!-- end: tables written by `minimind bench` -->"


def page_tables(page_text: str, json_name: str, begin: str = PAGE_BEGIN, end: str = PAGE_END) -> Optional[str]:
    """The tables between the markers for `json_name` in a page, None when the page has no such block."""
    begin = begin.format(json=json_name)
    if begin not in page_text:
        return None
    return page_text.split(begin, 1)[1].split(end, 1)[0].strip("\n")


def update_page(page: str | Path, result, json_name: str, tables: Optional[str] = None, begin: str = PAGE_BEGIN,
                end: str = PAGE_END) -> None:
    """Replace the tables for `json_name` in `page` with `tables` (default: the ones `result` gives)."""
    page = Path(page)
    text = page.read_text()
    marker = begin.format(json=json_name)
    if page_tables(text, json_name, begin, end) is None or end not in text.split(marker, 1)[1]:
        raise ValueError(f"{page} has no block for {json_name}: add the two lines\n{marker}\n{end}\n"
                         "where the tables go")
    head, rest = text.split(marker, 1)
    tail = rest.split(end, 1)[1]
    page.write_text(f"{head}{marker}\n\n{tables if tables is not None else format_table(result)}\n\n{end}{tail}")

