"""One entry point: `sharpshift pretrain | evaluate | configs | download ...`.

User errors print one line (`error: ...`) and exit with code 2, before any training starts.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Optional

import typer

from sharpshift.cli_args import split_args
from sharpshift.config import METHOD_DEFAULTS
from sharpshift.errors import UserError
from sharpshift.process_env import reexec_tuned

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Self-supervised pretraining that is sharpness-aware, shift-aware and discriminative.")

diagnose_app = typer.Typer(no_args_is_help=True, help="Diagnostics that make the papers' claims measurable.")
app.add_typer(diagnose_app, name="diagnose")
from sharpshift.commands.diagnose_amcl import amcl_command  # noqa: E402

diagnose_app.command("amcl")(amcl_command)
from sharpshift.commands.diagnose_views import views_command  # noqa: E402

diagnose_app.command("views", context_settings={"allow_interspersed_args": True})(views_command)
from sharpshift.commands.diagnose_sharpness import sharpness_command  # noqa: E402

diagnose_app.command("sharpness")(sharpness_command)
from sharpshift.commands.diagnose_discriminability import discriminability_command  # noqa: E402
from sharpshift.commands.supervised import supervised_command  # noqa: E402

diagnose_app.command("discriminability")(discriminability_command)
app.command("supervised", context_settings={"allow_interspersed_args": True})(supervised_command)

DataDir = typer.Option(None, "--data-dir", help="Folder with the dataset files (else $SHARPSHIFT_DATA, then defaults).")


@app.command(context_settings={"allow_interspersed_args": True})
def pretrain(
    args: Optional[list[str]] = typer.Argument(None, help="[CONFIG] [key=value ...], e.g. byol optim.lr=0.5"),
    data_dir: Optional[str] = DataDir,
    out_dir: Optional[str] = typer.Option(None, "--out-dir", help="Parent folder of run folders (default ./runs)."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue this run folder from its newest "
                                          "complete checkpoint, with its own config.yaml (trainer.*/eval.* may change)."),
) -> None:
    """Pretrain an encoder; writes a run folder with config, checkpoints, logs, backbone and eval.json."""
    from sharpshift.config import load_config

    config, overrides = split_args(args)
    if resume is not None:
        from sharpshift.resume import resume_config

        cfg = resume_config(resume, config, overrides, out_dir)
    else:
        cfg = load_config(config, overrides + ([f"out_dir={out_dir}"] if out_dir else []))
    from sharpshift.train import pretrain as run  # heavy (Lightning): only once the config is valid
    run_dir = run(cfg, data_dir, resume=resume)
    result = run_dir / "eval.json"
    if result.is_file():
        ev = json.loads(result.read_text())
        typer.echo(f"linear_top1={ev['linear_top1']:.4f} knn_top1={ev['knn_top1']:.4f}")
    typer.echo(f"run folder: {run_dir}")


@app.command(context_settings={"allow_interspersed_args": True})
def evaluate(
    run_dir: Path = typer.Argument(..., help="A run folder made by `sharpshift pretrain`."),
    overrides: Optional[list[str]] = typer.Argument(None, help="With --robustness: robustness.* key=value overrides."),
    data_dir: Optional[str] = DataDir,
    as_json: bool = typer.Option(False, "--json", help="Print the full result as JSON."),
    robustness: bool = typer.Option(False, "--robustness", help="Also corruptions and FGSM/PGD attacks; writes "
                                    "RUN_DIR/robustness.json (see `sharpshift configs --keys`: robustness.*)."),
    reference: Optional[Path] = typer.Option(None, "--reference", help="With --robustness: a run folder (or its "
                                             "robustness.json) to compute the mCE against."),
) -> None:
    """Linear probe and kNN top-1 of a run's frozen backbone; writes RUN_DIR/eval.json."""
    from sharpshift.evaluation.run import evaluate_run

    if (overrides or reference) and not robustness:
        raise UserError("key=value overrides and --reference only apply with --robustness; add --robustness")
    if robustness:
        from sharpshift.evaluation.robustness import robustness_request

        robustness_request(run_dir, overrides or [], reference)  # fail fast, before the standard evaluation
    result = evaluate_run(run_dir, data_dir)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
    else:
        typer.echo(json.dumps({"linear_top1": result["linear_top1"], "knn_top1": result["knn_top1"]}))
    if robustness:
        from sharpshift.evaluation.robustness import robustness_run, summary

        rob = robustness_run(run_dir, overrides or [], reference, data_dir, log=lambda s: typer.echo(s, err=True))
        typer.echo(json.dumps(rob, indent=2) if as_json else json.dumps(summary(rob)))


@app.command()
def report(
    run_dirs: list[Path] = typer.Argument(..., help="One run folder, or several to compare side by side."),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for a comparison of several runs "
                                       "(default ./comparison-<time>)."),
    data_dir: Optional[str] = DataDir,
) -> None:
    """Write report.md and a self-contained report.html (one run: in its folder; several: a comparison)."""
    from sharpshift.report import write_comparison, write_report

    if len(run_dirs) == 1:
        path = write_report(run_dirs[0], data_dir)
    else:
        from datetime import datetime

        path = write_comparison(run_dirs, out or Path(f"comparison-{datetime.now():%Y%m%d-%H%M%S}"), data_dir)
    typer.echo(f"report: {path}")


@app.command()
def configs(keys: bool = typer.Option(False, "--keys", help="List every valid config key instead.")) -> None:
    """List the shipped configs (or the valid keys)."""
    from sharpshift.config import CONFIG_DIRS, Config, _all_keys, list_configs

    if keys:
        typer.echo("\n".join(_all_keys(Config)))
        return
    for name in list_configs():
        path = next(d / f"{name}.yaml" for d in CONFIG_DIRS if (d / f"{name}.yaml").is_file())
        first = path.read_text().splitlines()[0].lstrip("# ") if path.read_text() else ""
        typer.echo(f"{name:<20} {first}")


@app.command()
def download(
    dataset: str = typer.Argument(..., help="mnist, fashion-mnist, cifar10, cifar100 or stl10"),
    data_dir: Optional[str] = DataDir,
) -> None:
    """Download a standard dataset with checksum verification (needs network)."""
    from sharpshift.data.download import download_dataset

    root = Path(data_dir or os.environ.get("SHARPSHIFT_DATA") or "data")
    typer.echo(f"downloaded to {download_dataset(dataset, root)}")


@app.command()
def prepare(
    dataset: str = typer.Argument(..., help="A dataset name (sharpshift datasets): folder, fashion-mnist, cifar10, ..."),
    out: Path = typer.Option(..., "--out", help="New folder for the shards (refused if it exists and is not one)."),
    data_dir: Optional[str] = DataDir,
    on_bad_image: str = typer.Option("skip", help="Image folders: skip (and count) or fail on unreadable files."),
    image_size: int = typer.Option(0, help="Image folders: resize to this square size (0: the most common size)."),
    verify: bool = typer.Option(False, "--verify", help="Check an existing folder's shards against its manifest."),
) -> None:
    """Write a dataset as WebDataset shards with an index and a checksum manifest, for data.storage=stream."""
    from sharpshift.data.stream import is_prepared, prepare as write_shards, verify as check_shards

    if verify:
        if not is_prepared(out):
            raise UserError(f"{out} is not a folder made by `sharpshift prepare`; pass one to --verify")
        bad = check_shards(out)
        if bad:
            raise UserError(f"{len(bad)} shard(s) differ from the manifest, first {out / bad[0]}; prepare {out} again")
        typer.echo(f"{out}: every shard matches its SHA-256")
        return
    if on_bad_image not in ("skip", "fail"):
        raise UserError(f"--on-bad-image must be skip or fail, got {on_bad_image!r}")
    folder = write_shards(dataset, out, data_dir, on_bad_image, image_size, log=typer.echo)
    typer.echo(f"prepared {folder}; train with data.storage=stream data.stream_dir={folder}")


bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks: speed and the accuracy grid.")
app.add_typer(bench_app, name="bench")


@bench_app.command("speed")
def bench_speed(
    out: Path = typer.Option(Path("docs/benchmarks.json"), help="JSON output."),
    doc: Path = typer.Option(Path("docs/benchmarks.md"), help="Markdown file whose speed section is rewritten."),
    cases: str = typer.Option("all", help="Comma-separated cases: bare, split, the base methods, the add-ons "
                              "(sam, asam, saf, mesa, fourier, rsa, amcl, dsa); simclr is always included."),
    steps: int = typer.Option(6, help="Timed steps per case and round (after the warm-up)."),
    rounds: int = typer.Option(3, help="Rounds; each runs every case once, interleaved."),
    batch_size: int = typer.Option(256, help="Images per step (each gives two views)."),
) -> None:
    """Step time of every base method and add-on, against a bare PyTorch loop and the machine's peak."""
    from sharpshift.bench.grid_tables import replace_section
    from sharpshift.bench.speed import check_settings, parse_cases, run_speed, write_json
    from sharpshift.bench.speed_markdown import render_markdown

    check_settings(steps, rounds, batch_size)
    names = parse_cases(cases)
    command = "sharpshift bench speed " + " ".join(sys.argv[3:])
    result = run_speed(names, batch_size, steps, rounds, command.strip(), log=typer.echo)
    write_json(result, out)
    replace_section(doc, "speed", render_markdown(result))
    typer.echo(json.dumps({n: c["images_per_s"] for n, c in result["cases"].items()}))


@bench_app.command("accuracy")
def bench_accuracy(
    cells: str = typer.Option(",".join(METHOD_DEFAULTS), help="Comma-separated cells (shipped config names)."),
    seeds: str = typer.Option("0,1,2", help="Comma-separated seeds."),
    budget: str = typer.Option("default", help="default (5 epochs, all 54k images), reduced (10k images, 3 epochs) "
                               "or long (all images, width 8, 8 epochs); the protocol: sharpshift.bench.protocol."),
    root: Path = typer.Option(Path("runs/grid"), help="Where the grid's run folders live (resumable)."),
    doc: Path = typer.Option(Path("docs/results.md"), help="Markdown file whose grid section is rewritten."),
    record: Path = typer.Option(Path("docs/grid"), help="Committed per-cell result rows; a recorded cell is not rerun."),
    diagnose: str = typer.Option("", help="Comma-separated diagnostics to add to each cell's row (and the only "
                                 "ones tabulated): sharpness, discriminability, separation, robustness; 'none' "
                                 "tabulates none (default: all those recorded)."),
    section: str = typer.Option("", help="Name of the results section to rewrite (default: grid-BUDGET)."),
    collect_only: bool = typer.Option(False, "--collect-only", help="Train nothing: tabulate the recorded rows "
                                      "and list the (cell, seed) pairs that have none."),
    equal_compute: bool = typer.Option(True, help="Also run each add-on's base at the add-on's measured step cost "
                                       "(BASE@1.3x) and compare at equal cost."),
    data_dir: Optional[str] = DataDir,
) -> None:
    """The results grid: cells x seeds at a fixed budget, with the floors and paired comparisons."""
    from sharpshift.bench.grid import run_grid

    run_grid(cells, seeds, budget, root, doc, record, diagnose, section, collect_only, data_dir,
             command="sharpshift bench accuracy " + " ".join(sys.argv[3:]), equal_compute=equal_compute,
             log=typer.echo)


@bench_app.command("study")
def bench_study(
    claims: str = typer.Option("all", help="Comma-separated claims (sharpshift.bench.study.CLAIMS: ssa, ssa-small, shift, rsa, saf, amcl-METHOD, dsa-METHOD) or all; each "
                               "runs its arms (grid cells, resumable) and rewrites its results section."),
    seeds: str = typer.Option("0,1,2", help="Comma-separated seeds."),
    root: Path = typer.Option(Path("runs/grid"), help="Where the grid's run folders live (resumable)."),
    doc: Path = typer.Option(Path("docs/results.md"), help="Markdown file whose study sections are rewritten."),
    record: Path = typer.Option(Path("docs/grid"), help="Committed per-cell result rows; a recorded cell is not rerun."),
    collect_only: bool = typer.Option(False, "--collect-only", help="Train nothing: tabulate the recorded rows."),
    data_dir: Optional[str] = DataDir,
) -> None:
    """The papers' claims tested: arms, paired comparisons, mechanism checks and a verdict per claim."""
    from sharpshift.bench.study import run_study

    command = "sharpshift bench study" + (" --collect-only" if collect_only else "") + \
        (f" --seeds {seeds}" if seeds != "0,1,2" else "")
    run_study(claims, seeds, root, doc, record, collect_only, data_dir, command, log=typer.echo)


def main() -> None:
    reexec_tuned()
    try:
        app(prog_name="sharpshift")  # not `python -m sharpshift.cli` (the re-exec); usage errors exit with 2
    except UserError as e:
        typer.echo(f"error: {e}", err=True)
        raise SystemExit(e.exit_code) from None


if __name__ == "__main__":
    main()
