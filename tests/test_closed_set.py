"""The closed/open-set head (ofa_sdk.closed_set.fit_head) uses dimensions of small spread: unit
fingerprints whose classes differ along a few quiet dimensions, beside loud ones that carry
nothing, are told apart on new rows (the head standardises what it trains on, then folds that
into its first layer)."""
import numpy as np

from ofa_sdk.closed_set import fit_head, predict

D = 128


def _rows(rng, k, n=150):
    scale = np.full(D, 0.05)
    scale[:8] = 0.002                   # eight quiet dimensions carry the classes
    x = rng.normal(size=(n, D)) * scale
    x[:, k] += 0.008                    # 4 of its spreads
    x[:, 20] += 1.0                     # a shared direction, as unit fingerprints share one
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_the_head_tells_classes_apart_along_quiet_dimensions():
    rng = np.random.default_rng(0)
    head, classes, stats = fit_head({f"g{k}": _rows(rng, k) for k in range(4)}, _rows(rng, 6))
    assert classes[:4] == ["g0", "g1", "g2", "g3"] and stats["train_acc"] > 0.95
    new = [_rows(rng, k) for k in range(4)]
    acc = np.mean([np.argmax(predict(head, z), 1) == k for k, z in enumerate(new)])
    assert acc > 0.7                    # chance is 0.2; unstandardised, the same fit gave 0.23
