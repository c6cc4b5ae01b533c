"""ofa_sdk.provenance: declared-origin metadata, read defensively from bytes.

Every file here is made by the test (Pillow, hand-written PNG chunks / JPEG segments, and, when
c2pa-python is installed, C2PA manifests signed with a certificate chain generated in the test).
"""
from __future__ import annotations

import io
import json
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from ofa_sdk import provenance
from ofa_sdk.provenance import MAX_METADATA_BYTES, MAX_VALUE_CHARS, Provenance, read_provenance

IPTC_TRAINED = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"

WEBUI = ("a red fox in the snow, highly detailed\n"
         "Negative prompt: blurry, lowres\n"
         "Steps: 30, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1234, Size: 512x512, "
         'Model hash: 31e35c80fc, Model: sd_xl_base_1.0, Lora hashes: "a: 1, b: 2", Version: v1.6.0')

COMFY_PROMPT = {
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "dreamshaper_8.safetensors"}},
    "3": {"class_type": "KSampler", "inputs": {"seed": 5, "steps": 20, "model": ["4", 0]}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["4", 1]}},
}
COMFY_WORKFLOW = {"last_node_id": 9, "nodes": [{"id": 4, "type": "CheckpointLoaderSimple"}]}


# ------------------------------------------------------------------------------ file makers

def _pixels(size=16, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def png_bytes(texts=(), size=16):
    """A PNG with the given (kind, key, value) text chunks; kind in tEXt / zTXt / iTXt."""
    info = PngInfo()
    for kind, key, value in texts:
        if kind == "tEXt":
            info.add_text(key, value)
        elif kind == "zTXt":
            info.add_text(key, value, zip=True)
        else:
            info.add_itxt(key, value)
    buf = io.BytesIO()
    _pixels(size).save(buf, "PNG", pnginfo=info)
    return buf.getvalue()


def chunk(ctype: bytes, body: bytes, crc=None) -> bytes:
    crc = zlib.crc32(ctype + body) & 0xFFFFFFFF if crc is None else crc
    return struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", crc)


def png_with_chunks(*chunks: bytes) -> bytes:
    """Insert raw chunks right after IHDR of a plain PNG."""
    plain = png_bytes()
    ihdr_end = 8 + 8 + 13 + 4
    return plain[:ihdr_end] + b"".join(chunks) + plain[ihdr_end:]


def jpeg_bytes(exif=None):
    buf = io.BytesIO()
    kw = {"exif": exif} if exif is not None else {}
    _pixels().save(buf, "JPEG", quality=90, **kw)
    return buf.getvalue()


def with_app_segment(jpeg: bytes, marker: int, payload: bytes) -> bytes:
    """Insert one APPn segment right after SOI (the segment is written by hand)."""
    assert jpeg[:2] == b"\xff\xd8" and len(payload) + 2 <= 0xFFFF
    return jpeg[:2] + bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


def xmp_packet(dst=IPTC_TRAINED, creator_tool="Adobe Firefly Image 3", element_form=False):
    if element_form:
        props = (f'<Iptc4xmpExt:DigitalSourceType rdf:resource="{dst}"/>'
                 f"<xmp:CreatorTool>{creator_tool}</xmp:CreatorTool>")
        desc = f'<rdf:Description rdf:about="">{props}</rdf:Description>'
    else:
        desc = (f'<rdf:Description rdf:about="" Iptc4xmpExt:DigitalSourceType="{dst}" '
                f'xmp:CreatorTool="{creator_tool}"/>')
    return ('<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'
            '<x:xmpmeta xmlns:x="adobe:ns:meta/">'
            '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#" '
            'xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/" '
            'xmlns:xmp="http://ns.adobe.com/xap/1.0/">'
            f"{desc}</rdf:RDF></x:xmpmeta>"
            '<?xpacket end="w"?>').encode("utf-8")


def jpeg_with_xmp(xmp: bytes) -> bytes:
    return with_app_segment(jpeg_bytes(), 0xE1, b"http://ns.adobe.com/xap/1.0/\x00" + xmp)


BILLION_LAUGHS = (b'<?xml version="1.0"?>\n<!DOCTYPE lolz [\n<!ENTITY lol "lol">\n'
                  + b"".join(b'<!ENTITY lol%d "%s">\n' % (i, (b"&lol%d;" % (i - 1) if i > 1 else b"&lol;") * 10)
                             for i in range(1, 10))
                  + b']>\n<x:xmpmeta xmlns:x="adobe:ns:meta/">&lol9;</x:xmpmeta>')


def _facts(p: Provenance, key=None, where=None):
    return [f for f in p.facts if (key is None or f["key"] == key) and (where is None or f["where"] == where)]


def _check_contract(p):
    assert isinstance(p, Provenance)
    d = p.to_dict()
    json.dumps(d)
    assert (d == {}) == (not p)
    for f in p.facts:
        assert set(f) == {"key", "value", "where"}
        assert isinstance(f["value"], str) and len(f["value"]) <= MAX_VALUE_CHARS
    assert all(isinstance(e, str) and e for e in p.errors)
    return d


# ---------------------------------------------------------------------------- PNG text chunks

@pytest.mark.parametrize("kind", ["tEXt", "zTXt", "iTXt"])
def test_webui_parameters(kind):
    p = read_provenance(png_bytes([(kind, "parameters", WEBUI)]), source="fox.png")
    _check_contract(p)
    assert p.generator == "Stable Diffusion WebUI (sd_xl_base_1.0)"
    where = f"png:{kind} parameters"
    assert _facts(p, "model", where)[0]["value"] == "sd_xl_base_1.0"
    assert _facts(p, "model_hash", where)[0]["value"] == "31e35c80fc"
    assert _facts(p, "version", where)[0]["value"] == "v1.6.0"
    assert _facts(p, "parameters", where)[0]["value"].startswith("a red fox")
    assert p.errors == [] and p.c2pa is None and p.source_type is None


def test_webui_without_model_and_long_value_truncated():
    text = "x" * 10_000 + "\nSteps: 20, Sampler: Euler a, Seed: 1"
    p = read_provenance(png_bytes([("tEXt", "parameters", text)]))
    _check_contract(p)
    assert p.generator == "Stable Diffusion WebUI"
    value = _facts(p, "parameters")[0]["value"]
    assert len(value) == MAX_VALUE_CHARS and value.endswith("\u2026")


def test_comfyui_prompt_and_workflow():
    p = read_provenance(png_bytes([("tEXt", "prompt", json.dumps(COMFY_PROMPT)),
                                   ("tEXt", "workflow", json.dumps(COMFY_WORKFLOW))]))
    _check_contract(p)
    assert p.generator == "ComfyUI (dreamshaper_8.safetensors)"
    assert _facts(p, "model", "png:tEXt prompt")[0]["value"] == "dreamshaper_8.safetensors"
    assert _facts(p, "workflow", "png:tEXt workflow")
    assert p.errors == []


def test_software_and_description_chunks():
    p = read_provenance(png_bytes([("tEXt", "Software", "NovelAI"),
                                   ("iTXt", "Description", "a castle, job 42")]))
    _check_contract(p)
    assert p.generator == "NovelAI"
    assert _facts(p, "Software", "png:tEXt Software")[0]["value"] == "NovelAI"
    assert _facts(p, "Description", "png:iTXt Description")[0]["value"] == "a castle, job 42"


def test_specific_tool_beats_generic_software():
    p = read_provenance(png_bytes([("tEXt", "Software", "GIMP 2.10"),
                                   ("tEXt", "parameters", WEBUI)]))
    assert p.generator.startswith("Stable Diffusion WebUI")


def test_plain_files_declare_nothing():
    for data in (png_bytes(), jpeg_bytes()):
        p = read_provenance(data)
        assert not p
        assert p.to_dict() == {}
        assert p.facts == [] and p.errors == [] and p.c2pa is None


def test_plain_text_prompt_is_a_fact_not_an_error():
    p = read_provenance(png_bytes([("tEXt", "prompt", "a cat on a mat")]))
    assert p.errors == [] and p.generator is None
    assert _facts(p, "prompt")[0]["value"] == "a cat on a mat"


# ------------------------------------------------------------------------------------- XMP

@pytest.mark.parametrize("element_form", [False, True])
def test_jpeg_xmp_digital_source_type(element_form):
    p = read_provenance(jpeg_with_xmp(xmp_packet(element_form=element_form)))
    _check_contract(p)
    assert p.source_type == "trainedAlgorithmicMedia"
    assert _facts(p, "DigitalSourceType", "xmp:Iptc4xmpExt:DigitalSourceType")[0]["value"] == IPTC_TRAINED
    assert _facts(p, "CreatorTool", "xmp:xmp:CreatorTool")[0]["value"] == "Adobe Firefly Image 3"
    assert p.generator == "Adobe Firefly"
    assert p.errors == []


def test_png_itxt_xmp_and_short_source_type():
    xmp = xmp_packet(dst="compositeWithTrainedAlgorithmicMedia", creator_tool="Photoshop 25.0")
    p = read_provenance(png_bytes([("iTXt", "XML:com.adobe.xmp", xmp.decode())]))
    _check_contract(p)
    assert p.source_type == "compositeWithTrainedAlgorithmicMedia"
    assert p.generator == "Photoshop 25.0"
    assert not _facts(p, "XML:com.adobe.xmp")          # parsed, not dumped as raw text


def test_webp_xmp():
    buf = io.BytesIO()
    _pixels().save(buf, "WEBP", xmp=xmp_packet(dst="http://cv.iptc.org/newscodes/digitalsourcetype/digitalCapture"))
    data = buf.getvalue()
    if b"XMP " not in data:
        pytest.skip("this Pillow build does not write WebP XMP chunks")
    p = read_provenance(data)
    assert p.source_type == "digitalCapture" and p.errors == []


def test_remote_manifest_reference_is_reported_not_fetched():
    xmp = xmp_packet().replace(
        b'xmlns:xmp="http://ns.adobe.com/xap/1.0/">',
        b'xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmlns:dcterms="http://purl.org/dc/terms/">'
    ).replace(b'rdf:about=""', b'rdf:about="" dcterms:provenance="https://example.invalid/m.c2pa"')
    p = read_provenance(jpeg_with_xmp(xmp))
    assert p.c2pa["present"] is True and p.c2pa["valid"] is None
    assert p.c2pa["remote_url"] == "https://example.invalid/m.c2pa"
    assert "not fetched" in p.c2pa["note"]


def test_gif_xmp_by_byte_scan():
    buf = io.BytesIO()
    _pixels().convert("P").save(buf, "GIF")
    gif = buf.getvalue()
    app = b"\x21\xff\x0bXMP DataXMP" + xmp_packet() + bytes(range(255, -1, -1)) + b"\x00"
    data = gif[:-1] + app + gif[-1:]
    p = _never_raises(data)
    assert p.source_type == "trainedAlgorithmicMedia"


def test_tiff_software_tag():
    exif = Image.Exif()
    exif[0x0131] = "Midjourney v6"
    buf = io.BytesIO()
    _pixels().save(buf, "TIFF", exif=exif)
    p = _never_raises(buf.getvalue())
    assert p.generator == "Midjourney"
    assert _facts(p, "Software", "exif:Software")[0]["value"] == "Midjourney v6"


# ------------------------------------------------------------------------------------ EXIF

def test_jpeg_exif_software_make_model():
    exif = Image.Exif()
    exif[0x0131] = "GIMP 2.10.36"
    exif[0x010F] = "Canon"
    exif[0x0110] = "Canon EOS R5"
    p = read_provenance(jpeg_bytes(exif.tobytes()))
    _check_contract(p)
    assert p.generator == "GIMP 2.10.36"
    assert _facts(p, "Software", "exif:Software")[0]["value"] == "GIMP 2.10.36"
    assert _facts(p, "Make", "exif:Make")[0]["value"] == "Canon"
    assert _facts(p, "Model", "exif:Model")[0]["value"] == "Canon EOS R5"
    assert p.errors == []


def test_jpeg_exif_usercomment_webui():
    """The WebUI writes JPEG/WebP parameters into EXIF UserComment (UNICODE, UTF-16)."""
    exif = Image.Exif()
    exif.get_ifd(0x8769)[0x9286] = b"UNICODE\x00" + WEBUI.encode("utf-16-be")
    p = read_provenance(jpeg_bytes(exif.tobytes()))
    _check_contract(p)
    assert p.generator == "Stable Diffusion WebUI (sd_xl_base_1.0)"
    assert _facts(p, "model", "exif:UserComment")


def test_png_exif_chunk():
    exif = Image.Exif()
    exif[0x0131] = "OpenAI dall-e 3"
    buf = io.BytesIO()
    _pixels().save(buf, "PNG", exif=exif.tobytes())
    p = read_provenance(buf.getvalue())
    assert p.generator == "DALL-E"
    assert _facts(p, "Software", "exif:Software")[0]["value"] == "OpenAI dall-e 3"


# ------------------------------------------------------------------------ malformed / hostile

def _never_raises(data, **kw):
    p = read_provenance(data, **kw)
    _check_contract(p)
    return p


def test_truncated_png_keeps_what_was_read():
    data = png_bytes([("tEXt", "Software", "ComfyUI"), ("tEXt", "parameters", WEBUI)])
    cut = data[:data.index(b"parameters") + 20]
    p = _never_raises(cut)
    assert any("truncated" in e for e in p.errors)
    assert p.generator == "ComfyUI"                    # the chunk before the cut still counts
    for n in range(0, len(data), 7):                   # every prefix: never an exception
        _never_raises(data[:n])


@pytest.mark.parametrize("data", [b"", b"\x00" * 100, b"garbage bytes, not an image at all",
                                  b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"RIFF\xff\xff\xff\xffWEBP",
                                  b"II*\x00\xff\xff\xff\xff", np.random.default_rng(3).bytes(5000)])
def test_garbage_gives_an_error_note(data):
    p = _never_raises(data)
    assert p.errors and bool(p)
    assert p.generator is None and p.source_type is None


def test_not_bytes():
    for data in (None, "a string", 42, [1, 2]):
        p = _never_raises(data)
        assert "not bytes" in p.errors[0]
    assert read_provenance(bytearray(png_bytes([("tEXt", "Software", "X")]))).generator == "X"


@pytest.mark.parametrize("container", ["jpeg", "png"])
def test_billion_laughs_xmp_refused(container):
    if container == "jpeg":
        data = jpeg_with_xmp(BILLION_LAUGHS)
    else:
        data = png_with_chunks(chunk(b"iTXt", b"XML:com.adobe.xmp\x00\x00\x00\x00\x00" + BILLION_LAUGHS))
    t0 = time.perf_counter()
    p = _never_raises(data)
    assert time.perf_counter() - t0 < 2.0
    assert any("entity" in e for e in p.errors)
    assert p.source_type is None


def test_utf16_billion_laughs_refused():
    bomb = BILLION_LAUGHS.replace(b'<?xml version="1.0"?>', b'<?xml version="1.0" encoding="UTF-16"?>')
    data = png_with_chunks(chunk(b"iTXt", b"XML:com.adobe.xmp\x00\x00\x00\x00\x00"
                                 + bomb.decode().encode("utf-16")))
    p = _never_raises(data)
    assert any("entity" in e for e in p.errors)


def test_external_entity_xmp_refused(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET")
    xxe = (f'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file://{secret}">]>'
           '<x:xmpmeta xmlns:x="adobe:ns:meta/">&e;</x:xmpmeta>').encode()
    p = _never_raises(jpeg_with_xmp(xxe))
    assert p.errors and "TOPSECRET" not in json.dumps(p.to_dict())


def test_malformed_xmp():
    p = _never_raises(jpeg_with_xmp(b"<x:xmpmeta><rdf:RDF>unclosed"))
    assert any("malformed XML" in e for e in p.errors)


def test_huge_text_chunk_is_capped_not_parsed():
    big = "Steps: 1, Model: evil\n" + "A" * (MAX_METADATA_BYTES + 1000)
    data = png_with_chunks(chunk(b"tEXt", b"parameters\x00" + big.encode("latin-1")))
    t0 = time.perf_counter()
    p = _never_raises(data)
    assert time.perf_counter() - t0 < 2.0
    assert any("cap" in e and "parameters" in e for e in p.errors)
    assert p.generator is None and not _facts(p, "parameters")


def test_zlib_bomb_is_capped():
    bomb = zlib.compress(b"\x00" * (MAX_METADATA_BYTES * 4), 9)
    assert len(bomb) < MAX_METADATA_BYTES
    data = png_with_chunks(chunk(b"zTXt", b"parameters\x00\x00" + bomb),
                           chunk(b"iTXt", b"prompt\x00\x01\x00\x00\x00" + bomb))
    p = _never_raises(data)
    assert sum("inflates beyond" in e for e in p.errors) == 2


def test_invalid_json_in_prompt():
    bad = '{"3": {"class_type": "KSampler", "inputs": {"seed": '
    p = _never_raises(png_bytes([("tEXt", "prompt", bad)]))
    assert any("invalid JSON" in e and "prompt" in e for e in p.errors)
    assert p.generator is None
    assert _facts(p, "prompt")                         # the raw (truncated) text is still shown


def test_deeply_nested_json_in_prompt():
    p = _never_raises(png_bytes([("tEXt", "prompt", "[" * 200_000)]))
    assert p.errors and p.generator is None


def test_bad_crc_and_bad_chunks_are_noted():
    data = png_with_chunks(chunk(b"tEXt", b"Software\x00Forged 1.0", crc=0),
                           chunk(b"tEXt", b"no separator here"),
                           chunk(b"zTXt", b"k\x00\x07notzlib"),
                           chunk(b"iTXt", b"k\x00\x01\x00\x00\x00not zlib"))
    p = _never_raises(data)
    assert any("CRC mismatch" in e for e in p.errors)
    assert sum("malformed" in e for e in p.errors) >= 3
    assert p.generator == "Forged 1.0"


def test_hostile_exif():
    bad_ifd = b"Exif\x00\x00II*\x00" + struct.pack("<I", 0xFFFFFF00)
    huge_count = b"Exif\x00\x00II*\x00" + struct.pack("<IH", 8, 0xFFFF)
    loop = b"Exif\x00\x00II*\x00" + struct.pack("<IH", 8, 1) + struct.pack("<HHII", 0x8769, 4, 1, 8)
    for payload in (bad_ifd, huge_count, loop, b"Exif\x00\x00XX"):
        p = _never_raises(with_app_segment(jpeg_bytes(), 0xE1, payload))
        assert p.errors


def test_truncated_jpeg_segment():
    data = jpeg_with_xmp(xmp_packet())
    p = _never_raises(data[:40])
    assert any("truncated" in e for e in p.errors)


def test_too_many_chunks_and_facts_are_bounded():
    many = b"".join(chunk(b"tEXt", b"k%d\x00v" % i) for i in range(3000))
    p = _never_raises(png_with_chunks(many))
    assert len(p.facts) <= provenance.MAX_FACTS
    assert len(p.errors) <= provenance.MAX_ERRORS + 1


def test_fuzzed_metadata_never_raises():
    rich = [png_bytes([("tEXt", "parameters", WEBUI), ("zTXt", "prompt", json.dumps(COMFY_PROMPT)),
                       ("iTXt", "XML:com.adobe.xmp", xmp_packet().decode())]),
            jpeg_with_xmp(xmp_packet())]
    exif = Image.Exif()
    exif[0x0131] = "GIMP"
    exif.get_ifd(0x8769)[0x9286] = b"UNICODE\x00" + WEBUI.encode("utf-16-be")
    rich.append(jpeg_bytes(exif.tobytes()))
    rng = np.random.default_rng(0)
    for base in rich:
        head = min(len(base), 2500)                    # the metadata lives near the start
        for _ in range(150):
            b = bytearray(base)
            for pos in rng.integers(0, head, size=int(rng.integers(1, 6))):
                b[pos] = int(rng.integers(0, 256))
            _never_raises(bytes(b))


# --------------------------------------------------------- C2PA presence without the library

def _fake_jumbf():
    label = b"c2pa\x00"
    jumd = b"jumd" + bytes.fromhex("6332706100110010800000aa00389b71") + b"\x03" + label
    jumd = struct.pack(">I", 8 + len(jumd) - 4 + 4) + jumd
    return struct.pack(">I", 8 + len(jumd)) + b"jumb" + jumd


def test_c2pa_detected_without_library(monkeypatch):
    monkeypatch.setattr(provenance.c2pa, "_import_c2pa", lambda: (None, "ImportError: No module named 'c2pa'"))
    jumbf = _fake_jumbf()
    png = png_with_chunks(chunk(b"caBX", jumbf))
    jpeg = with_app_segment(jpeg_bytes(), 0xEB, b"JP\x00\x01\x00\x00\x00\x01" + jumbf)
    for data, where in ((png, "png:caBX"), (jpeg, "jpeg:APP11 JUMBF")):
        p = _never_raises(data)
        assert p.c2pa["present"] is True and p.c2pa["valid"] is None
        assert "not installed" in p.c2pa["note"]
        assert p.c2pa["validation_errors"] == []
        assert _facts(p, "c2pa_manifest", where)


def test_no_c2pa_means_none(monkeypatch):
    monkeypatch.setattr(provenance.c2pa, "_import_c2pa", lambda: (None, "ImportError"))
    assert read_provenance(png_bytes([("tEXt", "Software", "x")])).c2pa is None


# ------------------------------------------------------------- C2PA with c2pa-python (optional)

def _make_chain():
    """An ES256 root CA and a leaf signing certificate, as C2PA requires (leaf + CA, PEM)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                          x509.NameAttribute(NameOID.ORGANIZATION_NAME, "OFA provenance test")])

    def usage(**on):
        flags = dict.fromkeys(("digital_signature", "content_commitment", "key_encipherment",
                               "data_encipherment", "key_agreement", "key_cert_sign", "crl_sign",
                               "encipher_only", "decipher_only"), False)
        flags.update(on)
        return x509.KeyUsage(**flags)

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("OFA Test Root CA")).issuer_name(name("OFA Test Root CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(usage(key_cert_sign=True, crl_sign=True), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    leaf = (x509.CertificateBuilder().subject_name(name("OFA Test Signer")).issuer_name(ca.subject)
            .public_key(leaf_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(usage(digital_signature=True), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(leaf_key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    chain = leaf.public_bytes(pem) + ca.public_bytes(pem)
    key = leaf_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return chain, key


@pytest.fixture(scope="module")
def c2pa_signed():
    """{mime: signed bytes}, signed with c2pa-python's own Builder/Signer; skips with the reason."""
    c2pa = pytest.importorskip("c2pa", reason="c2pa-python not installed (optional extra 'c2pa')")
    pytest.importorskip("cryptography", reason="cryptography not installed (needed to make a test certificate)")
    chain, key = _make_chain()
    try:
        signer = c2pa.Signer.from_info(c2pa.C2paSignerInfo(c2pa.C2paSigningAlg.ES256, chain, key, None))
    except Exception as exc:
        pytest.skip(f"c2pa-python {getattr(c2pa, 'sdk_version', lambda: '?')()} cannot make a signer "
                    f"from a self-made ES256 chain: {exc}")
    out = {}
    for fmt, mime in (("PNG", "image/png"), ("JPEG", "image/jpeg")):
        src = io.BytesIO()
        _pixels(32, seed=1).save(src, fmt)
        src.seek(0)
        manifest = {
            "claim_generator_info": [{"name": "ofa-provenance-test", "version": "1.0"}],
            "title": "test." + fmt.lower(), "format": mime,
            "assertions": [{"label": "c2pa.actions", "data": {"actions": [{
                "action": "c2pa.created", "digitalSourceType": IPTC_TRAINED,
                "softwareAgent": {"name": "Adobe Firefly", "version": "3"}}]}}],
        }
        dest = io.BytesIO()
        try:
            with c2pa.Builder(manifest) as builder:
                builder.sign(signer, mime, src, dest)
        except Exception as exc:
            pytest.skip(f"c2pa-python cannot sign a {fmt} with a self-made certificate: {exc}")
        out[mime] = dest.getvalue()
    return out


def _tamper(data: bytes, mime: str) -> bytes:
    """Flip pixel bytes after signing (inside IDAT / the JPEG entropy-coded scan)."""
    b = bytearray(data)
    if mime == "image/png":
        i = b.index(b"IDAT") + 20
    else:
        i = len(b) - 40
    for k in range(4):
        b[i + k] ^= 0xFF
    return bytes(b)


@pytest.mark.parametrize("mime", ["image/png", "image/jpeg"])
def test_c2pa_valid(c2pa_signed, mime):
    p = _never_raises(c2pa_signed[mime])
    assert p.c2pa["present"] is True
    assert p.c2pa["valid"] is True, p.c2pa
    assert p.c2pa["claim_generator"] == "ofa-provenance-test 1.0"
    assert p.c2pa["trusted"] is False                  # a self-made CA is on no trust list
    assert "assertion.dataHash.mismatch" not in p.c2pa["validation_errors"]
    assert p.source_type == "trainedAlgorithmicMedia"
    assert p.generator == "Adobe Firefly"              # the created action's softwareAgent
    assert _facts(p, "claim_generator", "c2pa:claim_generator")
    assert p.errors == []


@pytest.mark.parametrize("mime", ["image/png", "image/jpeg"])
def test_c2pa_tampered(c2pa_signed, mime):
    p = _never_raises(_tamper(c2pa_signed[mime], mime))
    assert p.c2pa["present"] is True and p.c2pa["valid"] is False
    assert "assertion.dataHash.mismatch" in p.c2pa["validation_errors"]
    # claims from a manifest that failed validation rank below everything else
    assert _facts(p, "claim_generator", "c2pa:claim_generator (manifest invalid)")


def test_c2pa_unsigned_and_garbage_manifest(c2pa_signed):
    assert read_provenance(png_bytes()).c2pa is None
    assert read_provenance(jpeg_bytes()).c2pa is None
    p = _never_raises(png_with_chunks(chunk(b"caBX", _fake_jumbf())))
    assert p.c2pa["present"] is True and p.c2pa["valid"] is False
    assert p.c2pa["validation_errors"]


def test_c2pa_truncated_signed_file(c2pa_signed):
    for mime, data in c2pa_signed.items():
        for n in (100, len(data) // 3, len(data) - 10):
            _never_raises(data[:n])
