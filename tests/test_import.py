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
