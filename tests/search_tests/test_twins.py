"""Two workers proposing one configuration at once: the higher-numbered trial reuses the lower's result."""

from __future__ import annotations

import threading
import time

import optuna

from autoprune.study.objective import wait_for_twin
from autoprune.study.records import SIGNATURE_ATTR, TRIAL_ATTR

optuna.logging.set_verbosity(optuna.logging.WARNING)


def test_a_lower_trial_still_in_the_sampler_is_waited_for_and_reused_when_it_is_the_twin() -> None:
    study = optuna.create_study()
    lower = study.ask()  # another worker's trial: running, its configuration not named yet
    me = study.ask()
    assert (lower.number, me.number) == (0, 1)
    assert SIGNATURE_ATTR not in study.get_trials()[0].user_attrs  # the race: it names it only later

    def other_worker() -> None:
        time.sleep(0.3)
        lower.set_user_attr(SIGNATURE_ATTR, "sig-a")  # the same configuration as ours
        time.sleep(0.3)
        lower.set_user_attr(TRIAL_ATTR, {"accuracy": 0.9})
        study.tell(lower, 0.9)

    worker = threading.Thread(target=other_worker)
    worker.start()
    prior = wait_for_twin(study, "sig-a", me.number, poll_s=0.02)
    worker.join()
    assert prior is not None and prior.number == 0


def test_a_lower_trial_of_another_configuration_or_one_that_never_names_it_is_not_waited_on() -> None:
    study = optuna.create_study()
    other = study.ask()
    other.set_user_attr(SIGNATURE_ATTR, "sig-b")
    stale = study.ask()  # never names its configuration (its worker died in the sampler)
    me = study.ask()
    t0 = time.monotonic()
    assert wait_for_twin(study, "sig-a", me.number, poll_s=0.02, unsigned_s=0.3) is None
    assert 0.3 <= time.monotonic() - t0 < 5  # it waited for the unnamed one, then only so long
    study.tell(stale, state=optuna.trial.TrialState.FAIL)
    t0 = time.monotonic()
    assert wait_for_twin(study, "sig-a", me.number, poll_s=0.02, unsigned_s=30) is None
    assert time.monotonic() - t0 < 5  # nothing lower is unnamed or a twin: no wait
