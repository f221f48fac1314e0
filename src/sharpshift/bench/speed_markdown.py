"""The speed section of docs/benchmarks.md, from the benchmark's JSON."""
from __future__ import annotations

def render_markdown(r: dict) -> str:
    m, s, cases = r["machine"], r["settings"], r["cases"]
    lines = [
        "## Speed: `sharpshift bench speed`",
        "",
        f"Command: `{r['command']}`. Machine: {m['cpu']}, {m['cores']} cores, {m['threads']} torch threads, "
        f"torch {m['torch']}, {m['platform']}.",
        f"Settings: {s['dataset']} {s['image_size']}x{s['image_size']}, {s['backbone']} (width {s['width']}), "
        f"batch {s['batch_size']} images (two views each), precision {s['precision']}, online probe off. "
        f"Median of {s['steps_per_round']} steps x {s['rounds']} rounds per case after {s['warmup_steps']} warm-up "
        f"steps, cases interleaved in each round, one process ({s['wall_s']:.0f} s in all).",
        "",
        "### Throughput",
        "",
        "Ratio: the case's median step time over its reference's: an add-on's is its base method's plain step "
        "(measured in the same rounds); a base method's and the bare loop's is SimCLR's.",
        "",
        "| case | step (ms) | images/s | step-time ratio | note |",
        "|---|---|---|---|---|",
    ]
    for name, c in cases.items():
        if name == "split":
            continue
        label = name if name in (c["base"], "bare") else f"{c['base']} + {name}"
        ratio = "1 (reference)" if name == c["ratio_to"] else f"{c['ratio']:.2f}x {c['ratio_to']}"
        lines.append(f"| {label} | {c['step_s'] * 1000:.1f} | {c['images_per_s']:.0f} | {ratio} | {c['note']} |")
    if "bare" in cases:
        lines += ["", f"Framework overhead (sharpshift's SimCLR step against the bare loop): "
                      f"**{(1 / cases['bare']['ratio'] - 1) * 100:+.1f}%**."]
    p, f = r["peak"], r["flops"]
    lines += [
        "",
        "### The machine's limit",
        "",
        f"Peak: **{p['flops_per_s'] / 1e9:.1f} GFLOP/s** ({p['dtype']}, best of a few {p['matmul_n']}x"
        f"{p['matmul_n']} matmuls in the same process). Model: {f['forward_per_image'] / 1e6:.1f} MFLOP per image "
        f"forward (both views), {f['step'] / 1e9:.2f} GFLOP per step. How counted: {f['how']}.",
        "",
        "| loop | achieved GFLOP/s | fraction of peak |",
        "|---|---|---|",
    ]
    loops = {"simclr": "sharpshift SimCLR step", "bare": "bare PyTorch SimCLR step"}
    lines += [f"| {loops[n]} | {a['flops_per_s'] / 1e9:.1f} | {a['of_peak'] * 100:.0f}% |"
              for n, a in r["achieved"].items()]
    if "split" in r:
        total = sum(r["split"].values())
        lines += [
            "",
            "### Where a plain SimCLR step goes",
            "",
            "Mean per step of the instrumented Lightning step (the `split` case, logging every step: the worst "
            "case, the default logs every 20). views: the view generator; forward: method loss; backward: "
            "manual_backward; optimizer: zero_grad, clipping, step; logging: self.log / log_dict and the write to "
            "the CSV and TensorBoard loggers; other: the rest (LR schedule, Lightning's hooks).",
            "",
            "| part | ms | share |",
            "|---|---|---|",
        ]
        lines += [f"| {part} | {t * 1000:.1f} | {t / total * 100:.1f}% |" for part, t in r["split"].items()]
        lines.append(f"| total | {total * 1000:.1f} | 100% |")
    return "\n".join(lines) + "\n"
