"""A configuration's result does not depend on the device count or its group (``exact=True``),
checked on the real MNIST: a full epoch at lr 3, where SGD amplifies any last-bit difference."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

RATES = [1.0, 2.0, 3.0, 4.0]

SCRIPT = textwrap.dedent("""
    import json, sys
    import jaxdigits as jd
    devices, data_dir, rates = int(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
    jd.use_cpu_cores(devices)
    data = jd.load_mnist(data_dir)
    out = {}
    for group_size in ((1, 3, None) if devices == 1 else (None,)):
        result = jd.sweep(data=data, lr=rates, epochs=1, exact=True, max_group_size=group_size)
        out[str(group_size)] = [[r["train_cost"], r["test_accuracy"], r["devices"]] for r in result.records]
    if devices == 1:
        out["train"] = [[jd.train(jd.TrainConfig(lr=lr, epochs=1), data).record[k] for k in ("train_cost", "test_accuracy")]
                        for lr in rates]
    print(json.dumps(out))
""")


def run_on(devices: int, data_dir) -> dict:
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(devices), str(data_dir), json.dumps(RATES)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def results(mnist_dir):
    return {devices: run_on(devices, mnist_dir) for devices in (1, 2, 4)}


def test_exact_sweeps_equal_train_bit_for_bit_on_1_2_and_4_devices_and_in_groups_of_1_3_and_all(results):
    expected = results[1]["train"]
    runs = [(1, "1"), (1, "3"), (1, "None"), (2, "None"), (4, "None")]
    for devices, group_size in runs:
        got = [[cost, accuracy] for cost, accuracy, _ in results[devices][group_size]]
        assert got == expected, (devices, group_size)
        assert {used for _, _, used in results[devices][group_size]} == {devices}


def test_the_epoch_at_lr_3_is_sensitive_enough_to_show_a_difference(results):
    # The four rates end at different costs: equality above is not a coincidence of a flat run.
    costs = [cost for cost, _ in results[1]["train"]]
    assert len(set(costs)) == len(RATES)
