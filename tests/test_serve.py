"""ofa-sdk serve: the HTTP app over a real Attributor (tiny random model, torch engine), run by
uvicorn on 127.0.0.1 in this process. Results equal Attributor.attribute's; hostile uploads get
a clear 4xx or a timeout and the server stays up; writes need the token; overload answers 503
without reading bodies or growing memory; the review page's data and decisions."""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed")
pytest.importorskip("uvicorn", reason="the serve extra is not installed")
pytest.importorskip("sklearn", reason="the review tests write a discover output (scikit-learn)")

from conftest import enrolled_gallery, make_images, wait_for  # noqa: E402
from serve_support import call, discover_output, metric, multipart, png, post_images  # noqa: E402

TOKEN = "s3cret-token"
MAX_BYTES = 200_000           # the Attributor's max_bytes: the server's upload cap
MAX_PIXELS = 100 * 100        # the Attributor's max_pixels


def _attributor(model, gallery):
    from ofa_sdk import Attributor
    return Attributor(model=model, backend="torch", gallery=gallery, max_bytes=MAX_BYTES,
                      max_pixels=MAX_PIXELS)


@pytest.fixture(scope="module")
def env(tiny_model, tmp_path_factory):
    base = tmp_path_factory.mktemp("serve")
    g = enrolled_gallery(base, tiny_model, [("gen-a", "noise", 6), ("gen-b", "blocky", 6)])
    root = base / "review"
    groups = [make_images(base / "unk_0", 5, 50, kind="noise"),
              make_images(base / "unk_1", 5, 51, kind="blocky"),
              make_images(base / "unk_2", 4, 52, kind="noise")]
    discover_output(root / "found", groups)
    return {"model": tiny_model, "gallery": g, "root": root, "base": base}


@pytest.fixture(scope="module")
def srv(env):
    from ofa_sdk.serve import Running
    from ofa_sdk.serve.app import Settings
    att = _attributor(env["model"], env["gallery"])
    settings = Settings(token=TOKEN, read_timeout=1.0, review_roots=[str(env["root"])])
    with Running(att, settings) as s:
        s.att = att
        yield s


def _same(got, want):
    assert got["label"] == want.label, (got, want)
    assert got["profile"] == want.profile
    assert (got["error"] is None) == want.ok
    if want.ok:
        np.testing.assert_allclose(got["score"], want.score, atol=1e-5)
        np.testing.assert_allclose(got["threshold"], want.threshold, atol=1e-6)
        assert set(got["scores"]) == set(want.scores)
        np.testing.assert_allclose([got["scores"][k] for k in sorted(want.scores)],
                                   [want.scores[k] for k in sorted(want.scores)], atol=1e-5)
        if want.typicality is None:
            assert got["typicality"] is None
        else:
            np.testing.assert_allclose(got["typicality"], want.typicality, atol=1e-4)


def test_attribute_and_verify_give_the_librarys_results(srv, env):
    imgs = [png(100 + i, kind="noise" if i % 2 else "blocky") for i in range(6)]
    imgs.append(png(7, size=200))                    # over max_pixels: a per-image error
    lib = _attributor(env["model"], env["gallery"])  # another Attributor on the same gallery
    want = lib.attribute(imgs)
    assert sum(r.ok for r in want) == 6 and "pixel limit" in want[-1].error
    files = [(f"img{i}.png", b) for i, b in enumerate(imgs)]
    status, _, body = post_images(srv.url, "/v1/attribute", files)
    assert status == 200, body
    assert [r["source"] for r in body["results"]] == [f for f, _ in files]
    for got, w in zip(body["results"], want):
        _same(got, w)
    assert "pixel limit" in body["results"][-1]["error"]

    # raw bytes with their content type
    status, _, body = call(srv.url, "POST", "/v1/attribute", imgs[0], {"Content-Type": "image/png"})
    assert status == 200 and body["results"][0]["source"] == "body"
    _same(body["results"][0], want[0])

    # concurrent requests are batched together and each gets its own results
    def one(i):
        return post_images(srv.url, "/v1/attribute", [(f"c{i}", imgs[i % 6])])
    with ThreadPoolExecutor(8) as pool:
        out = list(pool.map(one, range(24)))
    for i, (st, _, b) in enumerate(out):
        assert st == 200 and b["results"][0]["source"] == f"c{i}"
        _same(b["results"][0], want[i % 6])

    # a threshold given per request
    want_thr = lib.attribute(imgs[:6], threshold=0.999)
    _, _, body = post_images(srv.url, "/v1/attribute?threshold=0.999", files[:6])
    for got, w in zip(body["results"], want_thr):
        _same(got, w)

    # verify: the score for one profile, as Attributor.verify gives it
    status, _, body = post_images(srv.url, "/v1/verify?profile=gen-b", files[:6])
    assert status == 200
    np.testing.assert_allclose([r["score"] for r in body["results"]],
                               lib.verify(imgs[:6], "gen-b"), atol=1e-5)
    for got, w in zip(body["results"], lib.attribute(imgs[:6], profiles=["gen-b"])):
        _same(got, w)
    status, _, body = post_images(srv.url, "/v1/verify?profile=nobody", files[:1])
    assert status == 404 and "nobody" in body["error"]

    # a JPEG upload is scored against the profiles' JPEG variants, as the library does
    import io
    from PIL import Image
    jpgs = []
    for i, q in enumerate((85, 70)):
        buf = io.BytesIO()
        Image.open(io.BytesIO(imgs[i])).save(buf, format="JPEG", quality=q)
        jpgs.append((f"j{i}.jpg", buf.getvalue()))
    want = lib.attribute([b for _, b in jpgs])
    assert [w.note for w in want] == ["JPEG q85: scored against the q90 variants",
                                      "JPEG q70: scored against the q75 variants"]
    status, _, body = post_images(srv.url, "/v1/attribute", jpgs)
    assert status == 200
    for got, w in zip(body["results"], want):
        _same(got, w)
        assert got["note"] == w.note


def test_hostile_uploads_get_a_clear_4xx_and_the_server_stays_up(srv):
    url, img = srv.url, png(1)
    before = call(url, "GET", "/metrics")[2].decode()
    cases = []

    def expect(what, status, needle, got):
        cases.append(what)
        assert got[0] == status, (what, got)
        assert needle in got[2]["error"], (what, got[2])

    expect("too large (Content-Length)", 413, "byte limit",
           call(url, "POST", "/v1/attribute", b"\0" * (MAX_BYTES + 1), {"Content-Type": "image/png"}))
    expect("too large (multipart)", 413, "byte limit",
           post_images(url, "/v1/attribute", [("a", img), ("big", b"\0" * MAX_BYTES)]))
    expect("wrong content type", 415, "not accepted",
           call(url, "POST", "/v1/attribute", b"hello", {"Content-Type": "text/plain"}))
    expect("a URL instead of an image", 415, "URLs are never fetched",
           call(url, "POST", "/v1/attribute", json.dumps({"url": "http://127.0.0.1:1/x.png"}).encode(),
                {"Content-Type": "application/json"}))
    expect("no content type", 415, "not accepted", call(url, "POST", "/v1/attribute", img))
    expect("multipart without boundary", 400, "malformed multipart",
           call(url, "POST", "/v1/attribute", img, {"Content-Type": "multipart/form-data"}))
    expect("multipart garbage", 400, "multipart",
           call(url, "POST", "/v1/attribute", b"\x00\xffgarbage" * 50,
                {"Content-Type": "multipart/form-data; boundary=XYZ"}))
    body, ctype = multipart([], {"note": "no file here"})
    expect("multipart with no file part", 400, "no file part",
           call(url, "POST", "/v1/attribute", body, {"Content-Type": ctype}))
    expect("empty body", 400, "empty body",
           call(url, "POST", "/v1/attribute", b"", {"Content-Type": "image/png"}))
    expect("not an image", 422, "not an image Pillow can decode",
           call(url, "POST", "/v1/attribute", b"GIF89a but not really", {"Content-Type": "image/gif"}))
    expect("decompression bomb (pixels)", 422, "pixel limit",
           call(url, "POST", "/v1/attribute", png(3, size=200), {"Content-Type": "image/png"}))
    expect("bad threshold", 400, "threshold",
           call(url, "POST", "/v1/attribute?threshold=abc", img, {"Content-Type": "image/png"}))
    after = call(url, "GET", "/metrics")[2].decode()
    for kind, n in (("too_large", 2), ("unsupported_media", 3), ("malformed", 4), ("bad_image", 2)):
        key = f'ofa_errors_total{{kind="{kind}"}}'
        assert metric(after, key) - metric(before, key) == n, (kind, metric(after, key))
    assert call(url, "GET", "/healthz")[0] == 200
    assert post_images(url, "/v1/attribute", [("ok", img)])[0] == 200
    assert len(cases) == 12


def _raw(port, head: bytes, body: bytes = b"") -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(head + body)
    return s


def _reply(s: socket.socket) -> str:
    """One whole HTTP reply: the head and as many body bytes as its Content-Length names (a
    loaded machine may deliver them in separate segments)."""
    data = b""
    while True:
        head, sep, body = data.partition(b"\r\n\r\n")
        if sep:
            m = re.search(rb"content-length: *(\d+)", head, re.I)
            if len(body) >= (int(m[1]) if m else 0):
                return data.decode(errors="replace")
        chunk = s.recv(4096)
        if not chunk:
            return data.decode(errors="replace")
        data += chunk


def _head(length: int, path="/v1/attribute", ctype="image/png") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


def test_slow_client_times_out_and_a_disconnect_mid_upload_is_survived(srv):
    # a client that sends part of its body and stalls: 408 after read_timeout (1 s)
    t = time.monotonic()
    s = _raw(srv.port, _head(5000), b"\x89PNG" + b"\0" * 100)
    reply = _reply(s)
    s.close()
    assert reply.startswith("HTTP/1.1 408"), reply
    assert "did not arrive within 1 s" in reply
    assert time.monotonic() - t < 8

    # a client that disconnects mid-upload: counted, nothing else lost
    def disconnects():
        return metric(call(srv.url, "GET", "/metrics")[2].decode(),
                      'ofa_errors_total{kind="disconnect"}')
    n0 = disconnects()
    s = _raw(srv.port, _head(5000), b"\x89PNG" + b"\0" * 100)
    time.sleep(0.1)
    s.close()
    wait_for(lambda: disconnects() == n0 + 1, 10, "the disconnect to be counted")
    assert call(srv.url, "GET", "/healthz")[0] == 200
    assert post_images(srv.url, "/v1/attribute", [("ok", png(2))])[0] == 200


def test_gallery_writes_need_the_token(srv):
    url = srv.url
    files = [(f"e{i}.png", png(300 + i)) for i in range(4)]
    for auth in (None, "Bearer wrong", f"Basic {TOKEN}", TOKEN):
        body, ctype = multipart(files)
        h = {"Content-Type": ctype, **({"Authorization": auth} if auth else {})}
        st, hdrs, b = call(url, "POST", "/v1/profiles/newgen", body, h)
        assert st == 401 and hdrs.get("www-authenticate") == "Bearer", (auth, st, b)
        assert "token" in b["error"]
    assert "newgen" not in srv.att.gallery
    st, _, b = post_images(url, "/v1/profiles/newgen", files, token=TOKEN)
    assert st == 201 and b["name"] == "newgen" and b["used"] == 4, b
    assert "newgen" in srv.att.gallery
    st, _, b = post_images(url, "/v1/profiles/newgen", files, token=TOKEN)
    assert st == 409 and "exists" in b["error"]
    # the new profile takes part in attribution at once (the snapshot follows the gallery)
    st, _, b = post_images(url, "/v1/attribute", files[:1])
    assert "newgen" in b["results"][0]["scores"]
    st, _, b = post_images(url, "/v1/profiles/newgen/images", files[:2])
    assert st == 401
    st, _, b = post_images(url, "/v1/profiles/newgen/images", files[:2], token=TOKEN)
    assert st == 200 and b["used"] == 2 and b["support"] > 0
    assert srv.att.gallery.get("newgen").metadata["used"] == 6
    st, _, b = post_images(url, "/v1/profiles/nobody/images", files[:2], token=TOKEN)
    assert st == 404
    st, _, b = call(url, "DELETE", "/v1/profiles/newgen")
    assert st == 401 and "newgen" in srv.att.gallery
    st, _, b = call(url, "DELETE", "/v1/profiles/newgen", headers={"Authorization": f"Bearer {TOKEN}"})
    assert st == 200 and "newgen" not in srv.att.gallery
    names = [p["name"] for p in call(url, "GET", "/v1/profiles")[2]]
    assert names == ["gen-a", "gen-b"]


def test_enrollment_takes_the_librarys_delivery_options(srv, env):
    """POST /v1/profiles/{name} takes Attributor.enroll's delivery options as query parameters
    (rescale, jpeg_quality, jpeg_variants, rescale_variants, resize_kernel): the profile and its
    variants are the library's enrolled with them, and its row shows them. An add keeps the
    profile's delivery and refuses another (409); a bad value is refused naming its parameter
    before the upload is read (400), a combination the library refuses too (400)."""
    from ofa_sdk import Attributor
    url, auth = srv.url, {"Authorization": f"Bearer {TOKEN}"}
    files = [(f"d{i}.png", png(500 + i, size=64)) for i in range(4)]
    st, _, b = post_images(url, "/v1/profiles/platform?rescale_variants=0.75,0.5&jpeg_variants=none"
                           "&resize_kernel=box", files, token=TOKEN)
    assert st == 201, b
    assert b["delivery"] == {"rescale": None, "jpeg_quality": None, "jpeg_variants": [],
                             "rescale_variants": [0.75, 0.5], "resize_kernel": "box"}
    ref = Attributor(model=env["model"], backend="torch").enroll(
        "platform", [d for _, d in files], rescale_variants=(0.75, 0.5), jpeg_variants=(),
        resize_kernel="box")
    got = srv.att.gallery.get("platform")
    assert sorted(got.variants) == sorted(ref.variants) == [(0.5, None), (0.75, None)]
    for k in ref.variants:
        np.testing.assert_allclose(got.variants[k].support, ref.variants[k].support, atol=1e-5)
    rows = {r["name"]: r for r in call(url, "GET", "/v1/profiles")[2]}
    assert rows["platform"]["delivery"]["resize_kernel"] == "box"
    assert rows["gen-a"]["delivery"]["resize_kernel"] is None       # as enrolled: bicubic

    st, _, b = post_images(url, "/v1/profiles/platform/images", files[:1], token=TOKEN)
    assert st == 200 and b["delivery"]["rescale_variants"] == [0.75, 0.5], b
    assert srv.att.gallery.get("platform").variants[(0.75, None)].n_support == \
        ref.variants[(0.75, None)].n_support * 5 // 4
    st, _, b = post_images(url, "/v1/profiles/platform/images?resize_kernel=bilinear", files[:1],
                           token=TOKEN)
    assert st == 409 and "resize_kernel='box'" in b["error"], b

    st, _, b = post_images(url, "/v1/profiles/fixed?rescale=0.75&jpeg_quality=80", files,
                           token=TOKEN)
    assert st == 201 and (b["delivery"]["rescale"], b["delivery"]["jpeg_quality"]) == (0.75, 80)
    assert b["delivery"]["jpeg_variants"] == [] == b["delivery"]["rescale_variants"], b
    np.testing.assert_allclose(srv.att.gallery.get("fixed").support, Attributor(
        model=env["model"], backend="torch").enroll("fixed", [d for _, d in files], rescale=0.75,
                                                    jpeg_quality=80).support, atol=1e-5)

    big = b"x" * (MAX_BYTES // 2)            # not an image: refused before it is read
    for query, words in [("rescale=5", "rescale factor"), ("jpeg_quality=0", "JPEG quality"),
                         ("jpeg_variants=95,high", "jpeg_variants takes JPEG qualities"),
                         ("rescale_variants=", "rescale_variants takes resize factors"),
                         ("resize_kernel=nearest", "resize kernel must be one of"),
                         ("rescale=abc", "rescale"),
                         ("rescale=0.75&rescale_variants=0.5", "fixes the support's one delivery")]:
        body, ctype = (multipart(files[:1]) if "fixes" in words else
                       (big, "application/octet-stream"))
        st, _, b = call(url, "POST", f"/v1/profiles/bad?{query}", body,
                        {"Content-Type": ctype, **auth})
        assert st == 400 and words in b["error"], (query, st, b)
    assert "bad" not in srv.att.gallery
    spec = call(url, "GET", "/openapi.json")[2]["paths"]
    for path in ("/v1/profiles/{name}", "/v1/profiles/{name}/images"):
        assert {"rescale", "jpeg_quality", "jpeg_variants", "rescale_variants", "resize_kernel"} <= \
            {q["name"] for q in spec[path]["post"]["parameters"]}, path
    for n in ("platform", "fixed"):
        assert call(url, "DELETE", f"/v1/profiles/{n}", headers=auth)[0] == 200


def test_without_a_token_writes_are_refused(env):
    from ofa_sdk.serve import Running
    from ofa_sdk.serve.app import Settings
    with Running(_attributor(env["model"], None), Settings(token=None)) as s:
        st, _, b = post_images(s.url, "/v1/profiles/x", [("a", png(1))], token="anything")
        assert st == 403 and "disabled" in b["error"]
        assert post_images(s.url, "/v1/attribute", [("a", png(1))])[0] == 200


def _rss() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) * 1024


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads VmRSS from /proc")
def test_overload_answers_503_before_reading_bodies_and_memory_stays_bounded(env):
    from ofa_sdk.serve import Running
    from ofa_sdk.serve.app import Settings
    settings = Settings(max_inflight=2, read_timeout=60)
    with Running(_attributor(env["model"], env["gallery"]), settings) as s:
        held = [_raw(s.port, _head(50_000), b"\x89PNG") for _ in range(2)]   # both slots taken
        wait_for(lambda: s.service._inflight == 2, 10, "both requests to be admitted")
        body = png(5) + b"\0" * 60_000
        call(s.url, "POST", "/v1/attribute", body, {"Content-Type": "image/png"})   # warm-up
        rss0 = _rss()

        def one(_):
            st, h, b = call(s.url, "POST", "/v1/attribute", body, {"Content-Type": "image/png"})
            return st, h.get("retry-after"), b.get("kind")
        with ThreadPoolExecutor(8) as pool:
            out = list(pool.map(one, range(400)))          # 24 MB of bodies offered
        assert set(out) == {(503, "1", "queue_full")}, set(out)
        grew = _rss() - rss0
        assert grew < 16 * 2 ** 20, f"RSS grew {grew / 2 ** 20:.1f} MiB"
        assert s.service.batcher.waiting == 0
        for h in held:
            h.close()
        wait_for(lambda: s.service._inflight == 0, 10, "the held requests to end")
        st, _, b = call(s.url, "POST", "/v1/attribute", png(5), {"Content-Type": "image/png"})
        assert st == 200 and b["results"][0]["error"] is None


def test_batcher_batches_waiting_jobs_and_bounds_its_queue():
    from ofa_sdk.serve.batcher import Batcher, QueueFull
    release, started, sizes = threading.Event(), threading.Event(), []

    def run(jobs):
        sizes.append([len(j.items) for j in jobs])
        started.set()
        release.wait(10)
        return [[x * 10 for x in j.items] if j.key == "ok" else ValueError("bad key")
                for j in jobs]
    b = Batcher(run, max_batch=4, max_delay=0.05, queue_images=6).start()
    try:
        first = b.submit([1], "ok")
        assert started.wait(5)                     # running, blocked: the rest waits in the queue
        futs = [b.submit([i, i], "ok") for i in range(2)] + [b.submit([7], "bad")]
        assert b.waiting == 5
        with pytest.raises(QueueFull):
            b.submit([1, 2], "ok")                 # 5 + 2 > 6 images
        futs.append(b.submit([9], "ok"))
        release.set()
        assert first.result(5) == [10]
        assert [f.result(5) for f in futs[:2]] == [[0, 0], [10, 10]]
        with pytest.raises(ValueError, match="bad key"):
            futs[2].result(5)
        assert futs[3].result(5) == [90]
        assert sizes[0] == [1] and sizes[1] == [2, 2]     # one batch of <= 4 images
        assert sum(map(sum, sizes)) == 7 and b.waiting == 0
    finally:
        release.set()
        b.stop()


def test_review_api_lists_opens_and_records_decisions(srv, env):
    url, auth = srv.url, {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    st, _, b = call(url, "GET", "/v1/review/folders")
    assert st == 200 and [f["folder"] for f in b["folders"]] == ["0/found"]
    st, _, b = call(url, "GET", "/v1/review/clusters?folder=0/found")
    assert st == 200 and len(b["clusters"]) == 3
    c0, sizes = b["clusters"][0], [c["size"] for c in b["clusters"]]
    assert c0["size"] >= 4 and "cohesion" in c0 and "outliers" in c0 and c0["decision"] is None
    assert "nearest_profile" in c0 and c0["pictures"] == ["contact.png"]
    st, h, png_bytes = call(url, "GET", "/v1/review/picture?folder=0/found&cluster=0&name=contact.png")
    assert st == 200 and h["content-type"] == "image/png" and png_bytes[:4] == b"\x89PNG"

    # no way out of the configured roots
    outside = env["base"] / "outside"
    discover_output(outside, [make_images(env["base"] / "unk_0", 5, 50)])
    (env["root"] / "link").symlink_to(outside, target_is_directory=True)
    for folder in ("0/..", "0/../outside", "0//etc", "0/found/../../outside", "0/link", "1/found",
                   "x/found", "0/found/cluster-0"):
        st, _, b = call(url, "GET", f"/v1/review/clusters?folder={folder}")
        assert st in (400, 404), (folder, st, b)
    for q in ("cluster=0&name=../members.json", "cluster=0&name=members.json", "cluster=99",
              "cluster=-1"):
        st, _, b = call(url, "GET", f"/v1/review/picture?folder=0/found&{q}")
        assert st in (400, 404), (q, st)
    assert [f["folder"] for f in call(url, "GET", "/v1/review/folders")[2]["folders"]] == ["0/found"]
    # a picture that is a link to a file outside its cluster's folder is not served
    secret = env["base"] / "secret.png"
    secret.write_bytes(png_bytes)
    (env["root"] / "found" / "cluster-2" / "spectrum.png").symlink_to(secret)
    st, _, _ = call(url, "GET", "/v1/review/picture?folder=0/found&cluster=2&name=spectrum.png")
    assert st == 404

    def decide(cluster, action, name=None, headers=auth):
        return call(url, "POST", "/v1/review/decision",
                    json.dumps({"folder": "0/found", "cluster": cluster, "action": action,
                                "name": name}).encode(), headers)
    st, _, b = decide(1, "enroll", "found-1", {"Content-Type": "application/json"})
    assert st == 401 and "found-1" not in srv.att.gallery
    st, _, b = decide(1, "enroll", "found-1")
    assert st == 200 and b["action"] == "enroll" and b["profile"] == "found-1", b
    prof = srv.att.gallery.get("found-1")
    assert prof.metadata["origin"] == "discovery" and prof.metadata["used"] == sizes[1]
    rec = json.loads((env["root"] / "found" / "cluster-1" / "decision.json").read_text())
    assert rec["profile"] == "found-1" and rec["used"] == prof.metadata["used"]
    st, _, b = decide(1, "enroll", "found-1-again")      # a second click: not enrolled twice
    assert st == 409 and "found-1-again" not in srv.att.gallery
    st, _, b = decide(2, "add", "found-1")
    assert st == 200 and b["action"] == "add"
    assert b["used"] == sizes[2]
    assert srv.att.gallery.get("found-1").metadata["used"] == sizes[1] + sizes[2]
    st, _, b = decide(0, "dismiss")
    assert st == 200
    st, _, b = call(url, "GET", "/v1/review/clusters?folder=0/found")
    assert [c["decision"]["action"] for c in b["clusters"]] == ["dismiss", "enroll", "add"]
    assert decide(0, "frobnicate", "x")[0] == 400
    assert decide(0, "add", "nobody")[0] == 404
    assert decide(0, "enroll", "")[0] == 400
    call(url, "DELETE", "/v1/profiles/found-1", headers=auth)


def test_openapi_health_model_and_metrics(srv):
    st, _, schema = call(srv.url, "GET", "/openapi.json")
    assert st == 200
    for p in ("/v1/attribute", "/v1/verify", "/v1/profiles", "/v1/profiles/{name}",
              "/v1/profiles/{name}/images", "/v1/model", "/healthz", "/readyz", "/metrics"):
        assert p in schema["paths"], p
    assert "multipart/form-data" in schema["paths"]["/v1/attribute"]["post"]["requestBody"]["content"]
    assert call(srv.url, "GET", "/readyz")[2]["status"] == "ready"
    st, _, info = call(srv.url, "GET", "/v1/model")
    assert info["max_bytes"] == MAX_BYTES and info["max_pixels"] == MAX_PIXELS
    assert "token" not in json.dumps(info["serving"]).replace('"writes": "token"', "")
    post_images(srv.url, "/v1/attribute", [("a", png(1)), ("b", png(2))])
    text = call(srv.url, "GET", "/metrics")[2].decode()
    for name in ('ofa_requests_total{endpoint="/v1/attribute",status="200"}',
                 'ofa_request_seconds_count{endpoint="/v1/attribute"}', "ofa_batch_images_count",
                 "ofa_batch_seconds_count"):
        assert metric(text, name) > 0, name
    assert "ofa_queue_images " in text and "ofa_inflight_requests " in text
    assert 'ofa_errors_total{kind="queue_full"}' in text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_serve_starts_on_loopback_and_answers(env, tmp_path):
    from ofa_sdk.cli import build_parser
    assert build_parser().parse_args(["serve"]).host == "127.0.0.1"
    port = _free_port()
    (tmp_path / "token").write_text(TOKEN + "\n")
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "ofa_sdk.cli", "serve", "--model", str(env["model"]),
         "--gallery", str(env["gallery"]), "--backend", "torch", "--port", str(port),
         "--token-file", str(tmp_path / "token")],
        cwd=root, env={**os.environ, "PYTHONPATH": str(root)}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        def ready():
            try:
                return call(url, "GET", "/readyz", timeout=2)[0] == 200
            except OSError:
                assert proc.poll() is None, proc.stdout.read().decode()
                return False
        wait_for(ready, 120, "ofa-sdk serve to be ready")
        st, _, b = post_images(url, "/v1/attribute", [("a", png(1))])
        assert st == 200 and set(b["results"][0]["scores"]) == {"gen-a", "gen-b"}
        assert call(url, "DELETE", "/v1/profiles/nobody",
                    headers={"Authorization": f"Bearer {TOKEN}"})[0] == 404
        # on loopback, a Host naming another machine (a rebound name) is refused
        assert call(url, "GET", "/v1/model", headers={"Host": "attacker.example"})[0] == 400
        assert call(url, "GET", "/v1/model", headers={"Host": f"localhost:{port}"})[0] == 200
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_a_model_that_fails_to_load_is_neither_live_nor_ready():
    from ofa_sdk.serve import Running
    from ofa_sdk.serve.app import Settings

    def load():
        raise ValueError("model file /nowhere/model.safetensors: not found")
    srv = Running(load, Settings(token=TOKEN))
    with pytest.raises(RuntimeError, match="not found"):
        srv.__enter__()
    try:
        st, h, b = call(srv.url, "GET", "/healthz")       # liveness fails: restart it
        assert st == 503 and b["status"] == "failed" and "not found" in b["error"]
        st, h, b = call(srv.url, "GET", "/readyz")
        assert st == 503 and b["status"] == "failed" and "not found" in b["error"]
        st, h, b = call(srv.url, "POST", "/v1/attribute", png(1), {"Content-Type": "image/png"})
        assert st == 503 and b["kind"] == "not_ready" and h["retry-after"] == "1"
    finally:
        srv.__exit__(None, None, None)
