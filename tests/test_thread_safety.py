"""One Attributor shared by several threads gives what sequential calls give."""
from concurrent.futures import ThreadPoolExecutor

import numpy as np


def test_attributor_shared_by_threads_matches_sequential_calls(tiny_model):
    from ofa_sdk import Attributor
    att = Attributor(model=tiny_model, backend="torch", gallery=None)
    rng = np.random.default_rng(0)
    img = lambda: rng.integers(0, 256, (40, 40, 3), np.uint8)  # noqa: E731
    att.enroll("gen-a", [img() for _ in range(6)])
    att.enroll("gen-b", [img() for _ in range(6)])
    inputs = [[img() for _ in range(5)] for _ in range(4)]

    def work(k):
        xs = inputs[k]
        res = att.attribute(xs)
        return ([(r.label, r.score, tuple(sorted(r.scores.items()))) for r in res],
                att.verify(xs, "gen-b"), att.fingerprint(xs))

    expected = [work(k) for k in range(4)]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(work, [k for _ in range(3) for k in range(4)]))
    for i, (labels, ver, fp) in enumerate(got):
        e_labels, e_ver, e_fp = expected[i % 4]
        assert [x[0] for x in labels] == [x[0] for x in e_labels]
        np.testing.assert_allclose([x[1] for x in labels], [x[1] for x in e_labels], atol=1e-5)
        np.testing.assert_allclose(ver, e_ver, atol=1e-5)
        np.testing.assert_allclose(fp, e_fp, atol=1e-5)
