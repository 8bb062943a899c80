"""What a search run did: :class:`SearchResult` (``summary.json``) and the table it prints."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from autoprune.study.records import StudyRecord, TrialRecord, si_count
from autoprune.study.storage import redact


@dataclass
class SearchResult:
    """What a search run did: the study's record and what this worker added."""

    record: StudyRecord
    study_dir: Path
    best_config: Path | None
    ran: list[int] = field(default_factory=list)  # trial numbers this worker ran
    interrupted: bool = False
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def front(self) -> list[TrialRecord]:
        """The Pareto front of the completed trials (metric against measured latency), fastest first."""
        return self.record.front

    @property
    def best(self) -> TrialRecord | None:
        """The fastest trial within the budget (see :meth:`StudyRecord.best_feasible`), or None."""
        return self.record.best_feasible()

    def to_dict(self) -> dict[str, Any]:
        rec = self.record
        best = rec.best_feasible()
        uniform = rec.best_uniform()
        most = rec.most_accurate()
        return {
            "study": rec.meta.name,
            "storage": redact(rec.storage),
            "study_dir": str(self.study_dir),
            "meta": rec.meta.to_dict(),
            "allowed_drop": rec.meta.allowed_drop(),
            "trials": {
                "total": len([t for t in rec.trials if t.state != "WAITING"]),
                "complete": len(rec.completed),
                "pruned": len([t for t in rec.trials if t.state == "PRUNED"]),
                "failed": len([t for t in rec.trials if t.state == "FAIL"]),
                "feasible": len(rec.feasible),
                "ran_here": self.ran,
            },
            "front": [t.to_dict() | {"summary": t.sparsity_summary()} for t in rec.front],
            "best_feasible": None if best is None else best.to_dict() | {"summary": best.sparsity_summary()},
            "best_uniform": None if uniform is None else uniform.to_dict() | {"summary": uniform.sparsity_summary()},
            "most_accurate": None if most is None else most.number,
            "epochs": {"spent": rec.epochs_spent(), "budget": _fidelity(rec).epoch_budget,
                       "per_full_trial": _full_trial_epochs(rec)},
            "rung_correlation": rec.rung_correlations(),
            "best_config": None if self.best_config is None else str(self.best_config),
            "interrupted": self.interrupted,
            "seconds": self.seconds,
            "notes": self.notes,
        }


def speedup_text(t: TrialRecord) -> str:
    """``4.71x (re-measured: 4.52-4.90x over 30 rounds; 5.02x in the search)``, or the search's figure."""
    if t.remeasured:
        r = t.remeasured
        return (f"{r['speedup']:.2f}x (re-measured side by side: {r['speedup_p10']:.2f}-{r['speedup_p90']:.2f}x over "
                f"{int(r['rounds'])} rounds; {t.speedup:.2f}x in the search)")
    return f"{t.speedup:.2f}x"


def _fidelity(rec: StudyRecord) -> Any:  # noqa: ANN401 - rungs.Fidelity
    from autoprune.study.rungs import Fidelity

    return Fidelity.from_dict(rec.meta.fidelity)


def _full_trial_epochs(rec: StudyRecord) -> float | None:
    """What one fully trained trial spends: the most any trial of the study spent (its schedule)."""
    spent = [t.epochs for t in rec.completed if t.epochs and t.repeat_of is None]
    return max(spent) if spent else None


def effort_lines(rec: StudyRecord) -> list[str]:
    """What the search trained, beside what the uniform sweep it is compared with trains, and how
    well the rungs' cheap scores ranked the configurations."""
    from autoprune.study.settings import AUTO_BUDGET_TRIALS

    if not any(t.epochs is not None for t in rec.trials):
        return []  # a study made before epochs were counted
    spent, full = rec.epochs_spent(), _full_trial_epochs(rec)
    trained = sum(1 for t in rec.completed if t.repeat_of is None and not t.is_dense)
    screened = sum(1 for t in rec.trials if t.rungs and t.repeat_of is None)
    line = f"epochs: the search trained {spent:.3g} in all, every rung counted ({trained} configurations fully"
    line += f", {screened} scored at the screen)" if screened else ")"
    if full:
        line += (f"; a uniform sweep of {AUTO_BUDGET_TRIALS} rates at {full:.3g} epochs each trains "
                 f"{AUTO_BUDGET_TRIALS * full:.3g}")
    budget = _fidelity(rec).epoch_budget
    if budget is not None:
        line += f"; the study's epoch budget is {budget:.3g}"
    out = [line]
    corr = rec.rung_correlations()
    if corr.get("screen") is not None or corr.get("short") is not None:
        parts = [f"{k} {corr[k]:.2f}" for k in ("screen", "short") if corr.get(k) is not None]
        out.append(f"rank correlation (Spearman) of each rung's score with the trained score, over {corr['pairs']} "
                   f"fully trained configurations: {', '.join(parts)}")
    return out


def print_summary(result: SearchResult) -> None:
    """Print the study's front and where the best config went (rich, to stdout)."""
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
    limit = meta.dense_accuracy - meta.allowed_drop() if meta.direction == "maximize" else \
        meta.dense_accuracy + meta.allowed_drop()
    console.print(f"  dense: {meta.metric} {meta.fmt(meta.dense_accuracy)} (validation), {meta.dense_latency_ms:.3g} ms; "
                  f"budget: {meta.metric} {'>=' if meta.direction == 'maximize' else '<='} {meta.fmt(limit)}"
                  + (f"; {meta.validation_note()}" if meta.validation_note() else ""))
    best = rec.best_feasible()
    table = Table(title=f"Pareto front (validation {meta.metric} vs latency measured during the search; the "
                        f"fastest within the budget timed again side by side at the end)")
    for col in ("trial", meta.metric, "drop", "latency ms", "speedup", "re-measured", "MACs", "params", "sparsity",
                "in budget"):
        table.add_column(col, justify="left" if col == "sparsity" else "right", overflow="fold")
    rows = list(rec.front)
    if best is not None and best not in rows:  # chosen by the re-measurement, off the search-time front
        rows.append(best)
    for t in rows:
        again = f"{t.remeasured['speedup']:.2f}x" if t.remeasured else "–"
        table.add_row(f"{t.number}{' *' if t is best else ''}", meta.fmt(t.score),
                      meta.fmt_drop(t.score_drop, sign=True).split()[0], f"{t.latency_ms:.3g}", f"{t.speedup:.2f}x",
                      again, si_count(t.macs), si_count(t.params_count), t.sparsity_summary(),
                      "yes" if t.feasible else "no")
    console.print(table)
    if best is not None and best.remeasured:
        console.print("  * the chosen trial: the fastest within the budget by the re-measurement"
                      + (" (not on the search-time front above it)" if not best.pareto else ""))
    if best is None:
        most = rec.most_accurate()
        hint = f"; the most accurate trial is {most.number}" if most is not None else ""
        console.print(f"[yellow]no trial within the budget yet{hint}[/yellow]")
    elif best.is_dense:
        console.print("[yellow]no pruned configuration within the budget was faster than dense yet[/yellow]")
    else:
        console.print(f"[green]best within budget: trial {best.number}, {speedup_text(best)} faster, "
                      f"{meta.metric} {meta.fmt(best.score)} (drop {meta.fmt_drop(best.score_drop)})[/green]")
    uniform = rec.best_uniform()
    if uniform is not None and best is not None and not best.is_dense:
        ratio = best.final_speedup / uniform.final_speedup
        console.print(f"  best uniform: trial {uniform.number} ({uniform.sparsity_summary()}), {speedup_text(uniform)}, "
                      f"{meta.fmt(uniform.score)}; the search's best is {ratio:.2f}x the best uniform")
    for line in effort_lines(rec):
        console.print(f"  {line}")
    if result.best_config is not None:
        console.print(f"  best config: {result.best_config}  (autoprune prune --config {result.best_config})")
    console.print(f"  summary: {result.study_dir / 'summary.json'}")
    if result.interrupted:
        console.print("[yellow]interrupted: the study keeps every finished trial; run the same command to go on[/yellow]")
