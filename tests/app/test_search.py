"""Search: a population refilled without recompiling, pruned on validation, on a real study store
(SQLite, and PostgreSQL where a server is given), shared by workers, surviving a SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import jaxdigits as jd
from jaxdigits import population as population_module
from jaxdigits.search import search
from jaxdigits.search_space import load_space, parse_space
from tests.conftest import synthetic_dataset, write_idx_folder

POSTGRES_ENV, REQUIRE_POSTGRES_ENV = "JAXDIGITS_TEST_POSTGRES", "JAXDIGITS_REQUIRE_POSTGRES"
DATA = synthetic_dataset(400, 100)
BASE = jd.TrainConfig(hidden=(16,), batch_size=20)
SPACE = {"lr": {"log": [0.01, 10.0]}}


def optuna_study(out: Path, storage: str | None = None, name: str = "jaxdigits"):
    import optuna

    return optuna.load_study(study_name=name, storage=storage or f"sqlite:///{out / 'study.db'}")


def finished(study) -> list:
    from optuna.trial import TrialState

    return study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))


def worker_database(url: str) -> str:
    """``url`` itself, or under pytest-xdist a database of this worker's own beside it (created
    once), so that tests running side by side never drop each other's tables."""
    import sqlalchemy

    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if not worker:
        return url
    base = sqlalchemy.engine.make_url(url.replace("postgresql://", "postgresql+psycopg://", 1))
    name = f"{base.database}_{worker}"
    engine = sqlalchemy.create_engine(base, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        if not connection.execute(sqlalchemy.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).first():
            connection.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return base.set(database=name).render_as_string(hide_password=False).replace("postgresql+psycopg://", "postgresql://", 1)


@pytest.fixture
def postgres_url() -> str:
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        if os.environ.get(REQUIRE_POSTGRES_ENV):
            pytest.fail(f"{REQUIRE_POSTGRES_ENV} is set but {POSTGRES_ENV} names no server (see .ci/postgres)")
        pytest.skip(f"set {POSTGRES_ENV} to a PostgreSQL database URL (bash .ci/postgres starts one)")
    import sqlalchemy

    url = worker_database(url)
    engine = sqlalchemy.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.begin() as connection:  # a clean database for each test
        connection.execute(sqlalchemy.text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    engine.dispose()
    return url


@pytest.fixture
def data_dir(tmp_path) -> Path:
    return write_idx_folder(tmp_path / "data", synthetic_dataset(1200, 100))


def test_a_search_fills_its_population_from_the_study_and_prunes(tmp_path, monkeypatch):
    compiled, made = [], []
    real_compiled, real_init = population_module.compiled, population_module.Population.__init__
    monkeypatch.setattr(population_module, "compiled", lambda *a, **k: compiled.append(a[0]) or real_compiled(*a, **k))
    monkeypatch.setattr(population_module.Population, "__init__", lambda self, *a: made.append(1) or real_init(self, *a))
    result = search(SPACE, DATA, trials=14, epochs=6, validation=100, population=4, sampler="random", pruner="asha",
                    out_dir=tmp_path, base=BASE)
    assert len(result.records) == 14 and len({r["trial"] for r in result.records}) == 14
    pruned = [r for r in result.records if r["pruned"]]
    assert pruned and all(r["epochs_completed"] < 6 for r in pruned)
    assert all(r["epochs_completed"] == 6 for r in result.records if not r["pruned"])
    # 14 trials through 4 slots: every refill reused the one population and its compiled epoch
    assert made == [1] and len(compiled) == 1 and result.model_epochs == sum(r["epochs_completed"] for r in result.records)
    study = optuna_study(tmp_path)
    assert len(finished(study)) == 14 and study.best_value == result.best["best_validation_accuracy"]
    assert result.best_test_accuracy == jd.evaluate(jd.load_params(tmp_path / "trials" / f"trial-{result.best['trial']}.safetensors")[0],
                                                    DATA.test_images, DATA.test_labels)


def test_a_trial_trains_as_the_same_run_would_alone(tmp_path):
    result = search(SPACE, DATA, trials=2, epochs=3, validation=100, population=2, sampler="random", pruner="none",
                    out_dir=tmp_path, base=BASE)
    for record in result.records:
        alone = jd.train(BASE.replace(lr=record["lr"], seed=record["seed"], epochs=3, validation=100, select="best"), DATA)
        np.testing.assert_allclose(record["validation_accuracy_curve"], alone.record["validation_accuracy_curve"], atol=0.011)
        np.testing.assert_allclose(record["train_cost_curve"], alone.record["train_cost_curve"], rtol=1e-3)


def test_running_the_search_again_resumes_the_study(tmp_path):
    search(SPACE, DATA, trials=4, epochs=2, validation=100, population=2, sampler="random", pruner="none", out_dir=tmp_path, base=BASE)
    more = search(SPACE, DATA, trials=7, epochs=2, validation=100, population=2, sampler="random", pruner="none",
                  out_dir=tmp_path, base=BASE)
    assert sorted(r["trial"] for r in more.records) == list(range(7)) and more.model_epochs == 3 * 2
    with pytest.raises(jd.ConfigError, match="created with another space"):
        search({"lr": {"log": [0.1, 1.0]}}, DATA, trials=8, epochs=2, validation=100, out_dir=tmp_path, base=BASE)


def test_a_search_and_a_run_or_sweep_never_share_a_folder(tmp_path):
    jd.train(BASE.replace(epochs=1), DATA, out_dir=tmp_path / "run")
    jd.sweep(data=DATA, lr=[1.0], epochs=1, out_dir=tmp_path / "sweep")
    for kind, folder in (("a training run", "run"), ("a sweep", "sweep")):
        with pytest.raises(jd.RunFolderError, match=f"holds {kind}, not a search; give a new --out"):
            search(SPACE, DATA, trials=1, epochs=1, validation=100, out_dir=tmp_path / folder, base=BASE)
        assert not (tmp_path / folder / "study.db").exists()
    search(SPACE, DATA, trials=1, epochs=1, validation=100, out_dir=tmp_path / "search", base=BASE)
    with pytest.raises(jd.RunFolderError, match="holds a search, not a training run"):
        jd.train(BASE.replace(epochs=1), DATA, out_dir=tmp_path / "search", overwrite=True)
    with pytest.raises(jd.RunFolderError, match="holds a search, not a sweep"):
        jd.sweep(data=DATA, lr=[1.0], epochs=1, out_dir=tmp_path / "search")
    (tmp_path / "mine" / "trials").mkdir(parents=True)  # a folder of one's own named trials marks no search
    jd.train(BASE.replace(epochs=1), DATA, out_dir=tmp_path / "mine")
    with pytest.raises(jd.ConfigError, match="hold out fewer"):  # a search refused leaves no folder behind
        search(SPACE, DATA, trials=1, epochs=1, validation=len(DATA.train_images), out_dir=tmp_path / "never", base=BASE)
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize("spec, message", [
    ({"lr": {"log": [3.0, 1.0]}}, "empty or inverted"), ({"lr": {"uniform": [1.0, 1.0]}}, "empty or inverted"),
    ({"l2": {"log": [0.0, 1e-3]}}, "needs low > 0"), ({"activation": {"uniform": [0, 1]}}, "is not a number"),
    ({"batch_size": {"uniform": [8, 64]}}, "is an integer; give it int"), ({"lr": {"int": [1, 4]}}, "is not an integer"),
    ({"epochs": [1, 2]}, "set by the search itself"), ({"colour": [1]}, "not a config field"),
    ({"hidden": []}, "lists no values"), ({"lr": {"normal": [0, 1]}}, "give a list of values or one of"),
    ({}, "give at least one field"), ({"optimizer": ["sgd", "rmsprop"]}, "optimizer: 'rmsprop' is not one of"),
])
def test_a_bad_space_is_one_line(spec, message):
    with pytest.raises(jd.ConfigError, match=message):
        parse_space(spec)


def test_space_files_and_flags_say_the_same(tmp_path):
    (tmp_path / "space.toml").write_text('lr = {log = [0.01, 30]}\nbatch_size = [10, 32, 128]\nhidden = [[16, 16], [32]]\n')
    from_file = load_space(tmp_path / "space.toml")
    from_flags = load_space(None, ("lr=log:0.01:30", "batch_size=10,32,128", "hidden=16x16,32"))
    assert from_file == from_flags and from_file["hidden"].choices == ((16, 16), (32,))
    with pytest.raises(jd.ConfigError, match=r"'0.5' is not a kind of range; give one of log, uniform, int, int_log first, "
                                          r"e.g. momentum=uniform:0.5:0.99"):
        load_space(None, ("momentum=0.5:0.99",))


@pytest.mark.parametrize("flags, message", [
    (["--sampler", "grid"], "invalid choice"), (["--pruner", "median"], "invalid choice"),
    (["--param", "lr=log:3:1"], "empty or inverted"), (["--storage", "postgresql://nobody@127.0.0.1:1/none"], "--storage"),
    (["--storage", "not a url"], "--storage"), (["--pbt-interval", "2"], "--pbt-interval is for --pruner pbt"),
    (["--param", "lr=log:0:30"], "lr: the log range [0, 30] has a bound the field refuses (lr: 0.0 must be > 0)"),
    (["--lr", "3"], "--lr: set by a flag and searched by the space; drop the flag or the field's range"),
])
def test_bad_search_flags_exit_2_with_one_line(flags, message, tmp_path, data_dir):
    args = [sys.executable, "-m", "jaxdigits", "search", "--param", "lr=log:0.1:1", "--trials", "2", "--epochs", "1",
            "--validation", "100", "--data-dir", str(data_dir), "--out", str(tmp_path / "out"), *flags]
    started = time.monotonic()
    out = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert time.monotonic() - started < 60


def worker(data_dir: Path, out: Path, storage: str | None, trials: int, epochs: int = 3, heartbeat: int = 1):
    args = [sys.executable, "-m", "jaxdigits", "search", "--param", "lr=log:0.05:3", "--hidden", "16", "--batch-size", "10",
            "--trials", str(trials), "--epochs", str(epochs), "--validation", "200", "--population", "2",
            "--sampler", "random", "--pruner", "none", "--data-dir", str(data_dir), "--out", str(out),
            "--heartbeat", str(heartbeat)] + (["--storage", storage] if storage else [])
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def two_workers_finish_exactly(data_dir: Path, tmp_path: Path, storage: str | None, trials: int = 8) -> None:
    outs = [tmp_path / "a", tmp_path / "b"] if storage else [tmp_path / "shared"] * 2
    workers = [worker(data_dir, out, storage, trials) for out in outs]
    for w in workers:
        _, err = w.communicate(timeout=600)
        assert w.returncode == 0, err[-2000:]
    study = optuna_study(outs[0], storage and storage.replace("postgresql://", "postgresql+psycopg://", 1))
    done = finished(study)
    assert len(done) == trials and sorted(t.user_attrs["record"]["trial"] for t in done) == sorted(t.number for t in done)


def test_two_workers_share_a_sqlite_study(tmp_path, data_dir):
    two_workers_finish_exactly(data_dir, tmp_path, None)


def test_two_workers_share_a_postgresql_study(tmp_path, data_dir, postgres_url):
    two_workers_finish_exactly(data_dir, tmp_path, postgres_url)


def test_a_killed_worker_loses_nothing_finished_and_its_trials_are_retried(tmp_path, data_dir, postgres_url):
    from optuna.trial import TrialState

    import optuna

    storage = optuna.storages.RDBStorage(postgres_url.replace("postgresql://", "postgresql+psycopg://", 1))
    first = worker(data_dir, tmp_path / "a", postgres_url, trials=6, epochs=40)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        try:
            study = optuna_study(tmp_path, storage)
            states = [t.state for t in study.get_trials()]
        except KeyError:  # the study is not created yet
            states = []
        # A whole pair finished and the next pair started: killed now, it dies mid-trial. (One
        # COMPLETE beside one RUNNING can be the first pair's two trials a moment apart.)
        if states.count(TrialState.COMPLETE) >= 2 and TrialState.RUNNING in states:
            break
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)
    first.communicate()
    running = {t.number: t.params for t in optuna_study(tmp_path, storage).get_trials(states=(TrialState.RUNNING,))}
    assert running, "the worker was killed while training"
    second = worker(data_dir, tmp_path / "b", postgres_url, trials=6, epochs=40)
    _, err = second.communicate(timeout=300)
    assert second.returncode == 0, err[-2000:]
    study = optuna_study(tmp_path, storage)
    assert len(finished(study)) == 6  # exactly the budget: nothing counted twice
    failed = {t.number: t.params for t in study.get_trials(states=(TrialState.FAIL,))}
    assert set(running) <= set(failed)  # the killed worker's trials were failed ...
    retried = [t.params for t in finished(study) if t.system_attrs.get("failed_trial") in running]
    # ... and run again with their parameters (a trial killed before it was given any has none to keep)
    assert {str(p) for p in running.values() if p} <= set(map(str, retried))


def test_a_trial_whose_worker_died_before_its_first_heartbeat_is_failed_and_asked_again(tmp_path):
    import optuna
    from optuna.trial import TrialState

    search(SPACE, DATA, trials=2, epochs=1, validation=100, population=2, sampler="random", pruner="none",
           out_dir=tmp_path, base=BASE)
    study = optuna_study(tmp_path)
    orphan = study.ask({"lr": optuna.distributions.FloatDistribution(0.01, 10.0, log=True)})  # a worker dies here
    time.sleep(3)
    result = search(SPACE, DATA, trials=3, epochs=1, validation=100, population=2, sampler="random", pruner="none",
                    out_dir=tmp_path, base=BASE, heartbeat=(1, 2))
    assert len(result.records) == 3
    study = optuna_study(tmp_path)
    assert study.trials[orphan.number].state == TrialState.FAIL
    retried = [t for t in finished(study) if t.system_attrs.get("failed_trial") == orphan.number]
    assert len(retried) == 1 and retried[0].params == orphan.params


# Population-based training: one search, watched where a row is copied, then examined.
PBT_SPACE = {"lr": {"log": [0.01, 10.0]}, "momentum": {"uniform": [0.5, 0.95]}, "rotation": {"uniform": [1.0, 12.0]},
             "dropout": [0.1, 0.2]}
PBT_BASE = BASE.replace(optimizer="momentum", dropout=0.1, augment="affine", rotation=5.0)


def row_of(tree, row: int):
    import jax

    return jax.tree_util.tree_map(lambda x: np.asarray(x[row, 0]), tree)


@pytest.fixture(scope="module")
def pbt_run(tmp_path_factory):
    """A pbt search of 14 trials in 4 slots, with each row copy's before and after kept."""
    out, copies, compiled, made = tmp_path_factory.mktemp("pbt"), [], [], []
    real_compiled, real_init = population_module.compiled, population_module.Population.__init__
    real_branch, cached = population_module.Population.branch, population_module._branch._cache_size()

    def branch(self, row, source, config):
        def seen(r):
            return row_of(self.states, r), {**self.hyperparams(r), "rotation": float(np.asarray(self.strengths["rotation"])[r])}

        before = seen(source)
        real_branch(self, row, source, config)
        copies.append((before, seen(row), row_of(self.best, row), config))

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(population_module, "compiled", lambda *a, **k: compiled.append(a[0]) or real_compiled(*a, **k))
        patch.setattr(population_module.Population, "__init__", lambda self, *a: made.append(1) or real_init(self, *a))
        patch.setattr(population_module.Population, "branch", branch)
        result = search(PBT_SPACE, DATA, trials=14, epochs=6, validation=100, population=4, sampler="random",
                        pruner="pbt", pbt_interval=2, out_dir=out, base=PBT_BASE)
    return {"result": result, "out": out, "copies": copies, "compiled": compiled, "made": made,
            "branch_programs": population_module._branch._cache_size() - cached}


def children(study) -> list:
    return [t for t in study.get_trials() if t.user_attrs.get("parent") is not None]


def test_pbt_copies_a_top_members_network_and_state_bit_for_bit_with_perturbed_numbers(pbt_run):
    import jax

    assert pbt_run["copies"], "the search exploited no member"
    study = optuna_study(pbt_run["out"])
    for (parent, held), (child, child_held), best, config in pbt_run["copies"]:
        for a, b in zip(jax.tree_util.tree_leaves((parent.params, parent.opt_state.inner_state)),
                        jax.tree_util.tree_leaves((child.params, child.opt_state.inner_state))):
            assert a.dtype == b.dtype and np.array_equal(a, b)  # the network and the momentum trace, bit for bit
        assert parent.opt_state.count == child.opt_state.count > 0
        leaves = jax.tree_util.tree_leaves
        assert all(np.array_equal(a, b) for a, b in zip(leaves(parent.params), leaves(best)))  # its best so far: the copy
        for name, field in (("learning_rate", "lr"), ("momentum", "momentum"), ("rotation", "rotation")):  # x0.8 or x1.2, clipped
            low, high = PBT_SPACE[field][next(iter(PBT_SPACE[field]))]
            options = [np.float32(min(max(float(held[name]) * f, low), high)) for f in (0.8, 1.2)]
            assert any(np.isclose(child_held[name], o, rtol=2e-7, atol=0) for o in options), (name, held[name], child_held[name])
            assert np.float32(getattr(config, field)) == np.float32(child_held[name])
        for name in ("dropout", "l2", "b1", "b2"):  # a list and fields not searched: unchanged
            assert child_held[name] == held[name]
    for child in children(study):
        parent = study.trials[child.user_attrs["parent"]]
        for field in ("lr", "momentum", "rotation"):
            low, high = PBT_SPACE[field][next(iter(PBT_SPACE[field]))]
            assert any(child.params[field] == pytest.approx(min(max(parent.params[field] * f, low), high), rel=1e-12)
                       for f in (0.8, 1.2))
        assert child.params["dropout"] == parent.params["dropout"]


def test_pbt_lineage_is_in_the_store_and_points_to_trials_that_trained_that_far(pbt_run):
    from jaxdigits.search_report import search_report
    from jaxdigits.study import lineage

    study = optuna_study(pbt_run["out"])
    made = children(study)
    assert len(made) == len(pbt_run["copies"])
    records = {t.number: t.user_attrs["record"] for t in finished(study)}
    for child in made:
        parent, start = child.user_attrs["parent"], child.user_attrs["start_epoch"]
        assert parent in records and parent < child.number and 2 <= start < 6
        assert records[parent].get("start_epoch", 0) + records[parent]["epochs_completed"] >= start  # it got there
        assert records[child.number]["parent"] == parent and records[child.number]["start_epoch"] == start
        assert records[child.number]["validation_accuracy_curve"] and records[child.number]["selected_epoch"] > start
    replaced = [r for r in records.values() if "replaced_by" in r]
    assert sorted(r["replaced_by"] for r in replaced) == sorted(t.number for t in made) and all(r["pruned"] for r in replaced)
    chain = lineage(study.trials, made[-1].number)
    assert chain[-1]["trial"] == made[-1].number and chain[0]["start_epoch"] == 0
    assert all(a["trial"] == study.trials[b["trial"]].user_attrs["parent"] for a, b in zip(chain, chain[1:]))
    report = search_report(pbt_run["out"], pbt_run["out"] / "report")
    assert report["lineage"][-1]["trial"] == pbt_run["result"].best["trial"] == pbt_run["result"].lineage[-1]["trial"]


def test_pbt_copies_rows_without_compiling_again(pbt_run):
    assert pbt_run["made"] == [1] and len(pbt_run["compiled"]) == 1  # one population, one compiled epoch
    assert len(pbt_run["copies"]) >= 2 and pbt_run["branch_programs"] <= 1  # every copy: the one compiled update


def test_pbt_honours_the_budget_and_counts_each_epoch_once(pbt_run):
    from optuna.trial import TrialState

    result, study = pbt_run["result"], optuna_study(pbt_run["out"])
    assert len(finished(study)) == len(study.trials) == len(result.records) == 14
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING, TrialState.FAIL))
    assert result.model_epochs == sum(r["epochs_completed"] for r in result.records)
    for record in result.records:
        reached = record.get("start_epoch", 0) + record["epochs_completed"]
        assert reached <= 6 and (record["pruned"] or reached == 6)


def test_perturb_moves_only_traced_ranges_within_them():
    from jaxdigits.search_space import perturb

    space = parse_space({"lr": {"log": [0.01, 1.0]}, "momentum": {"uniform": [0.5, 0.95]}, "dropout": [0.1, 0.2],
                         "batch_size": [10, 20]})
    params = {"lr": 0.9, "momentum": 0.6, "dropout": "0.1", "batch_size": "20"}
    seen = set()
    for seed in range(20):
        moved, factors = perturb(params, space, PBT_BASE, np.random.default_rng(seed))
        assert moved["lr"] in (pytest.approx(0.72), 1.0) and moved["momentum"] in (pytest.approx(0.5), pytest.approx(0.72))
        assert moved["dropout"] == "0.1" and moved["batch_size"] == "20" and set(factors) == {"lr", "momentum"}
        seen.add(moved["lr"] == 1.0)
    assert seen == {True, False}  # both factors drawn; 0.9 x 1.2 clipped to the range's 1.0
    fixed_rate = PBT_BASE.replace(optimizer=lambda lr: __import__("optax").sgd(float(lr)))  # a rate the program keeps
    assert perturb(params, space, fixed_rate, np.random.default_rng(0))[0]["lr"] == 0.9


@pytest.mark.parametrize("kwargs, message", [
    ({"pruner": "asha", "pbt_interval": 2}, "--pbt-interval is for --pruner pbt"),
    ({"pruner": "pbt", "pbt_interval": 0}, "at least 1"),
    ({"pruner": "pbt", "space": {"batch_size": [10, 20]}}, "give the space one"),
])
def test_pbt_settings_that_cannot_apply_are_one_line(kwargs, message, tmp_path):
    space = kwargs.pop("space", SPACE)
    with pytest.raises(jd.ConfigError, match=message):
        search(space, DATA, trials=2, epochs=2, validation=100, out_dir=tmp_path, base=BASE, **kwargs)


def test_a_retried_branch_starts_afresh_and_says_whose_copy_it_lost(tmp_path):
    import optuna
    from optuna.trial import TrialState

    from jaxdigits.search_space import distributions

    search(SPACE, DATA, trials=2, epochs=1, validation=100, population=2, sampler="random", pruner="pbt",
           out_dir=tmp_path, base=BASE)
    study = optuna_study(tmp_path)
    study.add_trial(optuna.trial.create_trial(  # a branch whose worker died: its copied network is gone
        state=TrialState.RUNNING, params={"lr": 0.5}, distributions=distributions(parse_space(SPACE)),
        user_attrs={"parent": 1, "start_epoch": 2}))
    time.sleep(3)
    result = search(SPACE, DATA, trials=3, epochs=1, validation=100, population=2, sampler="random", pruner="pbt",
                    out_dir=tmp_path, base=BASE, heartbeat=(1, 2))
    retried = [t for t in finished(optuna_study(tmp_path)) if t.system_attrs.get("failed_trial") == 2]
    assert len(result.records) == 3 and len(retried) == 1 and retried[0].params == {"lr": 0.5}
    attrs = retried[0].user_attrs
    assert attrs["parent"] is None and attrs["start_epoch"] == 0 and attrs["lost_parent"] == 1
    assert attrs["record"]["epochs_completed"] == 1 and "parent" not in attrs["record"]


def test_an_edited_trial_record_is_refused_in_one_line(tmp_path, capsys):
    import json
    import sqlite3

    from jaxdigits import cli

    search(SPACE, DATA, trials=2, epochs=1, validation=100, population=2, sampler="random", pruner="none",
           out_dir=tmp_path, base=BASE)
    with sqlite3.connect(tmp_path / "study.db") as db:  # what a hand or another tool could do to the store
        trial_id, text = db.execute("SELECT trial_id, value_json FROM trial_user_attributes WHERE key = 'record' "
                                    "ORDER BY trial_id LIMIT 1").fetchone()
        record = {**json.loads(text), "selected_validation_accuracy": -5}
        db.execute("UPDATE trial_user_attributes SET value_json = ? WHERE trial_id = ? AND key = 'record'",
                   (json.dumps(record), trial_id))
    assert cli.main(["search-report", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"jaxdigits search-report: error: study 'jaxdigits', trial {record['trial']}: its record's "
                          "selected_validation_accuracy is -5, not an accuracy")
    assert not (tmp_path / "report").exists()
