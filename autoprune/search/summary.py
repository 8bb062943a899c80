"""The end-of-search summary: the Pareto front as a table, the best feasible config."""

from __future__ import annotations

from autoprune.search.records import si_count
from autoprune.search.study import SearchResult


def print_summary(result: SearchResult) -> None:
    """Print the study's front and where the best config went (rich, to stdout)."""
    from rich.console import Console
    from rich.table import Table

    import sys

    console = Console(width=None if sys.stdout.isatty() else 160)
    rec = result.record
    meta = rec.meta
    states = {s: sum(1 for t in rec.trials if t.state == s) for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")}
    console.print(
        f"[bold]study {meta.name}[/bold]: {meta.model} on {meta.dataset}, {meta.device_description}, "
        f"batch {meta.latency_batch} {meta.dtype}; {states['COMPLETE']} complete, {states['PRUNED']} stopped early, "
        f"{states['FAIL']} failed" + (f", {states['RUNNING']} running elsewhere" if states["RUNNING"] else "")
        + f" ({result.seconds:.0f} s here)"
    )
    console.print(f"  dense: {100 * meta.dense_accuracy:.1f}% validation, {meta.dense_latency_ms:.3g} ms; "
                  f"budget: accuracy >= {100 * (meta.dense_accuracy - meta.allowed_drop()):.1f}%")
    table = Table(title="Pareto front (validation accuracy vs measured latency)")
    for col in ("trial", "accuracy", "drop", "latency ms", "speedup", "MACs", "params", "sparsity", "in budget"):
        table.add_column(col, justify="left" if col == "sparsity" else "right", overflow="fold")
    for t in rec.front:
        table.add_row(str(t.number), f"{100 * t.accuracy:.1f}%", f"{100 * t.accuracy_drop:+.1f}",
                      f"{t.latency_ms:.3g}", f"{t.speedup:.2f}x", si_count(t.macs), si_count(t.params_count),
                      t.sparsity_summary(), "yes" if t.feasible else "no")
    console.print(table)
    best = rec.best_feasible()
    if best is None:
        most = rec.most_accurate()
        hint = f"; the most accurate trial is {most.number}" if most is not None else ""
        console.print(f"[yellow]no trial within the budget yet{hint}[/yellow]")
    elif best.is_dense:
        console.print("[yellow]no pruned configuration within the budget was faster than dense yet[/yellow]")
    else:
        console.print(f"[green]best within budget: trial {best.number}, {best.speedup:.2f}x faster "
                      f"({best.latency_ms:.3g} ms vs {meta.dense_latency_ms:.3g} ms), {100 * best.accuracy:.1f}% "
                      f"({100 * -best.accuracy_drop:+.1f} points)[/green]")
    if result.best_config is not None:
        console.print(f"  best config: {result.best_config}  (autoprune prune --config {result.best_config})")
    console.print(f"  summary: {result.study_dir / 'summary.json'}")
    if result.interrupted:
        console.print("[yellow]interrupted: the study keeps every finished trial; run the same command to go on[/yellow]")
