import subprocess
import sys
import textwrap


def test_import_is_light():
    code = textwrap.dedent("""
        import sys, socket
        def no_net(*a, **k):
            raise AssertionError("network touched at import")
        socket.socket.connect = no_net
        import ofa_sdk
        heavy = [m for m in ("torch", "triton", "onnxruntime", "tensorrt", "PIL") if m in sys.modules]
        assert not heavy, heavy
        assert ofa_sdk.__version__
        import ofa_sdk.kernels
        assert "triton" not in sys.modules and "torch" not in sys.modules
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_numpy_score_rules_need_no_torch():
    """ofa_sdk.scoring imports without torch, and its numpy rules (prototype, Gaussian) prepare
    and score without importing it (only the pair rule's kernel path brings torch in, on use)."""
    code = textwrap.dedent("""
        import sys
        import numpy as np
        import ofa_sdk.scoring as s
        assert "torch" not in sys.modules
        rng = np.random.default_rng(0)
        supports = [s.unit(rng.normal(size=(6, 8))) for _ in range(3)]
        queries = [s.unit(rng.normal(size=(2, 8))) for _ in range(4)]
        for rule in (s.PrototypeRule(s.Calibration(10.0, -5.0)),
                     s.GaussianRule(s.Calibration(-2.0, 0.0), whiten="gallery")):
            out = rule.scores(rule.prepare(supports), queries)
            assert out.shape == (4, 3) and np.isfinite(out).all()
        assert "torch" not in sys.modules, "torch imported by a numpy rule"
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_kernels_import_nothing_of_the_models():
    """Imports go one way: models -> kernels (dispatch -> op files, reference); no module of
    ofa_sdk.kernels imports ofa_sdk.models, at module level or inside a function."""
    import ast
    from pathlib import Path
    import ofa_sdk
    folder = Path(ofa_sdk.__file__).parent / "kernels"
    for f in sorted(folder.glob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = ["." * node.level + (node.module or "")]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            assert not any("models" in n.split(".") for n in names), (f.name, names)
