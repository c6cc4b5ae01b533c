"""GPU timings of the Triton kernels in ``ofa_sdk.kernels`` against PyTorch (needs CUDA + Triton).

    python benchmarks/kernels_gpu.py [--out PATH] [--peak-gbs 4800] [--no-compile] [--quick]

Writes one JSON (default ``$OUT/kernels_gpu.json``, else ``./kernels_gpu.json``; rewritten
after each case, so a time-boxed run keeps what it finished) with, per case (named
``"<case> | <implementation>"``; ``benchmarks/gpu_check.py`` compares each kernel row with the
best torch row of its case),
the median time in microseconds (``triton.testing.do_bench``: CUDA events, L2 flushed between
runs), the max abs error against a float64 reference, and, for the spectrum, the memory-bandwidth
bound ``bytes_min / peak`` (peak from ``--peak-gbs``; 4800 GB/s is the H200's HBM3e spec) and the
fraction of it reached.

Cases
* spectrum ``log1p(|FFT2(r)|)`` at the compact residual sizes (crop 96: 94 with the unpadded
  denoiser at depth 1, 90 at depth 3) and the paper's (crop 256 -> 222), batch x 3 channels:
  Triton (ieee / tf32x3 / tf32, Hermitian half or all columns, a few tile configs) vs torch eager
  (the model's rfft2 + mirror = cuFFT), cuFFT fft2 + abs + log1p, torch.compile of the model's
  path, and the same DFT-as-GEMM in torch (cuBLAS); the CUDA extension (``ofa_sdk._spectrum_cuda``)
  where built; plus the fused high-pass variant vs conv + spectrum.
* MoKConv forward and forward+backward at the simulator's shapes (B=8, C=O in 32..96,
  48x48 / 24x24 / 12x12, K=4): Triton vs grouped-conv weight mixing (cuDNN), output mixing
  (K dense convs) and torch.compile of weight mixing.
* pair-rule gallery scoring: Triton vs the PyTorch reference (chunked) and torch.compile of it.

``--smoke`` runs every code path once on CPU under the Triton interpreter at tiny sizes (checks
the script, times mean nothing).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path

if "--smoke" in sys.argv:
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402



# ------------------------------------------------------------------------------------- timing
def bench(fn, args) -> float:
    """Median microseconds of fn()."""
    if args.smoke:
        t = time.perf_counter()
        fn()
        return 1e6 * (time.perf_counter() - t)
    import triton.testing
    return 1e3 * triton.testing.do_bench(fn, warmup=args.warmup, rep=args.rep, return_mode="median")


def run_case(results, name, fn, args, **extra):
    """Time one case; any failure is recorded, not fatal. The JSON is rewritten after every
    case (``args.save``), so a time-boxed run keeps what it finished."""
    row = dict(extra)
    try:
        row["us"] = round(bench(fn, args), 2)
    except Exception as e:  # noqa: BLE001 - a benchmark records what failed and moves on
        row["error"] = f"{type(e).__name__}: {e}"[:500]
        if args.verbose:
            traceback.print_exc()
    results.append(dict(name=name, **row))
    msg = f"{row['us']:10.1f} us" if "us" in row else "  ERROR " + row["error"][:120]
    print(f"{name:70s} {msg}", flush=True)
    if getattr(args, "save", None):
        args.save()
    return row


def maxerr(a, ref):
    return float((a.double() - ref.double()).abs().max().item())


def compiled(fn, args):
    if args.no_compile or args.smoke:
        return None
    return torch.compile(fn, dynamic=False)


# ----------------------------------------------------------------------------------- spectrum
def spectrum_cases(args, dev, results):
    from ofa_sdk.kernels import spectrum as ks
    from ofa_sdk.models.spectrum import log_spectrum_torch

    sizes = [(94, 64), (90, 64), (222, 16)] if not args.smoke else [(20, 2)]
    if args.quick:
        sizes = sizes[::2]
    configs = [None, dict(BLOCK_M=128, BLOCK_N=32, BLOCK_KH=32, BLOCK_KW=32, num_warps=8),
               dict(BLOCK_M=64, BLOCK_N=64, BLOCK_KH=32, BLOCK_KW=32, num_warps=8),
               dict(BLOCK_M=32, BLOCK_N=32, BLOCK_KH=32, BLOCK_KW=32, num_warps=4)]
    if args.smoke:
        configs = [None, dict(BLOCK_M=16, BLOCK_N=16, BLOCK_KH=16, BLOCK_KW=16)]
    comp = compiled(log_spectrum_torch, args)
    for n, batch in sizes:
        g = torch.Generator(device=dev).manual_seed(0)
        r = 10 * torch.randn(batch, 3, n, n, device=dev, generator=g)
        ref = torch.log1p(torch.fft.fft2(r.double()).abs())
        tag = f"spectrum {n}x{n} B={batch}x3"
        n_img = batch * 3

        def torch_gemm(r=r, n=n):
            c, s = ks.dft_matrices(n, n // 2 + 1, r.device)
            ch, sh = ks.dft_matrices(n, n, r.device)
            yc, ys = r @ c, r @ s
            re, im = ch @ yc - sh @ ys, sh @ yc + ch @ ys
            return torch.log1p(torch.sqrt(re * re + im * im))   # half spectrum only (lower bound)

        run_case(results, f"{tag} | torch eager (rfft2+mirror, cuFFT)", lambda: log_spectrum_torch(r), args,
                 err=maxerr(log_spectrum_torch(r), ref))
        run_case(results, f"{tag} | torch cuFFT fft2+abs+log1p", lambda: torch.log1p(torch.fft.fft2(r).abs()), args)
        run_case(results, f"{tag} | torch DFT-GEMM (cuBLAS, half spectrum, no mirror)", torch_gemm, args)
        if comp is not None:
            run_case(results, f"{tag} | torch.compile(rfft2+mirror)", lambda: comp(r), args)
        for prec in ("ieee", "tf32x3", "tf32"):
            for herm in (True, False):
                for ci, cfg in enumerate(configs if (prec == "ieee" and herm) else configs[:1]):
                    try:
                        out = ks.log_spectrum(r, input_precision=prec, hermitian=herm, config=cfg)
                        err = maxerr(out, ref)
                    except Exception as e:  # noqa: BLE001
                        err = f"{type(e).__name__}: {e}"[:300]
                    cost = ks.spectrum_cost(n_img, n, n, cfg, hermitian=herm)
                    row = run_case(results, f"{tag} | triton {prec} herm={herm} cfg{ci}",
                                   lambda prec=prec, herm=herm, cfg=cfg: ks.log_spectrum(
                                       r, input_precision=prec, hermitian=herm, config=cfg),
                                   args, err=err, config=cfg, **cost)
                    if "us" in row and args.peak_gbs:
                        bound = cost["bytes_min"] / (args.peak_gbs * 1e9) * 1e6
                        row["bandwidth_bound_us"] = round(bound, 2)
                        row["fraction_of_bound"] = round(bound / row["us"], 3)
                        row["tflops_issued"] = round(cost["flops_issued"] / row["us"] / 1e6, 2)
        ext = _cuda_ext(args)
        if ext is not None:
            run_case(results, f"{tag} | cuda_ext (cuFFT R2C + fused epilogue)",
                     lambda: ext.log_spectrum(r, 1.0), args, err=maxerr(ext.log_spectrum(r, 1.0), ref))
        # fused high-pass front end vs Laplacian conv + spectrum
        x = torch.rand(batch, 3, n + 2, n + 2, device=dev, generator=g)
        lap = x.new_tensor([[0., -1., 0.], [-1., 4., -1.], [0., -1., 0.]]).expand(3, 1, 3, 3)
        ref_hp = torch.log1p(torch.fft.fft2(F.conv2d(x.double(), lap.double(), groups=3)).abs())
        run_case(results, f"{tag} highpass | torch conv + eager spectrum",
                 lambda: log_spectrum_torch(F.conv2d(x, lap, groups=3)), args)
        run_case(results, f"{tag} highpass | triton fused ieee", lambda: ks.highpass_log_spectrum(x), args,
                 err=maxerr(ks.highpass_log_spectrum(x), ref_hp),
                 **ks.spectrum_cost(n_img, n, n, highpass=True))
        if ext is not None:
            run_case(results, f"{tag} highpass | cuda_ext (Laplacian + cuFFT R2C + epilogue)",
                     lambda: ext.highpass_log_spectrum(x, 1.0), args,
                     err=maxerr(ext.highpass_log_spectrum(x, 1.0), ref_hp))


def _cuda_ext(args):
    """ofa_sdk._spectrum_cuda when built and on a GPU (never under --smoke), else None."""
    from ofa_sdk.kernels import dispatch
    if args.smoke or not dispatch.cuda_ext_available():
        return None
    import importlib
    return importlib.import_module("ofa_sdk._spectrum_cuda")


# ------------------------------------------------------------------------------------ mokconv
def mokconv_cases(args, dev, results):
    from ofa_sdk.kernels import mokconv as km
    from ofa_sdk.models.mokconv import mokconv_output_mixing, mokconv_weight_mixing

    shapes = [(8, c, hw, 4) for c in (32, 64, 96) for hw in (48, 24, 12)]
    if args.quick:
        shapes = [(8, 32, 48, 4), (8, 96, 12, 4)]
    if args.smoke:
        shapes = [(2, 5, 6, 2)]
    comp = compiled(mokconv_weight_mixing, args)
    for B, C, HW, K in shapes:
        g = torch.Generator(device=dev).manual_seed(0)
        h = torch.randn(B, C, HW, HW, device=dev, generator=g, requires_grad=True)
        coef = torch.randn(B, K, C, device=dev, generator=g, requires_grad=True)
        w = (torch.randn(K, C, C, 3, 3, device=dev, generator=g) / (3 * C ** 0.5)).requires_grad_()
        b = torch.randn(K, C, device=dev, generator=g, requires_grad=True)
        gout = torch.randn(B, C, HW, HW, device=dev, generator=g)
        ins = (h, coef, w, b)
        tag = f"mokconv B={B} C=O={C} {HW}x{HW} K={K}"
        cost = km.mokconv_cost(B, C, C, HW, HW, K)
        with torch.no_grad():
            ref = mokconv_weight_mixing(*(t.double() for t in ins))

        def fwd(fn):
            def go():
                with torch.no_grad():
                    return fn(*ins)
            return go

        def fwd_bwd(fn):
            def go():
                y = fn(*ins)
                return torch.autograd.grad(y, ins, gout)
            return go

        impls = {"weight-mixing grouped conv (cuDNN)": mokconv_weight_mixing,
                 "output-mixing K convs": mokconv_output_mixing}
        if comp is not None:
            impls["torch.compile(weight mixing)"] = comp
        for prec in ("tf32", "ieee") if not args.smoke else ("ieee",):
            impls[f"triton {prec}"] = (lambda p: lambda *a: km.mokconv(*a, input_precision=p))(prec)
        for name, fn in impls.items():
            err = None
            try:
                with torch.no_grad():
                    err = maxerr(fn(*ins), ref)
            except Exception as e:  # noqa: BLE001
                err = f"{type(e).__name__}: {e}"[:300]
            row = run_case(results, f"{tag} fwd | {name}", fwd(fn), args, err=err, **cost)
            if "us" in row:
                row["tflops"] = round(cost["flops_fwd"] / row["us"] / 1e6, 2)
            run_case(results, f"{tag} fwd+bwd | {name}", fwd_bwd(fn), args, flops_fwd_bwd=3 * cost["flops_fwd"])
    print(f"(cudnn.allow_tf32={torch.backends.cudnn.allow_tf32}: the cuDNN rows use TF32 when True)")


# ------------------------------------------------------------------------------------ gallery
def gallery_cases(args, dev, results):
    from ofa_sdk.kernels import gallery as kg

    shapes = [(256, 100, 40, 128, 128), (1024, 20, 40, 128, 128)] if not args.smoke else [(5, 3, 4, 16, 16)]
    for Q, P, S, hd, h2 in shapes:
        g = torch.Generator(device=dev).manual_seed(0)
        q = torch.randn(Q, hd, device=dev, generator=g)
        s = torch.randn(P, S, hd, device=dev, generator=g)
        counts = torch.randint(1, S + 1, (P,), device=dev, generator=g)
        rest = torch.nn.Sequential(torch.nn.Linear(hd, h2), torch.nn.ReLU(), torch.nn.Linear(h2, 1)).to(dev)
        tag = f"gallery Q={Q} P={P} S={S} h={hd} h2={h2}"
        with torch.no_grad():
            ref = kg.pair_gallery_scores_reference(q.double(), s.double(), counts, rest.double())
            rest.float()
            run_case(results, f"{tag} | torch reference (chunk 256)",
                     lambda: kg.pair_gallery_scores_reference(q, s, counts, rest), args,
                     err=maxerr(kg.pair_gallery_scores_reference(q, s, counts, rest), ref))
            comp = compiled(lambda a, b_, c: kg.pair_gallery_scores_reference(a, b_, c, rest, chunk=Q), args)
            if comp is not None:
                run_case(results, f"{tag} | torch.compile(reference)", lambda: comp(q, s, counts), args)
            for prec in ("ieee", "tf32x3", "tf32"):
                run_case(results, f"{tag} | triton {prec}",
                         lambda prec=prec: kg.pair_gallery_scores(q, s, counts, rest, input_precision=prec),
                         args, err=maxerr(kg.pair_gallery_scores(q, s, counts, rest, input_precision=prec), ref))


def main(argv=None):
    default_out = Path(os.environ["OUT"]) / "kernels_gpu.json" if os.environ.get("OUT") else Path("kernels_gpu.json")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(default_out))
    ap.add_argument("--peak-gbs", type=float, default=4800.0,
                    help="peak memory bandwidth in GB/s for the bandwidth bound (H200: 4800)")
    ap.add_argument("--ops", nargs="+", default=["spectrum", "gallery", "mokconv"])
    ap.add_argument("--warmup", type=int, default=10, help="do_bench warmup (ms)")
    ap.add_argument("--rep", type=int, default=50, help="do_bench repetition time (ms)")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile rows (compile time)")
    ap.add_argument("--quick", action="store_true", help="fewer sizes")
    ap.add_argument("--smoke", action="store_true", help="CPU + Triton interpreter, tiny sizes")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args(argv)

    if args.smoke:
        dev = "cpu"
    elif not torch.cuda.is_available():
        sys.exit("kernels_gpu.py needs a CUDA GPU (or --smoke to check the script on CPU)")
    else:
        dev = "cuda"
    import triton
    meta = {"torch": torch.__version__, "triton": triton.__version__, "python": platform.python_version(),
            "device": torch.cuda.get_device_name() if dev == "cuda" else "cpu (interpreter)",
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
            "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "peak_gbs": args.peak_gbs, "smoke": args.smoke, "argv": sys.argv[1:]}
    results: list = []
    t0 = time.time()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save():
        meta["seconds"] = round(time.time() - t0, 1)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
        tmp.replace(out)
    args.save = save
    for op in args.ops:
        {"spectrum": spectrum_cases, "mokconv": mokconv_cases, "gallery": gallery_cases}[op](args, dev, results)
        meta["done"] = args.ops[:args.ops.index(op) + 1]
    save()
    print(f"wrote {out} ({len(results)} rows, {meta['seconds']} s)")


if __name__ == "__main__":
    main()
