"""`workbench` command line: run pipelines, manage the model zoo, start the app, quick analyses.

Every command is a thin wrapper over library functions, so what the CLI does a notebook can
do too. Heavy imports happen inside commands, so `workbench --help` is instant.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

app = typer.Typer(help="Mechanistic-interpretability and model-editing workbench: see what fine-tuning "
                       "changed inside a model, and change behaviour directly in the weights.",
                  no_args_is_help=True, add_completion=False)
zoo_app = typer.Typer(help="The model organisms: small trained base/tuned pairs shipped with the workbench.",
                      no_args_is_help=True)
app.add_typer(zoo_app, name="zoo")


@app.command()
def run(file: Path = typer.Argument(..., help="Pipeline TOML file (see examples/demo.toml)."),
        out: Path = typer.Option(None, help="Output directory (default: runs/<file stem>)."),
        reduced: bool = typer.Option(False, help="Smaller datasets and fewer seeds (what CI runs)."),
        fresh: bool = typer.Option(False, help="Ignore finished steps from an earlier run and recompute.")):
    """Run an edit-and-evaluate pipeline: fit probes/knobs/experts, apply edits, evaluate before and after.

    Writes results.json, report.html and every edit as a reusable file into OUT; re-running
    the same file reuses finished steps, so an interrupted run resumes where it stopped.
    """
    from apps.pipeline import PipelineError, run_pipeline

    try:
        res = run_pipeline(file, out=out, reduced=reduced, fresh=fresh)
    except PipelineError as e:
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from None
    typer.echo(res.summary_table())
    typer.echo(f"\nreport: {res.out / 'report.html'}")


@zoo_app.command("list")
def zoo_list():
    """List the shipped organisms with their headline metrics."""
    from workbench import zoo

    man = zoo.manifest()
    for name in zoo.names():
        m = man.get("organisms", man).get(name, {})
        metrics = m.get("metrics", {})
        shown = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in list(metrics.items())[:6])
        typer.echo(f"{name:14s} {shown}")


@zoo_app.command("info")
def zoo_info(name: str = typer.Argument(..., help="Organism name, e.g. base, entity-tuned, moe.")):
    """Print one organism's manifest entry: parameters, recipe, seed, measured metrics."""
    from workbench import zoo

    typer.echo(json.dumps(zoo.info(name), indent=1))


@zoo_app.command("build")
def zoo_build(only: str = typer.Option(None, help="Rebuild just this organism (and what it needs)."),
              out: Path = typer.Option(None, help="Write checkpoints here instead of the package's zoo."),
              reduced: bool = typer.Option(False, help="A quick, reduced rebuild (for checks)."),
              start_stage: int = typer.Option(0, help="Resume --only's checkpoint after this many stages.")):
    """Retrain the organisms from their seeds (all of them: under an hour on 2 CPU cores)."""
    from workbench import zoo

    zoo.build(only=only, out=out, reduced=reduced, start_stage=start_stage)


@app.command("app")
def app_cmd(host: str = typer.Option("127.0.0.1", help="Interface to bind (localhost only by default)."),
            port: int = typer.Option(8501, help="Port."),
            headless: bool = typer.Option(True, help="Do not open a browser window.")):
    """Start the Streamlit explorer: how fine-tuning changed the internals of a model pair."""
    from apps.app_launcher import serve

    serve(host=host, port=port, headless=headless)


@app.command()
def probe(model: str = typer.Argument(..., help="Zoo name, local HF checkpoint or hub id."),
          data: Path = typer.Option(..., help="JSONL file of {text, label} (label 0/1)."),
          component: str = typer.Option("resid_post", help="Site component to probe at every layer."),
          pooling: str = typer.Option("mean", help="mean (over non-pad tokens) or last."),
          cv: int = typer.Option(5, help="Cross-validation folds."),
          engine: str = typer.Option("tl", help="tl or nnsight.")):
    """Train a behaviour probe at every layer and print held-out accuracy per layer."""
    from apps.pipeline import load_jsonl, load_subject_spec
    from probes.linear import probe_sweep

    subject = load_subject_spec(model, engine)
    texts, labels = load_jsonl(data)
    res = probe_sweep(subject, texts, labels, subject.sites(component), cv=cv, pooling=pooling)
    typer.echo(res.to_frame().to_string(index=False))


@app.command()
def diff(base: str = typer.Argument(..., help="Base model: zoo name, local path or hub id."),
         tuned: str = typer.Argument(..., help="Tuned model: zoo name, local path or hub id."),
         html: Path = typer.Option(Path("diff.html"), help="Where to write the HTML report."),
         engine: str = typer.Option("tl", help="tl or nnsight.")):
    """Weight diff of a model pair: relative delta norm, effective rank, concentration per module."""
    from apps.pipeline import load_subject_spec
    from workbench.diff import weight_diff
    from workbench.models import ModelPair

    pair = ModelPair(load_subject_spec(base, engine), load_subject_spec(tuned, engine))
    res = weight_diff(pair)
    frame = res.to_frame()
    typer.echo(frame.head(40).to_string(index=False))
    fig = res.plot()
    html.write_text(fig.to_html(include_plotlyjs=True, full_html=True))
    typer.echo(f"\nwrote {html}")


if __name__ == "__main__":
    app()
