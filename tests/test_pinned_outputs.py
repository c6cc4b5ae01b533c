"""Pinned outputs of the shipped model.

``test_shipped_model_is_pinned`` holds the shipped model's fingerprints and scores to the values
pinned for the same inputs (tests/data/pinned_shipped.json; first made by the pre-restructure
code, commit c034ee4): moving code between modules must not move a number. When the shipped
model itself changes, the file is remade from the new model with ``python
tests/test_pinned_outputs.py --repin`` (and the commit says so).
"""
import json
from pathlib import Path

import numpy as np
import pytest

from ofa_sdk import Attributor
from ofa_sdk.evaluation.support import support_scores

PINNED = Path(__file__).parent / "data" / "pinned_shipped.json"


def pinned_images():
    """The inputs the pinned values were computed on (seeded, 128x128, 2x upscaled noise)."""
    rng = np.random.default_rng(1234)
    out = []
    for i in range(6):
        base = rng.integers(0, 256, (64 + 8 * i, 64 + 8 * i, 3)).astype(np.float64)
        a = np.kron(base, np.ones((2, 2, 1)))[:128, :128]
        a = a + rng.normal(0, 4 + i, a.shape)
        out.append(np.clip(a, 0, 255).astype(np.uint8))
    return out


@pytest.mark.parametrize("crops", [1, 4])
def test_shipped_model_is_pinned(crops):
    from ofa_sdk.kernels import dispatch
    want = json.loads(PINNED.read_text())
    with dispatch.reference():      # the reference path, as the pinned values were made
        got = pinned_values(crops)
    for k, v in got.items():
        np.testing.assert_allclose(v, want[k], atol=1e-6, rtol=0, err_msg=k)


def pinned_values(crops) -> dict:
    """Everything pinned at ``crops``: fingerprints, support scores of both rules, attributions
    and per-profile thresholds of both rules, on :func:`pinned_images`."""
    ims = pinned_images()
    att = Attributor(crops=crops, backend="torch")     # the reference engine, as pinned
    out = {f"fingerprint_crops{crops}": att.fingerprint(ims).tolist()}
    zs = [e.z for e in att.embed_stream(ims)]
    sup = np.concatenate(zs[:3])
    for rule in ("prototype", "pair"):
        out[f"scores_{rule}_crops{crops}"] = np.asarray(support_scores(att, zs[3:], sup, [len(z) for z in zs[:3]], rule=rule)).tolist()
    for rule, suffix in (("prototype", ""), ("pair", "_pair")):
        a = Attributor(model=att.bundle, crops=crops, rule=rule, backend="torch")
        a.enroll("a", ims[:3])
        a.enroll("b", ims[3:])
        got = [[r.scores["a"], r.scores["b"]] for r in a.attribute(ims)]
        np.testing.assert_allclose(a.scores(ims), got, atol=1e-6, rtol=0)   # one path, two calls
        out[f"attribute{suffix}_crops{crops}"] = got
        out[f"threshold{suffix}_crops{crops}"] = [a.profile_threshold("a"), a.profile_threshold("b")]
    return out


if __name__ == "__main__":
    import sys
    if sys.argv[1:] != ["--repin"]:
        sys.exit("usage: python tests/test_pinned_outputs.py --repin  (after the shipped model changed)")
    from ofa_sdk.kernels import dispatch
    with dispatch.reference():
        values = {k: v for c in (1, 4) for k, v in pinned_values(c).items()}
    PINNED.write_text(json.dumps(values))
    print(f"wrote {PINNED}")
