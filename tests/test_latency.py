"""Latency is timed alone and only reported when its repeats support it; the measurement cache
follows the code that builds and counts models. Timing rules are proven with a fake clock."""

import shutil
import threading
import time
from pathlib import Path

import pytest

from scaling_lab import latency as latency_module
from scaling_lab import measure as measure_module
from scaling_lab import measure_cache
from scaling_lab.latency import LATENCY_ATTEMPTS, LATENCY_RUNS, LATENCY_WARMUP, Latency, Timing, measure_latency, time_repeated
from scaling_lab.measure import measure
from scaling_lab.measure_cache import counted_sources, source_fingerprint
from scaling_lab.study import load_study, run_study
from tests.helpers import TINY, fake_trial, write_study


class FakeDevice:
    """A forward pass that takes the next of ``durations_ms`` on a clock only it advances."""

    def __init__(self, durations_ms):
        self.durations_ms = list(durations_ms)
        self.now = 0.0
        self.calls = 0

    def run_once(self):
        self.now += self.durations_ms[self.calls] / 1000
        self.calls += 1

    def clock(self):
        return self.now


def attempt(timed_ms, warmup_ms=1000.0):
    """One attempt's forwards: the warm-up (slow, as first calls are) then the timed runs."""
    return [warmup_ms] * LATENCY_WARMUP + list(timed_ms)


STEADY = [10.0, 10.2, 9.9, 10.1, 10.0, 10.3, 9.8, 10.0, 10.1, 30.0]  # one outlier: the median stands
NOISY = [5.0, 700.0, 6.0, 650.0, 5.5, 720.0, 6.5, 700.0, 5.2, 690.0]  # a neighbour's training in between


def test_a_timing_is_the_median_after_warm_up_with_its_spread_kept():
    device = FakeDevice(attempt(STEADY))
    timing = time_repeated(device.run_once, clock=device.clock)
    assert device.calls == LATENCY_WARMUP + LATENCY_RUNS  # stable at once: not timed again
    # Hand-computed: sorted 9.8 9.9 10.0 10.0 10.0 10.1 10.1 10.2 10.3 30.0; quartiles at 2.25 and 6.75.
    assert timing.median_ms == pytest.approx(10.05)
    assert timing.q1_ms == pytest.approx(10.0) and timing.q3_ms == pytest.approx(10.175)
    assert (timing.min_ms, timing.max_ms, timing.runs, timing.attempts) == (pytest.approx(9.8), pytest.approx(30.0), 10, 1)
    assert timing.stable and timing.ms == pytest.approx(10.05)


def test_a_median_its_repeats_do_not_support_is_timed_again():
    device = FakeDevice(attempt(NOISY) + attempt(STEADY))
    timing = time_repeated(device.run_once, clock=device.clock)
    assert device.calls == 2 * (LATENCY_WARMUP + LATENCY_RUNS)
    assert timing.stable and timing.attempts == 2 and timing.ms == pytest.approx(10.05)


def test_still_unsupported_after_every_attempt_is_unstable_not_a_number():
    device = FakeDevice(attempt(NOISY) * LATENCY_ATTEMPTS)
    timing = time_repeated(device.run_once, clock=device.clock)
    assert device.calls == LATENCY_ATTEMPTS * (LATENCY_WARMUP + LATENCY_RUNS)
    assert not timing.stable and timing.ms is None and timing.attempts == LATENCY_ATTEMPTS
    assert timing.min_ms == pytest.approx(5.0) and timing.max_ms == pytest.approx(720.0)  # the spread is kept
    latency = Latency("cpu:test", "float32", 1, timing, timing)
    assert latency.batch1_ms is None and latency.images_per_second is None and not latency.stable
    assert "UNSTABLE" in timing.describe()


def test_the_spread_rule_is_the_interquartile_range_against_a_fifth_of_the_median():
    # Sorted, the quartiles are the 3rd/4th and 7th/8th of ten runs; the median is 100 in both.
    inside = FakeDevice(attempt([85, 90.5, 90.5, 90.5, 100, 100, 109.5, 109.5, 109.5, 115]))  # IQR 19 % of the median
    outside = FakeDevice(attempt([85, 89.5, 89.5, 89.5, 100, 100, 110.5, 110.5, 110.5, 115]))  # IQR 21 %
    assert time_repeated(inside.run_once, clock=inside.clock, attempts=1).stable
    assert not time_repeated(outside.run_once, clock=outside.clock, attempts=1).stable


def _fake_latency(stable=True, median=4.0):
    timing = Timing(median, median * 0.9, median * 1.1, median * 0.8, median * 1.5, LATENCY_RUNS, 1 if stable else 3, stable)
    return Latency("cpu:test", "float32", 1, timing, timing)


def test_measure_latency_caches_stable_timings_per_device_batch_and_dtype(monkeypatch):
    calls = []

    def fake_time_latency(spec, batch_size, device, dtype):
        calls.append((batch_size, dtype))
        return _fake_latency()

    monkeypatch.setattr(latency_module, "time_latency", fake_time_latency)
    spec = TINY.replace(channels=40)
    first = measure_latency(spec, device="cpu")
    assert measure_latency(spec, device="cpu") == first and calls == [(1, "float32")]
    measure_latency(spec, batch_size=4, device="cpu")
    measure_latency(spec, device="cpu", dtype="bfloat16")
    assert calls == [(1, "float32"), (4, "float32"), (1, "bfloat16")]
    monkeypatch.setattr(latency_module, "_device_name", lambda device: "another-device")
    measure_latency(spec, device="cpu")
    assert len(calls) == 4


def test_an_unstable_latency_is_not_cached_so_the_next_call_times_again(monkeypatch):
    results = iter([_fake_latency(stable=False), _fake_latency(stable=True, median=6.0)])
    monkeypatch.setattr(latency_module, "time_latency", lambda *args: next(results))
    spec = TINY.replace(channels=48)
    assert measure_latency(spec, device="cpu").batch1_ms is None
    assert measure_latency(spec, device="cpu").batch1_ms == 6.0
    assert measure_latency(spec, device="cpu").batch1_ms == 6.0  # now cached


def test_two_timings_on_one_device_never_overlap(monkeypatch):
    active, overlaps = [], []

    def fake_time_latency(spec, batch_size, device, dtype):
        active.append(spec)
        overlaps.append(len(active))
        time.sleep(0.05)
        active.remove(spec)
        return _fake_latency()

    monkeypatch.setattr(latency_module, "time_latency", fake_time_latency)
    threads = [threading.Thread(target=measure_latency, args=(TINY.replace(channels=c),), kwargs={"device": "cpu"}) for c in (56, 64, 72)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert overlaps == [1, 1, 1]


def test_study_trials_never_time_and_the_driver_times_each_spec_alone(tmp_path, monkeypatch):
    timed, tasks = [], []
    monkeypatch.setattr(latency_module, "measure_latency", lambda spec, *args, **kwargs: timed.append(spec.spec_hash) or _fake_latency(median=7.0))

    def trial(spec, task, budget, **kwargs):
        tasks.append(task)
        assert timed and timed[-1] == spec.spec_hash  # timed before training, by the runner
        return fake_trial(spec, task, budget, **kwargs)

    path = write_study(
        tmp_path, search_space={"parameters": {"channels": {"type": "grid", "values": [16, 24]}}},
        objectives=[{"metric": "AP", "direction": "maximize"}, {"metric": "latency_ms", "direction": "minimize"}],
    )
    frame = run_study(load_study(path), trial_function=trial, out=None)
    assert (frame["state"] == "complete").all() and (frame["latency_ms"] == 7.0).all()
    assert tasks and not any(task.latency for task in tasks)


def test_an_unstable_latency_objective_fails_the_trial_before_it_trains(tmp_path, monkeypatch):
    monkeypatch.setattr(latency_module, "measure_latency", lambda spec, *args, **kwargs: _fake_latency(stable=False))
    trained = []
    path = write_study(
        tmp_path, search_space={"parameters": {"channels": {"type": "grid", "values": [16]}}},
        objectives=[{"metric": "AP", "direction": "maximize"}, {"metric": "latency_ms", "direction": "minimize"}],
    )
    frame = run_study(load_study(path), trial_function=lambda *a, **k: trained.append(1) or fake_trial(*a, **k), out=None)
    assert not trained and (frame["state"] == "failed").all()
    assert frame["error"].str.contains("latency unstable").all() and frame["latency_ms"].isna().all()


# --- the measurement cache follows the code ------------------------------------------------


def test_the_cache_key_changes_with_the_counting_source_and_a_stale_entry_is_not_served(monkeypatch):
    spec = TINY.replace(channels=32)
    cached = measure(spec)
    assert measure(spec) == cached
    monkeypatch.setattr(measure_cache, "source_fingerprint", lambda: "edited0000000000")
    recounted = dict(measure_module.count(spec), params=cached.params + 1)  # what the edited code counts
    monkeypatch.setattr(measure_module, "count", lambda spec: recounted)
    assert measure(spec).params == cached.params + 1


def test_the_source_fingerprint_covers_every_module_the_builder_imports(tmp_path):
    package = Path(measure_module.__file__).parent
    root = tmp_path / "scaling_lab"
    shutil.copytree(package, root)
    fingerprint = source_fingerprint.__wrapped__
    before = fingerprint(root)
    assert before == source_fingerprint()  # the same files, the same key
    for edited in ("graphs.py", "models/backbone.py", "models/layers.py", "measure.py", "spec.py", "scaling.py"):
        original = (root / edited).read_text()
        (root / edited).write_text(original + "\n# edited\n")
        assert fingerprint(root) != before, edited
        (root / edited).write_text(original)
    (root / "report" / "html.py").write_text("# not counting code\n")
    assert fingerprint(root) == before


def test_a_module_the_builder_starts_to_import_is_counted_from_then_on(tmp_path):
    root = tmp_path / "scaling_lab"
    shutil.copytree(Path(measure_module.__file__).parent, root)
    (root / "node_ops.py").write_text("SCALE = 1\n")
    assert "node_ops.py" not in counted_sources(root)
    graphs = root / "graphs.py"
    graphs.write_text(graphs.read_text() + "\n\ndef _late():\n    from scaling_lab.node_ops import SCALE\n")
    assert "node_ops.py" in counted_sources(root)
