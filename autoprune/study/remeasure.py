"""The end of a search: its fastest configurations within the budget timed again, side by side.

The best of many noisy timings is biased upward (the winner's curse): two uniform rates 10%
apart measured 1.48x and 1.31x in one run. So when a study has all its trials, the fastest
feasible configurations and the fastest uniform one are timed again beside dense, in more
rounds, and the study's result is the best trial by this second, joint timing
(:meth:`~autoprune.study.records.StudyRecord.best_feasible`).
"""

from __future__ import annotations

import optuna

from autoprune.config import LayerTarget
from autoprune.progress import Reporter
from autoprune.study.phases import Proposal
from autoprune.study.probe import ConfigProbe
from autoprune.study.records import REMEASURED_ATTR, StudyRecord

REMEASURE_TOP = 5  # the fastest configurations within the budget timed again at the end
REMEASURE_ROUNDS = 30


def remeasure(study: optuna.Study, record: StudyRecord, probe: ConfigProbe, reporter: Reporter) -> list[int]:
    """Time the fastest configurations within the budget again, side by side with dense and the
    fastest uniform one, in more rounds; store the figures on the study.

    The figures are a study attribute (``autoprune.remeasured``: trial number -> ``{speedup,
    speedup_p10, speedup_p90, rounds}``), replaced by each re-measurement: a finished trial
    cannot take new attributes. Returns the trial numbers re-measured.
    """
    feasible = sorted((t for t in record.feasible if t.repeat_of is None and not t.is_dense and t.targets),
                      key=lambda t: t.latency_ms)
    picks = feasible[:REMEASURE_TOP]
    uniform = [t for t in feasible if t.proposal == Proposal.UNIFORM]
    if uniform and uniform[0] not in picks:
        picks.append(uniform[0])
    if not picks:
        return []
    reporter.log(f"re-measuring trials {[t.number for t in picks]} side by side with dense "
                 f"({REMEASURE_ROUNDS} rounds)")
    configs = [{}] + [{k: LayerTarget(v["type"], v.get("rate")) for k, v in t.targets.items()} for t in picks]
    stats = probe.compare(configs, rounds=REMEASURE_ROUNDS)
    figures = {str(t.number): {"speedup": 1.0 / st.median, "speedup_p10": 1.0 / st.p90,
                               "speedup_p90": 1.0 / st.p10, "rounds": st.rounds}
               for t, st in zip(picks, stats[1:])}
    study.set_user_attr(REMEASURED_ATTR, figures)
    return [t.number for t in picks]
