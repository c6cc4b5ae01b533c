"""Discovery: group the images no enrolled profile claimed into candidate new generators.

A scan answers "unknown" for images of generators the gallery does not hold. This module takes
their crop-averaged unit fingerprints and clusters them, so that a person can see whether the
unknowns are one new generator or many, look at each group, and enroll one as a profile:

    res = discover(fingerprints, sources, reference=profile_fingerprints)
    write_report(res, "found/")              # summary.json, cluster-<id>/, noise.json
    # then: Attributor.enroll_cluster("new-gen", "found/cluster-0")

Clustering runs with scikit-learn (the ``discover`` extra), in a feature space given by
``transform`` (fingerprints -> features, Euclidean distance there is the metric). The default
is the unit fingerprint itself, where Euclidean distance is a monotone function of the cosine
the prototype score rule uses. A score rule may define its own metric: ``Attributor.discover``
asks the rule for ``feature_map(snapshot)``, a callable of that contract, and uses it when
present. No shipped rule defines one: the Gaussian rule's whitening by the profiles' pooled
within-profile covariance was measured as a clustering geometry and over-splits (mean ARI 0.29-0.44
against 0.61 in the cosine space; benchmarks/RESULTS.md, "Discovery"), so discovery clusters in the
cosine geometry whatever the rule.

Two methods: ``"hdbscan"`` (density based: finds the number of clusters and calls sparse points
noise) and ``"agglomerative"`` (average linkage cut at a distance derived from the enrolled
profiles' own spread: how far apart two images of one known generator typically are). Which is
the default, and why, is measured in benchmarks/RESULTS.md ("Discovery"). Above ``exact_limit``
images the clustering is two-stage: MiniBatchKMeans to micro-clusters, the method on their
centres, each image taking its micro-cluster's label, so time and memory stay bounded.

Every input image is in the result: in exactly one cluster, or in ``noise``.
"""
from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

METHODS = ("auto", "hdbscan", "agglomerative")
# "auto" resolves to this; chosen by measurement (benchmarks/RESULTS.md, "Discovery")
DEFAULT_METHOD = "agglomerative"
# the quantile of within-profile pairwise distances that average linkage is cut at: the best
# mean ARI over both development sets, and the best worst case (benchmarks/RESULTS.md, "Discovery")
DEFAULT_QUANTILE = 0.8
DEFAULT_MIN_CLUSTER_SIZE = 5
# above this many images the clustering is two-stage (micro-clusters first)
EXACT_LIMIT = 5000
MICRO_CLUSTERS = 2000
N_EXAMPLES = 8          # representatives and outliers listed per cluster
SUMMARY_VERSION = 1
# two-stage scheme, in units of the enrolled profiles' median spread: a micro-cluster whose RMS
# distance to its centre exceeds LOOSE is noise as a whole; an image farther than FAR from its
# micro-centre is noise
LOOSE = 1.5
FAR = 2.0

Transform = Callable[[np.ndarray], np.ndarray]


def _sklearn():
    try:
        import sklearn.cluster as cl
    except ImportError:
        raise ImportError("discovery needs scikit-learn: pip install 'ofa-sdk[discover]'") from None
    return cl


def unit_features(x: np.ndarray) -> np.ndarray:
    """The default feature map: each fingerprint scaled to unit length (Euclidean distance
    between unit vectors is sqrt(2 - 2 cos), so it orders pairs as the cosine does)."""
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _check(fingerprints) -> np.ndarray:
    x = np.asarray(fingerprints, np.float64)
    if x.ndim != 2:
        raise ValueError(f"fingerprints must be an (N, d) array, got shape {x.shape}")
    bad = ~np.isfinite(x).all(1)
    if bad.any():
        raise ValueError(f"fingerprints rows {np.flatnonzero(bad)[:5].tolist()} are not finite "
                         f"(unusable images must be left out, not passed as NaN rows)")
    return x


def _features(x: np.ndarray, transform: Optional[Transform]) -> np.ndarray:
    f = np.asarray((transform or unit_features)(x), np.float64)
    if f.ndim != 2 or len(f) != len(x):
        raise ValueError(f"transform returned shape {f.shape} for {len(x)} fingerprints")
    return f


def loo_distances(f: np.ndarray) -> np.ndarray:
    """(n,) each row's Euclidean distance to the mean of the *other* rows (n >= 2): how far an
    image sits from the group it would be scored against, the same question a profile's
    leave-one-out scores answer."""
    n = len(f)
    if n < 2:
        return np.zeros(n)
    rest = (f.sum(0, keepdims=True) - f) / (n - 1)
    return np.linalg.norm(f - rest, axis=1)


def loo_cosines(x: np.ndarray) -> np.ndarray:
    """(n,) cosine of each unit fingerprint to the unit mean of the others: the prototype
    rule's leave-one-out score, on its raw scale."""
    from .scoring import leave_one_out_cosines
    return leave_one_out_cosines(unit_features(x), 1) if len(x) >= 2 else np.ones(len(x))


def _pair_distances(f: np.ndarray, limit: int = 400, seed: int = 0) -> np.ndarray:
    """Distances between distinct rows (at most ``limit`` rows, sampled)."""
    if len(f) > limit:
        f = f[np.random.default_rng(seed).choice(len(f), limit, replace=False)]
    sq = (f * f).sum(1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * f @ f.T, 0)
    return np.sqrt(d2[np.triu_indices(len(f), 1)])


@dataclass
class Reference:
    """How the enrolled profiles' own images spread, in the clustering's feature space: the
    scale cluster cohesion is reported on, and where the agglomerative cut comes from."""
    names: List[str]
    spread: List[float]            # per profile: RMS leave-one-out distance of its images
    own_cosine: List[float]        # per profile: mean leave-one-out cosine (prototype rule)
    images: List[int]
    pair_quantiles: Dict[str, float]   # pooled within-profile pairwise distances, by quantile

    @property
    def median_spread(self) -> Optional[float]:
        return float(np.median(self.spread)) if self.spread else None

    def cut(self, quantile: float) -> float:
        return self.pair_quantiles[f"{quantile:g}"]


def reference_from(profiles: Dict[str, np.ndarray], transform: Optional[Transform] = None,
                   quantiles: Sequence[float] = (0.5, 0.75, 0.8, 0.85, 0.9, 0.95, 0.99)
                   ) -> Optional[Reference]:
    """The :class:`Reference` of per-profile (n_i, d) per-image fingerprints; profiles with
    fewer than 3 images are left out (their spread cannot be told); None when none is left."""
    names, spread, cos, imgs, pairs = [], [], [], [], []
    for name, x in profiles.items():
        x = _check(x)
        if len(x) < 3:
            continue
        f = _features(x, transform)
        names.append(name)
        spread.append(float(np.sqrt(np.mean(loo_distances(f) ** 2))))
        cos.append(float(loo_cosines(x).mean()))
        imgs.append(len(x))
        pairs.append(_pair_distances(f))
    if not names:
        return None
    pooled = np.concatenate(pairs)
    qs = sorted(set(quantiles) | {DEFAULT_QUANTILE})
    return Reference(names, spread, cos, imgs, {f"{q:g}": float(np.quantile(pooled, q)) for q in qs})


@dataclass
class Cluster:
    """One group of images: ``members`` are indices into the input, nearest the centre first."""
    id: int
    members: List[int]
    spread: float                    # RMS leave-one-out distance in feature space
    cohesion: Optional[float]        # spread / the enrolled profiles' median spread (1: as tight)
    own_cosine: float                # mean leave-one-out cosine (prototype rule's raw scale)
    nearest_profile: Optional[str] = None
    # the profile whose scores of the members are highest (median), and that median: scored
    # from the members, since the cluster's mean fingerprint reads higher than any member
    nearest_score: Optional[float] = None
    nearest_threshold: Optional[float] = None
    representatives: List[int] = field(default_factory=list)
    outliers: List[int] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.members)


@dataclass
class Discovery:
    """The result of :func:`discover`: every input in one cluster or in ``noise``."""
    sources: List[str]
    labels: np.ndarray               # (N,) cluster id, -1 for noise
    clusters: List[Cluster]
    noise: List[int]
    method: str
    params: Dict
    reference: Optional[Reference] = None
    timings: Dict = field(default_factory=dict)
    skipped: List[str] = field(default_factory=list)   # inputs that could not be fingerprinted

    def summary(self) -> Dict:
        """A JSON-ready description (what ``summary.json`` holds)."""
        src = self.sources

        def row(c: Cluster) -> Dict:
            d = {k: v for k, v in asdict(c).items() if k not in ("members", "representatives",
                                                                  "outliers")}
            d.update(size=c.size, representatives=[src[i] for i in c.representatives],
                     outliers=[src[i] for i in c.outliers], folder=f"cluster-{c.id}")
            return d

        ref = None
        if self.reference is not None:
            ref = asdict(self.reference)
            ref["median_spread"] = self.reference.median_spread
        return {"version": SUMMARY_VERSION, "created": time.time(), "method": self.method,
                "params": self.params, "images": len(src), "clusters": len(self.clusters),
                "noise": len(self.noise), "skipped": self.skipped, "reference": ref,
                "timings": self.timings, "cluster_list": [row(c) for c in self.clusters],
                "noise_sources": [src[i] for i in self.noise]}


# -- clustering ------------------------------------------------------------------------------------

def _hdbscan(f: np.ndarray, min_cluster_size: int, min_samples: Optional[int] = None
             ) -> np.ndarray:
    """HDBSCAN labels. It has no absolute scale: it never answers "one cluster" (all images of
    one generator come back split or as noise) and can find groups in pure noise. Its
    ``cluster_selection_epsilon``, which would give it the profiles' scale, fails on NumPy 2
    in the scikit-learn releases this was written against (scikit-learn issue 33219), so it is
    not used; measured in benchmarks/RESULTS.md, "Discovery"."""
    cl = _sklearn()
    return cl.HDBSCAN(min_cluster_size=min_cluster_size, min_samples=min_samples,
                      copy=True).fit_predict(f)


def _cluster_exact(f: np.ndarray, method: str, min_cluster_size: int,
                   cut: Optional[float]) -> np.ndarray:
    """Labels (-1 noise) of every row of ``f``, before the minimum-size rule."""
    cl = _sklearn()
    if len(f) < 2:
        return np.full(len(f), -1)
    if method == "hdbscan":
        if len(f) < max(2, min_cluster_size):
            return np.full(len(f), -1)
        return _hdbscan(f, max(2, min_cluster_size))
    return cl.AgglomerativeClustering(n_clusters=None, distance_threshold=cut, linkage="average",
                                      metric="euclidean").fit_predict(f)


def _two_stage(f: np.ndarray, method: str, min_cluster_size: int, cut: Optional[float],
               micro: int, seed: int, radius: Optional[float], timings: Dict) -> np.ndarray:
    """MiniBatchKMeans to ``micro`` micro-clusters, ``method`` on their centres; an image takes
    its micro-cluster's label, unless it lies farther than ``radius`` from that centre (noise).
    A micro-cluster HDBSCAN leaves alone keeps its images together when it is big enough and as
    tight as ``radius``: a small generator can fall into one micro-cluster."""
    cl = _sklearn()
    t = time.perf_counter()
    k = int(min(micro, max(2, len(f) // 2)))
    km = cl.MiniBatchKMeans(n_clusters=k, batch_size=4096, n_init=1, random_state=seed,
                            max_iter=50, max_no_improvement=5).fit(f)
    lab, centres = km.labels_, km.cluster_centers_
    dist = np.linalg.norm(f - centres[lab], axis=1)
    counts = np.bincount(lab, minlength=k)
    used = np.flatnonzero(counts)
    if radius is not None:
        # a micro-cluster looser than a known generator is not one: its images are noise, and
        # its centre (pulled towards the middle of the space) must not seed a cluster there
        rms = np.sqrt(np.bincount(lab, dist ** 2, minlength=k) / np.maximum(counts, 1))
        used = used[rms[used] <= LOOSE * radius]
    timings["micro_s"] = time.perf_counter() - t
    t = time.perf_counter()
    top = np.full(k, -1)
    if method == "hdbscan":
        got = (_hdbscan(centres[used], 2, min_samples=1) if len(used) >= 2
               else np.full(len(used), -1))
        top[used] = got
        nxt = got.max() + 1 if len(got) else 0
        for u in used[got < 0]:
            inside = dist[lab == u]
            if counts[u] >= min_cluster_size and (radius is None or np.median(inside) <= radius):
                top[u], nxt = nxt, nxt + 1
    else:
        top[used] = _cluster_exact(centres[used], method, min_cluster_size, cut) \
            if len(used) >= 2 else 0
    timings["centres_s"] = time.perf_counter() - t
    out = top[lab]
    if radius is not None:
        out[dist > FAR * radius] = -1
    return out


def _relabel(labels: np.ndarray, min_cluster_size: int) -> np.ndarray:
    """Clusters below the minimum size become noise; ids renumbered 0.. by size, largest
    first (ties: the one whose first member comes first)."""
    out = np.full(len(labels), -1)
    ok = labels >= 0
    if not ok.any():
        return out
    counts = np.bincount(labels[ok])
    first = np.full(len(counts), len(labels))
    np.minimum.at(first, labels[ok], np.flatnonzero(ok))
    ids = [c for c in np.flatnonzero(counts >= min_cluster_size)]
    ids.sort(key=lambda c: (-counts[c], first[c]))
    remap = np.full(len(counts), -1)
    remap[ids] = np.arange(len(ids))
    out[ok] = remap[labels[ok]]
    return out


def discover(fingerprints, sources: Optional[Sequence[str]] = None, *,
             transform: Optional[Transform] = None, method: str = "auto",
             min_cluster_size: int = DEFAULT_MIN_CLUSTER_SIZE,
             reference: Optional[Reference] = None, quantile: float = DEFAULT_QUANTILE,
             distance: Optional[float] = None,
             score_fn: Optional[Callable[[np.ndarray], np.ndarray]] = None,
             profile_names: Sequence[str] = (), thresholds: Sequence[float] = (),
             exact_limit: int = EXACT_LIMIT, micro_clusters: int = MICRO_CLUSTERS,
             seed: int = 0) -> Discovery:
    """Cluster (N, d) crop-averaged fingerprints of unattributed images.

    ``sources``: a name per row (default ``#i``). ``transform``: the feature map (default: unit
    fingerprints, cosine). ``method``: "hdbscan", "agglomerative" or "auto"
    (:data:`DEFAULT_METHOD`; agglomerative needs a cut, so without a reference or ``distance``
    auto falls back to hdbscan). ``reference``: the enrolled profiles' spread
    (:func:`reference_from`), giving the cut (the ``quantile`` of their within-profile pairwise
    distances; ``distance`` overrides it) and the cohesion scale. Clusters smaller than
    ``min_cluster_size`` images become noise. ``score_fn`` maps (n, d) fingerprints to (n, P)
    scores against ``profile_names`` (with their ``thresholds``), for each cluster's nearest
    profile."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if min_cluster_size < 2:
        raise ValueError(f"min_cluster_size must be >= 2, got {min_cluster_size!r}")
    if not 0 < quantile < 1:
        raise ValueError(f"quantile must be in (0, 1), got {quantile!r}")
    t0 = time.perf_counter()
    x = _check(fingerprints) if len(fingerprints) else np.zeros((0, 1))
    n = len(x)
    src = [f"#{i}" for i in range(n)] if sources is None else [str(s) for s in sources]
    if len(src) != n:
        raise ValueError(f"{len(src)} sources for {n} fingerprints")
    cut = distance
    if cut is None and reference is not None:
        if f"{quantile:g}" not in reference.pair_quantiles:
            raise ValueError(f"the reference has no {quantile:g} quantile; "
                             f"it has {sorted(reference.pair_quantiles)}")
        cut = reference.cut(quantile)
    chosen = method
    if method == "auto":
        chosen = DEFAULT_METHOD if cut is not None else "hdbscan"
    if chosen == "agglomerative" and cut is None:
        raise ValueError("agglomerative clustering needs a cut: enroll profiles (their spread "
                         "gives it), pass distance=, or use method='hdbscan'")
    params = {"method": chosen, "min_cluster_size": min_cluster_size, "quantile": quantile,
              "distance": cut, "exact_limit": exact_limit, "micro_clusters": micro_clusters,
              "seed": seed, "feature": getattr(transform, "__name__", None) or "unit (cosine)",
              "two_stage": n > exact_limit}
    timings: Dict = {}
    if n == 0:
        return Discovery(src, np.zeros(0, int), [], [], chosen, params, reference, timings)
    f = _features(x, transform)
    timings["features_s"] = time.perf_counter() - t0
    t = time.perf_counter()
    if n > exact_limit:
        # an image farther from its micro-centre than a known generator's images ever sit from
        # their profile's centre fits no cluster
        radius = reference.median_spread if reference is not None else None
        raw = _two_stage(f, chosen, min_cluster_size, cut, micro_clusters, seed, radius, timings)
    else:
        raw = _cluster_exact(f, chosen, min_cluster_size, cut)
    labels = _relabel(raw, min_cluster_size)
    timings["cluster_s"] = time.perf_counter() - t
    t = time.perf_counter()
    clusters = [_describe(c, np.flatnonzero(labels == c), x, f, reference, score_fn,
                          list(profile_names), list(thresholds))
                for c in range(labels.max() + 1 if n else 0)]
    timings["describe_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - t0
    return Discovery(src, labels, clusters, np.flatnonzero(labels < 0).tolist(), chosen, params,
                     reference, timings)


def _describe(cid: int, idx: np.ndarray, x: np.ndarray, f: np.ndarray,
              reference: Optional[Reference], score_fn, names: List[str],
              thresholds: List[float]) -> Cluster:
    fm = f[idx]
    centre = fm.mean(0)
    d = np.linalg.norm(fm - centre, axis=1)
    order = np.argsort(d, kind="stable")
    members = idx[order].tolist()
    spread = float(np.sqrt(np.mean(loo_distances(fm) ** 2)))
    ref = reference.median_spread if reference is not None else None
    c = Cluster(cid, members, spread, spread / ref if ref else None,
                float(loo_cosines(x[idx]).mean()),
                representatives=members[:N_EXAMPLES],
                outliers=members[::-1][:min(N_EXAMPLES, max(0, len(members) - N_EXAMPLES))])
    if score_fn is not None and names:
        sample = x[idx[order[:256]]]                       # the members nearest the centre
        med = np.median(np.asarray(score_fn(sample), np.float64), axis=0)
        best = int(np.argmax(med))
        c.nearest_profile, c.nearest_score = names[best], float(med[best])
        c.nearest_threshold = float(thresholds[best]) if best < len(thresholds) else None
    return c


# -- the output folder ------------------------------------------------------------------------------

def contact_sheet(sources: Sequence[str], path, title: str = "", outliers: Sequence[str] = (),
                  thumb: int = 96, cols: int = 8, max_pixels: Optional[int] = None) -> Path:
    """A grid of thumbnails of ``sources`` (then ``outliers``, framed in red, on rows of their
    own) with ``title`` above, saved as PNG. An unreadable source is a grey tile with a cross:
    a contact sheet never fails on one bad image."""
    from PIL import Image, ImageDraw

    from . import images as imio
    pad, head = 4, 22
    tiles = [(s, False) for s in sources] + [(s, True) for s in outliers]
    n_main = math.ceil(len(sources) / cols) if sources else 0
    n_out = math.ceil(len(outliers) / cols) if outliers else 0
    rows = max(1, n_main + n_out)
    sep = 16 if outliers else 0
    w = cols * (thumb + pad) + pad
    h = head + rows * (thumb + pad) + pad + sep
    sheet = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((pad, 5), title[:110], fill="black")
    for i, (s, is_out) in enumerate(tiles):
        j = i if not is_out else i - len(sources)
        r = (j // cols) + (n_main if is_out else 0)
        x0 = pad + (j % cols) * (thumb + pad)
        y0 = head + r * (thumb + pad) + (sep if is_out else 0)
        try:
            a = imio.to_rgb(s, max_pixels) if max_pixels else imio.to_rgb(s)
            im = Image.fromarray(a)
            scale = thumb / max(im.width, im.height)
            im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))),
                           Image.NEAREST if scale > 1 else Image.LANCZOS)
            sheet.paste(im, (x0 + (thumb - im.width) // 2, y0 + (thumb - im.height) // 2))
        except Exception:
            draw.rectangle([x0, y0, x0 + thumb - 1, y0 + thumb - 1], fill=(200, 200, 200))
            draw.line([x0, y0, x0 + thumb - 1, y0 + thumb - 1], fill=(120, 120, 120))
            draw.line([x0, y0 + thumb - 1, x0 + thumb - 1, y0], fill=(120, 120, 120))
        if is_out:
            draw.rectangle([x0 - 2, y0 - 2, x0 + thumb + 1, y0 + thumb + 1], outline=(220, 0, 0),
                           width=2)
    if outliers:
        draw.text((pad, head + n_main * (thumb + pad) + 1), "outliers (farthest from the centre)",
                  fill=(200, 0, 0))
    path = Path(path)
    sheet.save(path)
    return path


SheetSize = 32   # thumbnails of a cluster's contact sheet (nearest the centre), besides outliers


def write_report(res: Discovery, out, spectrum_fn: Optional[Callable] = None,
                 pictures: bool = True, sheet_size: int = SheetSize) -> Path:
    """Write ``res`` to folder ``out``: ``summary.json``, ``noise.json`` and per cluster
    ``cluster-<id>/members.json`` with, when ``pictures``, ``contact.png`` (the members nearest
    the centre, then the outliers) and ``spectrum.png`` (the mean residual spectrum, as ``ofa-sdk
    show`` draws it, from ``spectrum_fn(sources) -> (spectrum, images used)`` or None)."""
    from .evaluation.plots import spectrum_png
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    src = res.sources
    summary = res.summary()
    for c, row in zip(res.clusters, summary["cluster_list"]):
        d = out / f"cluster-{c.id}"
        d.mkdir(exist_ok=True)
        for old in ("contact.png", "spectrum.png"):
            (d / old).unlink(missing_ok=True)
        meta = {"cluster": c.id, "size": c.size, "summary": str((out / "summary.json").resolve()),
                "method": res.method, "sources": [src[i] for i in c.members]}
        (d / "members.json").write_text(json.dumps(meta, indent=1))
        row["pictures"] = {}
        if not pictures:
            continue
        title = (f"cluster {c.id}: {c.size} images, cohesion "
                 + (f"{c.cohesion:.2f}" if c.cohesion is not None else "-")
                 + (f", nearest {c.nearest_profile} {c.nearest_score:.2f}"
                    if c.nearest_profile else ""))
        main = c.members[:min(sheet_size, c.size - len(c.outliers))]
        contact_sheet([src[i] for i in main], d / "contact.png", title,
                      [src[i] for i in c.outliers])
        row["pictures"]["contact"] = "contact.png"
        got = spectrum_fn([src[i] for i in c.members[:sheet_size]]) if spectrum_fn else None
        if got is not None:
            spec, used = got
            spectrum_png(spec, d / "spectrum.png", f"cluster {c.id}: {used} images")
            row["pictures"]["spectrum"] = "spectrum.png"
    (out / "noise.json").write_text(json.dumps([src[i] for i in res.noise], indent=1))
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return out


def read_cluster(cluster_dir) -> Dict:
    """The ``members.json`` of a cluster folder written by :func:`write_report`."""
    p = Path(cluster_dir)
    f = p / "members.json"
    if not f.is_file():
        raise FileNotFoundError(f"{p} is not a cluster folder of 'ofa-sdk discover' "
                                f"(no members.json); expected DIR/cluster-<id>")
    try:
        meta = json.loads(f.read_text())
        sources = meta["sources"]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{f} is not a discovery members file: {e}") from None
    if not isinstance(sources, list) or not all(isinstance(s, str) for s in sources):
        raise ValueError(f"{f}: 'sources' must be a list of paths")
    return meta


# -- scan outputs ------------------------------------------------------------------------------------

SCAN_SUFFIXES = (".jsonl", ".ndjson", ".csv", ".parquet", ".pq")


def is_scan_output(path) -> bool:
    """Whether ``path`` is a scan's output: a JSONL, CSV or Parquet file, or a folder of part
    files as the Ray scan writes them (named ``*.parquet`` or ``*.jsonl``)."""
    p = Path(path)
    if p.is_file():
        return p.suffix.lower() in SCAN_SUFFIXES
    return p.is_dir() and p.suffix.lower() in (".parquet", ".jsonl")


def unknown_sources(path, label: str = "unknown") -> List[str]:
    """The sources of a scan output's rows labelled ``label`` (default: unknown), in order, as
    the paths of the files scanned: read by :func:`ofa_sdk.scan_output.read_rows`, the reader
    resume uses, so escaped file names (a backslash, a byte that is not UTF-8) and neutralised
    CSV cells come back as they were. A torn last row is left out; a damaged line is skipped
    with a warning."""
    from .scan_output import OutputState, read_rows
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"scan output {p} does not exist")
    files = sorted(q for q in p.iterdir() if q.suffix.lower() in SCAN_SUFFIXES
                   and not q.name.startswith((".", "_"))) if p.is_dir() else [p]
    out: List[str] = []
    for q in files:
        st = OutputState()
        out += [r["source"] for r in read_rows(q, ("source", "label"), st)
                if r["label"] == label and isinstance(r["source"], str)]
        if st.damaged and not st.rows:
            raise ValueError(f"{q}: no row of a scan (lines {st.damaged[:5]} are not rows): "
                             f"not a scan output")
        if st.damaged:
            warnings.warn(f"{q}: lines {st.damaged[:10]} are not rows of a scan; skipped")
    return out
