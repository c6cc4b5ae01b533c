"""ofa-sdk command line.

    ofa-sdk enroll NAME DIR            make a generator profile from a folder of its images
    ofa-sdk enroll NAME --from-cluster OUT/cluster-ID   ... or from a cluster found by discover
    ofa-sdk verify DIR --against NAME  P(made by NAME) for each image
    ofa-sdk attribute DIR              best enrolled model per image, or unknown
    ofa-sdk scan DIR -o results.jsonl  streaming scan to JSONL, CSV or Parquet (resumable)
    ofa-sdk info                       model, backend, gallery
    ofa-sdk remove NAME                delete a profile
    ofa-sdk eval ROOT                  the paper's image-to-model table on a benchmark folder
    ofa-sdk show NAME|DIR -o FILE.png  mean residual spectrum of a profile or a folder
    ofa-sdk discover SOURCE -o OUT     cluster unknown images (a folder or a scan's output)
    ofa-sdk fit-closed-set REAL_DIR    (T+1)-way head on enrolled models + reconstructed reals
    ofa-sdk open-set DIR               closed/open-set attribution with that head
    ofa-sdk export --format onnx|engine  inference graphs (ONNX) or TensorRT engines
    ofa-sdk serve                      HTTP service with batching and the review page (docs/serving.md)

Every command takes --gallery PATH (default: $OFA_SDK_GALLERY, else
~/.cache/ofa-sdk/gallery.db) and --model FILE. Tables on a terminal; JSON with --json.
Exit status: 0 success, 1 some inputs were unusable (each is reported), 2 usage or setup error.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from .attributor import JPEG_VARIANTS, RESCALE_VARIANTS
from .backends import backend_names
from .decision import DEFAULT_FRACTION, DEFAULT_MARGIN, check_fraction, check_margin
from .images import AUTO, KERNELS, MAX_AUTO_CROPS, MAX_BYTES, SMALL_POLICIES, parse_variants
from .scoring import RULES

DEFAULT_GALLERY = Path(os.environ.get("OFA_SDK_GALLERY",
                                      Path.home() / ".cache" / "ofa-sdk" / "gallery.db"))
from .scan_output import SCAN_FIELDS  # noqa: E402,F401  (the scan's columns; public)


RECOMMENDED_SUPPORT = 20  # support images per profile for a tight per-profile threshold (docs/experiment-log.md section 5.2)
THRESHOLD_HELP = "a score in [0, 1], or 'profile' for per-profile thresholds (the default)"


def _threshold(v: str):
    from .decision import parse_threshold
    try:
        return parse_threshold(v)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _at_least_1(v: str, flag: str, alternative: str = "") -> int:
    try:
        k = int(v)
    except ValueError:
        k = 0
    if k < 1:
        raise argparse.ArgumentTypeError(f"{flag} takes an integer >= 1{alternative}, got {v!r}")
    return k


def _checked(check, *args):
    """An argparse type from a decision.check_* function: its ValueError as a usage error."""
    def parse(v: str):
        try:
            return check(v, *args)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return parse


def _crops(v: str):
    return v if v == AUTO else _at_least_1(v, "--crops", f" or {AUTO!r}")


def _engine_options(a) -> Optional[Dict]:
    """--graphs: the graph folder for the engines that load exported graphs."""
    return {e: {"graphs_dir": a.graphs} for e in ("onnxruntime", "tensorrt")} if a.graphs else None


def _max_bytes(v: str) -> int:
    return _at_least_1(v, "--max-bytes")


def _common(p: argparse.ArgumentParser):
    p.add_argument("--gallery", default=str(DEFAULT_GALLERY), help="gallery SQLite file")
    p.add_argument("--model", default=None,
                   help="model file or shipped model name (default: compact-v2; compact: the "
                        "previous default)")
    p.add_argument("--backend", default="auto", choices=backend_names())
    p.add_argument("--strict", action="store_true", help="fail instead of falling back")
    p.add_argument("--crops", type=_crops, default=AUTO,
                   help="crops per image (scores averaged), or 'auto' (the default): tiles "
                        "covering the image, at most %d" % MAX_AUTO_CROPS)
    p.add_argument("--small", default="reject", choices=SMALL_POLICIES,
                   help="policy for images smaller than the model's crop")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-bytes", type=_max_bytes, default=MAX_BYTES, metavar="N",
                   help="refuse image files larger than N bytes before reading them "
                        "(default %(default)s, 256 MiB)")
    p.add_argument("--graphs", metavar="DIR", default=None,
                   help="the model's graphs as `ofa-sdk export --format onnx -o DIR` wrote them, "
                        "for the onnxruntime and tensorrt engines (default: beside the model, "
                        "else exported into the cache)")
    p.add_argument("--rule", default=None, choices=RULES,
                   help="score rule (default: the first of these the model is calibrated for; "
                        "pair needs no calibration)")
    p.add_argument("--whiten", default=None, choices=["gallery"],
                   help="gaussian rule: whiten by the enrolled profiles' pooled covariance")
    p.add_argument("--profile-quantile", type=_checked(check_fraction, "--profile-quantile"),
                   default=DEFAULT_FRACTION, metavar="Q",
                   help="the share of a generator's own images its profile threshold refuses "
                        "(default %(default)s)")
    p.add_argument("--ambiguity-margin", type=_checked(check_margin), default=None, metavar="M",
                   help="attribute/scan: unknown when a second accepting profile finds the image "
                        f"within M as typical as the chosen one (default {DEFAULT_MARGIN}, a tie, "
                        "with per-profile thresholds and no head, else 0; 0: never; larger: "
                        "fewer wrong labels and fewer labels on never-enrolled generators, "
                        "fewer right ones)")
    p.add_argument("--choose-head", default=None, metavar="NAME",
                   help="attribute/scan: among the profiles whose thresholds an image meets, the "
                        "closed-set head NAME (fit-closed-set) chooses, not the typicality")
    p.add_argument("--json", action="store_true", help="JSON output")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="ofa-sdk", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("enroll", help="enroll a generator from a folder of its images")
    p.add_argument("name")
    p.add_argument("sources", nargs="*", help="folders, globs or files")
    p.add_argument("--from-cluster", metavar="DIR/cluster-ID", default=None,
                   help="enroll the images of a cluster that 'ofa-sdk discover' found")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--add", action="store_true",
                   help="add the images to an existing profile (its support grows)")
    p.add_argument("--limit", type=int, default=None, help="use at most N images")
    p.add_argument("--rescale", type=float, default=None, metavar="F",
                   help="resize each image by F (with --resize-kernel) before embedding: for "
                        "queries a platform delivers resized about so")
    p.add_argument("--jpeg-quality", type=int, default=None, metavar="Q",
                   help="re-encode each image (after --rescale) at JPEG quality Q before "
                        "embedding: for queries a platform delivers re-encoded at about Q")
    p.add_argument("--jpeg-variants", nargs="+", default=None, metavar="Q",
                   help="also embed the images re-encoded at each JPEG quality Q, against which "
                        "JPEG queries of about that quality are scored ('none': no variants; "
                        "default: " + " ".join(map(str, JPEG_VARIANTS)) + " for a new profile, "
                        "the profile's own with --add)")
    p.add_argument("--rescale-variants", nargs="+", default=None, metavar="F",
                   help="also embed the images resized by each factor F (lossless and at each "
                        "JPEG variant), against which queries resized about so are scored "
                        "('none': no variants; default: " + " ".join(map(str, RESCALE_VARIANTS))
                        + " for a new profile, the profile's own with --add)")
    p.add_argument("--resize-kernel", default=None, choices=KERNELS,
                   help="the kernel --rescale and --rescale-variants resize with: the one the "
                        "platform resizes with, when known (default: bicubic; the profile's "
                        "own with --add)")
    _common(p)
    p = sub.add_parser("verify", help="score images against one enrolled generator")
    p.add_argument("sources", nargs="+")
    p.add_argument("--against", required=True, metavar="NAME")
    _common(p)
    p = sub.add_parser("attribute", help="best enrolled generator per image, or unknown")
    p.add_argument("sources", nargs="+")
    p.add_argument("--threshold", type=_threshold, default=None, help=THRESHOLD_HELP)
    _common(p)
    p = sub.add_parser("scan", help="stream attributions to a JSONL, CSV or Parquet file "
                                    "(resumable)")
    p.add_argument("sources", nargs="+")
    p.add_argument("-o", "--output", required=True,
                   help="results.jsonl, results.csv or results.parquet (needs pyarrow)")
    p.add_argument("--threshold", type=_threshold, default=None, help=THRESHOLD_HELP)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--summary", action="store_true",
                   help="count where declared provenance and the attributed profile agree")
    p.add_argument("--allow-mismatch", action="store_true",
                   help="resume an output written with another model, rule, threshold or gallery")
    p.add_argument("--retry-errors", action="store_true",
                   help="on resume, scan the files of error rows again (their rows are replaced)")
    p.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="local: this process; ray: a Ray cluster (pip install 'ofa-sdk[ray]')")
    p.add_argument("--address", default=None, help="Ray cluster address (--engine ray)")
    p.add_argument("--concurrency", type=int, default=None, help="Ray actors (--engine ray)")
    p.add_argument("--num-gpus", type=float, default=0, help="GPUs per Ray actor (--engine ray)")
    _common(p)
    p = sub.add_parser("info", help="model, backend and gallery")
    _common(p)
    p = sub.add_parser("eval", help="image-to-model AUC table on a benchmark folder")
    p.add_argument("root", help="benchmark root (one class per leaf folder)")
    p.add_argument("--annotations", help="OSMA-style 'path<TAB>label' file (paths relative to ROOT)")
    p.add_argument("--exclude-real", action="store_true", help="drop 0_real/nature/real folders")
    p.add_argument("--include", help="keep leaf folders whose path matches this regex")
    p.add_argument("--support", type=int, default=100)
    p.add_argument("--queries", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jpeg", type=int, default=None, help="re-compress every image at this quality")
    p.add_argument("--no-baseline", action="store_true")
    p.add_argument("--matrix", help="write the target x other AUC matrix as a PNG")
    _common(p)
    p = sub.add_parser("show", help="draw the mean residual spectrum of a profile or a folder")
    p.add_argument("target", help="an enrolled profile name, or a folder of images")
    p.add_argument("-o", "--output", required=True, help="PNG file")
    _common(p)
    p = sub.add_parser("discover", help="cluster unknown images into candidate new generators")
    p.add_argument("sources", nargs="+", metavar="SOURCE",
                   help="folders of images, or a scan's output (JSONL, CSV, Parquet) whose "
                        "unknown rows are taken")
    p.add_argument("-o", "--output", required=True, help="report folder")
    p.add_argument("--method", default="auto", choices=["auto", "hdbscan", "agglomerative"],
                   help="auto: agglomerative cut at the enrolled profiles' spread, hdbscan "
                        "when no profile is enrolled")
    p.add_argument("--min-cluster-size", type=int, default=None,
                   help="smaller groups are reported as noise")
    p.add_argument("--quantile", type=float, default=None,
                   help="agglomerative cut: this quantile of within-profile pair distances")
    p.add_argument("--no-pictures", action="store_true", help="skip contact sheets and spectra")
    _common(p)
    p = sub.add_parser("fit-closed-set", help="fit the (T+1)-way closed/open-set head")
    p.add_argument("real", nargs="+", help="real photos (folders, globs or files) for the rejection class")
    p.add_argument("--profiles", nargs="+", default=None, help="known profiles (default: all enrolled)")
    p.add_argument("--name", default="default")
    p.add_argument("--recon-per-image", type=int, default=2)
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    _common(p)
    p = sub.add_parser("open-set", help="closed/open-set attribution with a fitted head")
    p.add_argument("sources", nargs="+")
    p.add_argument("--name", default="default")
    p.add_argument("--threshold", type=float, default=None, help="min known-class probability")
    _common(p)
    p = sub.add_parser("export", help="write the model's inference graphs (onnx) or TensorRT engines")
    p.add_argument("--format", choices=["onnx", "engine"], default="onnx")
    p.add_argument("--int8", metavar="PHOTOS", default=None,
                   help="onnx: also write int8 (QDQ) graphs calibrated on this folder of real "
                        "photos, what TensorRT's int8 engines are built from (found later beside "
                        "the model without -o, or with the engine option graphs_dir=DIR after "
                        "-o DIR); engine: calibrate on these photos and build int8")
    p.add_argument("--precision", choices=["fp32", "fp16", "int8"], default=None,
                   help="TensorRT engine precision (--format engine; default fp16, int8 with --int8)")
    p.add_argument("-o", "--output", default=None,
                   help="folder (default: onnx beside the model file in engines/<model id>/, "
                        "engine in the TensorRT cache)")
    _common(p)
    p = sub.add_parser("remove", help="delete an enrolled profile")
    p.add_argument("name")
    _common(p)
    p = sub.add_parser("serve", help="HTTP service: attribute, verify, gallery, review page "
                                     "(pip install 'ofa-sdk[serve]')")
    from .serve import add_arguments
    add_arguments(p)
    _common(p)
    return ap


def _attributor(a):
    from .attributor import Attributor
    options = _engine_options(a)
    return Attributor(model=a.model, backend=a.backend, gallery=a.gallery, strict=a.strict,
                      batch_size=a.batch_size, crops=a.crops, small=a.small, rule=a.rule,
                      engine_options=options, max_bytes=a.max_bytes, whiten=a.whiten,
                      profile_quantile=a.profile_quantile, ambiguity_margin=a.ambiguity_margin,
                      choose_head=a.choose_head,
                      verbose=not getattr(a, "no_progress", False) and a.cmd != "serve")


def _fmt(v) -> str:
    if isinstance(v, float):
        return "-" if math.isnan(v) else f"{v:.3f}"
    from .scan_output import clean      # a file name that is not UTF-8 still prints
    return "" if v is None else clean(str(v))


def _table(rows: List[Dict], cols: List[str], out=sys.stdout):
    if not rows:
        print("(no rows)", file=out)
        return
    cells = [[_fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(x[i]) for x in cells)) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths)), file=out)
    print("  ".join("-" * w for w in widths), file=out)
    for x in cells:
        print("  ".join(v.ljust(w) for v, w in zip(x, widths)), file=out)


def _paths(sources):
    from .images import expand_paths
    return list(expand_paths(sources))


def cmd_enroll(a, att) -> int:
    if a.from_cluster is not None:
        if a.sources or a.limit:
            raise ValueError("--from-cluster takes its images from the cluster folder; "
                             "give no SOURCES and no --limit")
        if a.add:
            raise ValueError("--from-cluster makes a new profile from a cluster; --add is not "
                             "supported with it (enroll the cluster under its own name)")
        prof = att.enroll_cluster(a.name, a.from_cluster, overwrite=a.overwrite)
        return _enrolled(a, att, prof)
    if not a.sources:
        print("error: enroll needs SOURCES (folders, globs or files) or --from-cluster DIR",
              file=sys.stderr)
        return 2
    paths = _paths(a.sources)
    if a.limit:
        paths = paths[: a.limit]
    if not paths:
        print(f"error: no images found in {' '.join(a.sources)}", file=sys.stderr)
        return 2
    prof = att.enroll(a.name, paths, overwrite=a.overwrite, add=a.add, jpeg_quality=a.jpeg_quality,
                      rescale=a.rescale,
                      jpeg_variants=parse_variants(a.jpeg_variants, "jpeg", "--jpeg-variants"),
                      rescale_variants=parse_variants(a.rescale_variants, "rescale",
                                                      "--rescale-variants"),
                      resize_kernel=a.resize_kernel)
    return _enrolled(a, att, prof)


def _enrolled(a, att, prof) -> int:
    m = dict(prof.metadata)
    if getattr(a, "add", False) and m.get("added"):     # report this call's images, not the sums
        m.update(m["added"][-1])
    thr = att.profile_threshold(prof.name)
    res = {"name": prof.name, "support": prof.n_support, "images": m["images"],
           "skipped": m["skipped"], "model_id": prof.model_id, "threshold": thr,
           "skipped_examples": m["skipped_examples"]}
    if a.json:
        print(json.dumps(res))
    else:
        verb = "added to" if "at" in m else "enrolled"
        print(f"{verb} {prof.name!r}: {m['used']} images ({prof.n_support} fingerprints in all), "
              f"{m['skipped']} skipped, model {prof.model_id}, threshold {thr:.3f}")
        used = prof.metadata["used"]                    # the whole support, after an add too
        if used < RECOMMENDED_SUPPORT:
            from .decision import FALLBACK_THRESHOLD, MIN_PROFILE_IMAGES
            print(f"note: {used} support images; its threshold is "
                  + (f"a fixed {FALLBACK_THRESHOLD} below {MIN_PROFILE_IMAGES} images"
                     if used < MIN_PROFILE_IMAGES else "loose")
                  + f" (unknown generators are accepted more often); {RECOMMENDED_SUPPORT}+ recommended",
                  file=sys.stderr)
        for s in m["skipped_examples"]:
            print(f"  skipped {s}", file=sys.stderr)
    return 1 if m["skipped"] else 0


def _declared(r) -> str:
    """A table cell for what a file declares about its origin ("" when nothing)."""
    p = r.provenance or {}
    bits = [p.get("generator") or "", p.get("source_type") or ""]
    if p.get("c2pa"):
        bits.append("C2PA " + {True: "valid", False: "INVALID", None: "unchecked"}[p["c2pa"].get("valid")])
    return ", ".join(b for b in bits if b)


def cmd_verify(a, att) -> int:
    # the per-item view of verify: each image's score for one profile, no decision applied
    res = att.attribute(_paths(a.sources), profiles=[a.against])
    rows = [{"source": r.source, "score": r.scores.get(a.against) if r.ok else None,
             "typicality": r.typicality, "error": r.error, "note": r.note,
             "provenance": r.provenance} for r in res]
    if a.json:
        print(json.dumps(rows))
    else:
        _table([{**r, "score": float("nan") if r["score"] is None else r["score"],
                 "declared": _declared(x)} for r, x in zip(rows, res)],
               ["source", "score", "typicality", "declared", "error"])
    return 1 if any(r["error"] for r in rows) else 0


def cmd_attribute(a, att) -> int:
    res = att.attribute(_paths(a.sources), threshold=a.threshold)
    rows = [r.to_dict() for r in res]
    if a.json:
        print(json.dumps(rows))
    else:
        _table([{**r, "score": r["score"] if r["score"] is not None else float("nan"),
                 "declared": _declared(x)} for r, x in zip(rows, res)],
               ["source", "label", "score", "typicality", "declared", "error"])
        thr = att.threshold if a.threshold is None else a.threshold
        if thr == "profile":
            thr = "per profile (" + ", ".join(f"{n} {att.profile_threshold(n):.3f}"
                                              for n in att.gallery.names()) + ")"
        else:
            thr = f"{thr:.3f}"
        print(f"threshold {thr}; profiles: {', '.join(att.gallery.names()) or '(none)'}")
    return 1 if any(not r.ok for r in res) else 0


def _scan_ray(a) -> int:
    from .distributed import scan_dataset
    if a.retry_errors:
        raise SystemExit("ofa-sdk scan: --retry-errors is for the single-process scan; the Ray "
                         "scan skips every source already in its output folder")
    s = scan_dataset(a.sources, a.output, model=a.model, gallery=a.gallery, threshold=a.threshold,
                     crops=a.crops, small=a.small, backend=a.backend, address=a.address,
                     batch_size=a.batch_size, concurrency=a.concurrency, num_gpus=a.num_gpus,
                     rule=a.rule, whiten=a.whiten, max_bytes=a.max_bytes,
                     engine_options=_engine_options(a), allow_mismatch=a.allow_mismatch,
                     profile_quantile=a.profile_quantile, ambiguity_margin=a.ambiguity_margin,
                     choose_head=a.choose_head)
    print(json.dumps(s) if a.json else f"wrote {s['written']} rows to {s['output']} "
          f"({s['errors']} errors; {s['skipped_already_done']} already done)")
    return 1 if s["errors"] else 0


def cmd_scan(a, att) -> int:
    """Stream attributions to a JSONL, CSV or Parquet file through ``Attributor.scan(...,
    output=)`` (:mod:`ofa_sdk.scan_output`: escaped names, neutralised CSV cells, resume and
    repair). Resumable: rows already in the file are skipped, a torn last row is cut off and
    redone, damaged lines are kept and reported; each row is one complete line written with one
    unbuffered write, so an interrupted scan (Ctrl-C, SIGTERM, SIGKILL) loses no written row and
    leaves no partial one. Ctrl-C or SIGTERM ends it promptly wherever it is (waiting on a
    decode, inside an engine call, between rows) with exit status 130."""
    if a.engine == "ray":
        return _scan_ray(a)
    from .scan_output import ScanInterrupted
    try:
        s = att.scan(a.sources, a.threshold, progress=not a.no_progress, output=a.output,
                     allow_mismatch=a.allow_mismatch, retry_errors=a.retry_errors)
    except ScanInterrupted as e:
        s = e.summary
    if a.json:
        print(json.dumps(s.to_dict(provenance=a.summary)))
    else:
        print(f"wrote {s.written} rows to {a.output} ({s.errors} errors; "
              f"{s.skipped_already_done} rows already there were kept)"
              + ("; interrupted: rerun the same command to resume" if s.interrupted else ""))
        rep = s.repaired
        if rep.get("torn_bytes_cut"):
            print(f"repaired: cut a torn last row ({rep['torn_bytes_cut']} bytes); its file was "
                  f"scanned again")
        if rep.get("damaged_lines"):
            print(f"kept {len(rep['damaged_lines'])} damaged line(s) as they were (line "
                  f"{', '.join(map(str, rep['damaged_lines'][:10]))}"
                  f"{', ...' if len(rep['damaged_lines']) > 10 else ''}); their files were "
                  f"scanned again")
        if a.summary:
            p = s.provenance
            print(f"provenance: {p['declared']} rows declare a generator; where a profile "
                  f"was attributed too, {p['agree']} agree and {p['disagree']} disagree")
    if s.interrupted:
        return 130
    return 1 if s.errors else 0


def cmd_info(a, att) -> int:
    info = att.info()
    info["profiles"] = att.profiles()
    if a.json:
        print(json.dumps(info, default=str))
    else:
        for k in ("model_id", "model_path", "config", "crop", "backend", "backend_note",
                  "rule", "threshold", "gallery"):
            print(f"{k:12s} {info[k]}")
        _table([{"name": p["name"], "support": p["n_support"], "model_id": p["model_id"]}
                for p in info["profiles"]], ["name", "support", "model_id"])
    return 0


def cmd_remove(a, att) -> int:
    att.gallery.remove(a.name)
    print(json.dumps({"removed": a.name}) if a.json else f"removed {a.name!r}")
    return 0


def cmd_eval(a, att) -> int:
    from .evaluation import datasets
    from .evaluation.protocol import format_table
    from .evaluation.runner import evaluate
    if a.annotations:
        classes = datasets.read_annotations(a.annotations, a.root)
    else:
        classes = datasets.discover(a.root, a.exclude_real, a.include)
    if len(classes) < 2:
        raise ValueError(f"evaluation needs at least 2 classes, found {sorted(classes)}")
    res = evaluate(att, classes, a.support, a.queries, a.seed, a.jpeg, not a.no_baseline)
    skipped = {c: len(v) for c, v in res["skipped"].items()}
    if a.matrix:
        from .evaluation.plots import auc_matrix_png
        auc_matrix_png(res["ours"].matrix, a.matrix)
    if a.json:
        out = {"ours": res["ours"].to_dict(), "counts": res["counts"], "skipped": res["skipped"],
               "skipped_classes": res["skipped_classes"],
               "support": a.support, "queries": a.queries, "seed": a.seed, "jpeg": a.jpeg,
               "crops": att.crops, "rule": att.rule.name, "model_id": att.model_id}
        if "baseline" in res:
            out["baseline"] = res["baseline"].to_dict()
            out["baseline_highpass"] = res["baseline:highpass"].to_dict()
        print(json.dumps(out))
    else:
        print(format_table(res["ours"], f"image-to-model AUC (%), rule {att.rule.name}, support "
                                        f"{a.support}, queries {a.queries}, seed {a.seed}"))
        for key, what in (("baseline", "denoiser-residual spectrum cosine, no learned extractor"),
                          ("baseline:highpass", "fixed high-pass residual spectrum cosine, nothing learned")):
            if key in res:
                b = res[key]
                print(f"baseline ({what}): mean 1v1 "
                      f"{100 * b.mean_1v1:.2f}, 1-vs-rest {100 * b.mean_1vrest:.2f}")
        print(f"images used: {res['counts']}; skipped (empty/corrupt/too small): {skipped or 0}")
        if res["skipped_classes"]:
            print(f"classes skipped (fewer than 2 usable images): {', '.join(res['skipped_classes'])}")
    return 0


def cmd_show(a, att) -> int:
    from .evaluation.plots import spectrum_png
    target = Path(a.target)
    if target.is_dir():
        rows = list(att.embed_stream(_paths([target]), spectra=True))
        good = [e.spectrum for e in rows if e.ok]
        n_bad = len(rows) - len(good)
        if not good:
            raise ValueError(f"no usable images in {target}")
        spec, title = np.mean(good, axis=0), f"{target.name}: {len(good)} images"
    else:
        prof = att.gallery.get(a.target, model_id=att.bundle.ids)
        if prof.spectrum is None:
            raise ValueError(f"profile {a.target!r} has no stored spectrum; re-enroll it")
        spec, title, n_bad = prof.spectrum, f"{prof.name}: {prof.metadata.get('used')} images", 0
    spectrum_png(spec, a.output, title)
    print(json.dumps({"output": a.output, "skipped": n_bad}) if a.json else f"wrote {a.output}")
    return 0


def cmd_discover(a, att) -> int:
    from .discovery import DEFAULT_MIN_CLUSTER_SIZE, DEFAULT_QUANTILE, is_scan_output
    for s in a.sources:
        if not any(ch in s for ch in "*?[") and not Path(s).exists():
            raise FileNotFoundError(f"discover: {s} does not exist")
    scans = [s for s in a.sources if is_scan_output(s)]
    if scans and len(a.sources) > 1:
        raise ValueError(f"discover takes one scan output or image folders, not both: {a.sources}")
    items = a.sources[0] if scans else _paths(a.sources)
    if not scans and not items:
        raise ValueError(f"no images found in {' '.join(a.sources)}")
    res = att.discover(items, a.output, pictures=not a.no_pictures,
                       min_cluster_size=DEFAULT_MIN_CLUSTER_SIZE if a.min_cluster_size is None
                       else a.min_cluster_size,
                       quantile=DEFAULT_QUANTILE if a.quantile is None else a.quantile,
                       method=a.method)
    s = res.summary()
    if a.json:
        print(json.dumps({k: s[k] for k in ("images", "clusters", "noise", "method", "skipped")}
                         | {"output": a.output, "cluster_list": s["cluster_list"]}))
    else:
        _table([{"cluster": f"cluster-{c['id']}", "size": c["size"], "cohesion": c["cohesion"],
                 "own_cosine": c["own_cosine"], "nearest": c["nearest_profile"],
                 "score": c["nearest_score"]} for c in s["cluster_list"]],
               ["cluster", "size", "cohesion", "own_cosine", "nearest", "score"])
        print(f"{s['images']} images: {s['clusters']} clusters, {s['noise']} noise "
              f"({res.method}); {len(res.skipped)} unusable; report in {a.output}")
        for e in res.skipped[:10]:
            print(f"  skipped {e}", file=sys.stderr)
        if s["clusters"]:
            print(f"look at {a.output}/cluster-<id>/contact.png; enroll one with "
                  f"'ofa-sdk enroll NAME --from-cluster {a.output}/cluster-<id>'")
    return 1 if res.skipped else 0


def cmd_fit_closed_set(a, att) -> int:
    from .closed_set import fit_closed_set
    stats = fit_closed_set(att, _paths(a.real), a.profiles, name=a.name,
                           recon_per_image=a.recon_per_image, epochs=a.epochs, seed=a.seed)
    print(json.dumps(stats) if a.json else
          f"fit closed-set head {a.name!r}: {stats['counts']}, train accuracy {stats['train_acc']:.3f}")
    return 0


def cmd_open_set(a, att) -> int:
    from .closed_set import open_set
    res = open_set(att, _paths(a.sources), a.name, a.threshold)
    rows = [r.to_dict() for r in res]
    if a.json:
        print(json.dumps(rows))
    else:
        _table([{**r, "known_prob": float("nan") if r["known_prob"] is None else r["known_prob"]}
                for r in rows], ["source", "label", "predicted", "known_prob", "error"])
    return 1 if any(not r.ok for r in res) else 0


def cmd_export(a, att) -> int:
    if a.format == "onnx" and a.precision:
        raise ValueError("--precision is for --format engine (ONNX graphs are float, plus int8 "
                         "ones with --int8 PHOTOS)")
    if a.format == "engine" and a.int8 and a.precision not in (None, "int8"):
        raise ValueError(f"--int8 PHOTOS calibrates an int8 engine, not --precision {a.precision}")
    if a.format == "onnx":
        from .backends.graphs import export_graphs
        out = Path(a.output) if a.output else Path(att.bundle.path).parent / "engines" / att.model_id
        graphs = export_graphs(att.bundle, out)
        paths = {k: str(v) for k, v in graphs.items()}
        if a.int8:
            from .backends.quantize import calibration_crops, quantize_graphs
            crops = calibration_crops(a.int8, att.bundle.config.crop)
            paths.update({f"{k}.int8": str(v) for k, v in quantize_graphs(graphs, crops, out).items()})
    else:
        from .backends.tensorrt import TensorRTEngine
        precision = a.precision or ("int8" if a.int8 else "fp16")
        eng = TensorRTEngine(att.bundle, cache_dir=a.output, precision=precision,
                             calibration=a.int8)
        paths = {k: str(v) for k, v in eng.paths.items()}
    res = {"format": a.format, "model_id": att.model_id, "files": paths}
    print(json.dumps(res) if a.json else "\n".join(f"{k}: {v}" for k, v in paths.items()))
    return 0


def cmd_serve(a, att) -> int:
    from .serve import serve
    return serve(a, lambda: _attributor(a))   # loaded by the server, which answers /healthz meanwhile


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    from .gallery import GalleryError
    if a.cmd == "export":
        a.backend = "torch"   # exporting needs the reference model, not a compiled engine
    try:
        att = None if getattr(a, "engine", "local") == "ray" or a.cmd == "serve" else _attributor(a)
        return {"enroll": cmd_enroll, "verify": cmd_verify, "attribute": cmd_attribute,
                "scan": cmd_scan, "info": cmd_info, "remove": cmd_remove, "eval": cmd_eval,
                "show": cmd_show, "discover": cmd_discover, "fit-closed-set": cmd_fit_closed_set,
                "open-set": cmd_open_set, "export": cmd_export, "serve": cmd_serve}[a.cmd](a, att)
    except (GalleryError, FileNotFoundError, ValueError, RuntimeError) as e:
        msg = str(e)
        print(json.dumps({"error": msg}) if getattr(a, "json", False) else f"error: {msg}",
              file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
