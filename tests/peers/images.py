"""OCI images built in Python (no docker) and pushed with skopeo, byte for byte.

Tests need to know every digest before the bytes travel through regcache, so images are
built here as an OCI layout and pushed with `skopeo copy --preserve-digests`; push() checks
that the registry got exactly these manifest bytes.
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import io
import json
import os
import platform
import shutil
import struct
import subprocess
import tarfile
import tempfile
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from tests.peers.binaries import require
from tests.peers.net import clean_env

LAYER_MEDIA_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
REF_NAME = "org.opencontainers.image.ref.name"

_CHUNK = 1 << 20
_GZIP = 31  # zlib wbits for a gzip container
_STORED = 65535  # max payload of one deflate "stored" block
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # no name, mtime 0, OS unknown

# compressed layer digest -> diff_id (sha256 of the uncompressed tar), so build_image need
# not gunzip a 256 MiB layer that make_layer/random_layer just produced.
_diff_ids: dict[str, str] = {}
_diff_ids_lock = threading.Lock()


def sha256_digest(data: bytes) -> str:
    """'sha256:<hex>' of `data`."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def host_architecture() -> str:
    """The GOARCH name of this machine, so containerd's platform matcher picks our images."""
    m = platform.machine().lower()
    return {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(m, m)


def _remember(layer: bytes, diff_id: str) -> str:
    digest = sha256_digest(layer)
    with _diff_ids_lock:
        _diff_ids[digest] = diff_id
    return digest


def diff_id(layer: bytes) -> str:
    """sha256 of the uncompressed tar inside a gzip'd layer (cached for layers built here)."""
    return _diff_id(layer, sha256_digest(layer))


def _diff_id(layer: bytes, digest: str) -> str:
    with _diff_ids_lock:
        known = _diff_ids.get(digest)
    if known is not None:
        return known
    d = zlib.decompressobj(_GZIP)
    h = hashlib.sha256()
    view = memoryview(layer)
    for i in range(0, len(view), _CHUNK):
        h.update(d.decompress(view[i : i + _CHUNK]))
    h.update(d.flush())
    known = "sha256:" + h.hexdigest()
    with _diff_ids_lock:
        _diff_ids[digest] = known
    return known


def make_layer(files: dict[str, bytes]) -> bytes:
    """A deterministic tar.gz holding `files` (path -> content), parent dirs included.

    Entries are sorted and timestamps zero, so equal input gives an equal digest.
    """
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs: set[str] = set()
        for path in sorted(files):
            parts = path.strip("/").split("/")
            for i in range(1, len(parts)):
                dirs.add("/".join(parts[:i]))
        for d in sorted(dirs):
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, 0
            tar.addfile(info)
        for path in sorted(files):
            data = files[path]
            info = tarfile.TarInfo(path.strip("/"))
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    tar_bytes = raw.getvalue()
    z = zlib.compressobj(6, zlib.DEFLATED, _GZIP)  # gzip header mtime is 0 with zlib
    layer = z.compress(tar_bytes) + z.flush()
    _remember(layer, sha256_digest(tar_bytes))
    return layer


@functools.lru_cache(maxsize=8)
def _seeded_layer(size: int, seed: int) -> bytes:
    return _random_layer(size, hashlib.sha256(b"regcache-layer-%d" % seed).digest())


def random_layer(size: int, seed: int | None = None) -> bytes:
    """A valid tar.gz of about `size` compressed bytes: one file of incompressible data.

    With a `seed` the layer is deterministic and cached for the session (a 256 MiB layer
    takes ~1.5 s to build here); without one every call gives new content and digest.
    """
    if seed is not None:
        return _seeded_layer(size, seed)
    return _random_layer(size, os.urandom(32))


def _random_layer(size: int, key: bytes) -> bytes:
    """One tar member of AES-CTR keystream (fast, seedable, incompressible), wrapped in gzip
    "stored" deflate blocks written by hand straight into the final buffer: ~0.5 s for
    256 MiB here, where zlib level 0 plus a join takes ~1.5 s. Compressed size ~= size
    (+5 bytes per 64 KiB block, +~2 KiB of tar framing)."""
    data_size = max(size - 2048, 0)
    info = tarfile.TarInfo("random.bin")
    info.size, info.mode, info.mtime = data_size, 0o644, 0
    header = info.tobuf(format=tarfile.USTAR_FORMAT)
    raw_len = len(header) + data_size + (-data_size) % 512 + 1024  # padding + end blocks
    nblocks = max(1, -(-raw_len // _STORED))
    total = len(_GZIP_HEADER) + raw_len + 5 * nblocks + 8
    buf = io.BytesIO()
    buf.seek(total - 1)
    buf.write(b"\0")  # the gap is zero-filled: the tar padding and end blocks are done
    mv = buf.getbuffer()
    mv[: len(_GZIP_HEADER)] = _GZIP_HEADER
    enc = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
    zero = memoryview(bytes(_STORED))
    data_end = len(header) + data_size
    pos, raw_off, crc, h = len(_GZIP_HEADER), 0, 0, hashlib.sha256()
    for i in range(nblocks):
        n = min(_STORED, raw_len - raw_off)
        mv[pos : pos + 5] = struct.pack("<BHH", 1 if i == nblocks - 1 else 0, n, n ^ 0xFFFF)
        pos += 5
        seg = mv[pos : pos + n]
        o = 0
        while o < n:
            r = raw_off + o
            if r < len(header):
                k = min(len(header) - r, n - o)
                seg[o : o + k] = header[r : r + k]
            elif r < data_end:
                k = min(data_end - r, n - o)
                seg[o : o + k] = enc.update(zero[:k])
            else:
                k = n - o
            o += k
        crc = zlib.crc32(seg, crc)
        h.update(seg)
        seg.release()
        pos += n
        raw_off += n
    mv[pos : pos + 8] = struct.pack("<II", crc & 0xFFFFFFFF, raw_len & 0xFFFFFFFF)
    mv.release()
    layer = buf.getvalue()  # no copy: BytesIO hands over its buffer
    _remember(layer, "sha256:" + h.hexdigest())
    return layer


@dataclass(frozen=True)
class Image:
    """One single-platform OCI image as written to an OCI layout."""

    manifest_digest: str
    manifest_bytes: bytes
    manifest_media_type: str
    config_digest: str
    config_bytes: bytes
    layer_digests: tuple[str, ...]
    layers: tuple[bytes, ...]
    layout_dir: Path
    tag: str
    diff_ids: tuple[str, ...] = ()

    def blob(self, digest: str) -> bytes:
        """The bytes of the manifest, config or a layer, by digest."""
        if digest == self.manifest_digest:
            return self.manifest_bytes
        if digest == self.config_digest:
            return self.config_bytes
        return self.layers[self.layer_digests.index(digest)]

    @property
    def blob_digests(self) -> tuple[str, ...]:
        """Config and layer digests: what a client fetches from /v2/<name>/blobs/."""
        return (self.config_digest, *self.layer_digests)


@dataclass(frozen=True)
class Index:
    """An OCI image index (multi-platform list) over Images in the same layout."""

    digest: str
    index_bytes: bytes
    media_type: str
    images: tuple[Image, ...]
    layout_dir: Path
    tag: str

    @property
    def manifest_digest(self) -> str:
        return self.digest

    @property
    def manifest_bytes(self) -> bytes:
        return self.index_bytes


def _canonical(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


_BIG_BLOB = 1 << 20
_blob_cache: Path | None = None


def _blob_cache_dir() -> Path:
    """A per-process store of big blobs, hard-linked into layouts: writing 256 MiB costs
    ~1.2 s on a slow disk, and each test tends to build its own layout."""
    global _blob_cache
    if _blob_cache is None:
        _blob_cache = Path(tempfile.mkdtemp(prefix="regcache-blobs-"))
        atexit.register(shutil.rmtree, _blob_cache, True)
    return _blob_cache


def _write_blob(layout: Path, data: bytes, digest: str | None = None) -> str:
    digest = digest or sha256_digest(data)
    path = layout / "blobs" / "sha256" / digest.split(":", 1)[1]
    if path.exists() and path.stat().st_size == len(data):
        return digest
    path.parent.mkdir(parents=True, exist_ok=True)
    if len(data) >= _BIG_BLOB:
        cached = _blob_cache_dir() / path.name
        if not cached.exists():
            tmp = cached.with_suffix(".tmp")
            tmp.write_bytes(data)
            tmp.replace(cached)
        try:
            os.link(cached, path)
            return digest
        except OSError:  # another filesystem: fall back to writing
            pass
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return digest


def _init_layout(layout: Path) -> None:
    layout.mkdir(parents=True, exist_ok=True)
    oci = layout / "oci-layout"
    if not oci.exists():
        oci.write_text('{"imageLayoutVersion":"1.0.0"}')


def _tag_in_index(layout: Path, descriptor: dict[str, object], tag: str) -> None:
    """Point `tag` at `descriptor` in index.json, replacing an older entry with that tag."""
    path = layout / "index.json"
    if path.exists():
        index = json.loads(path.read_text())
    else:
        index = {"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": []}
    index["manifests"] = [m for m in index["manifests"] if m.get("annotations", {}).get(REF_NAME) != tag]
    index["manifests"].append({**descriptor, "annotations": {REF_NAME: tag}})
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(index, indent=1))
    tmp.replace(path)


def build_image(
    layout_dir: Path | str,
    layers: list[bytes],
    tag: str,
    *,
    architecture: str | None = None,
    os_name: str = "linux",
    labels: dict[str, str] | None = None,
) -> Image:
    """Write an image with `layers` (gzip'd tars) into the OCI layout at `layout_dir`.

    Several images may share one layout under different tags. `labels` go into the config,
    which is the cheap way to get distinct manifests over the same layers.
    """
    layout = Path(layout_dir)
    _init_layout(layout)
    arch = architecture or host_architecture()
    layer_digests = tuple(sha256_digest(layer) for layer in layers)  # hashed once: 256 MiB is slow
    diff_ids = tuple(_diff_id(layer, d) for layer, d in zip(layers, layer_digests, strict=True))
    for layer, d in zip(layers, layer_digests, strict=True):
        _write_blob(layout, layer, d)
    config: dict[str, object] = {
        "architecture": arch,
        "os": os_name,
        "created": "2024-01-01T00:00:00Z",
        "config": {"Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
    }
    if labels:
        config["config"] = {**config["config"], "Labels": labels}  # type: ignore[dict-item]
    config_bytes = _canonical(config)
    config_digest = _write_blob(layout, config_bytes)
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": {
            "mediaType": CONFIG_MEDIA_TYPE,
            "digest": config_digest,
            "size": len(config_bytes),
        },
        "layers": [
            {"mediaType": LAYER_MEDIA_TYPE, "digest": d, "size": len(b)}
            for d, b in zip(layer_digests, layers, strict=True)
        ],
    }
    manifest_bytes = _canonical(manifest)
    manifest_digest = _write_blob(layout, manifest_bytes)
    _tag_in_index(
        layout,
        {
            "mediaType": MANIFEST_MEDIA_TYPE,
            "digest": manifest_digest,
            "size": len(manifest_bytes),
            "platform": {"architecture": arch, "os": os_name},
        },
        tag,
    )
    return Image(
        manifest_digest=manifest_digest,
        manifest_bytes=manifest_bytes,
        manifest_media_type=MANIFEST_MEDIA_TYPE,
        config_digest=config_digest,
        config_bytes=config_bytes,
        layer_digests=layer_digests,
        layers=tuple(layers),
        layout_dir=layout,
        tag=tag,
        diff_ids=diff_ids,
    )


def build_index(layout_dir: Path | str, images: list[Image], tag: str) -> Index:
    """Write an OCI image index over `images` (already in this layout) and tag it."""
    layout = Path(layout_dir)
    _init_layout(layout)
    manifests = []
    for img in images:
        cfg = json.loads(img.config_bytes)
        manifests.append(
            {
                "mediaType": img.manifest_media_type,
                "digest": img.manifest_digest,
                "size": len(img.manifest_bytes),
                "platform": {"architecture": cfg["architecture"], "os": cfg["os"]},
            }
        )
    index_bytes = _canonical({"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": manifests})
    digest = _write_blob(layout, index_bytes)
    _tag_in_index(layout, {"mediaType": INDEX_MEDIA_TYPE, "digest": digest, "size": len(index_bytes)}, tag)
    return Index(
        digest=digest,
        index_bytes=index_bytes,
        media_type=INDEX_MEDIA_TYPE,
        images=tuple(images),
        layout_dir=layout,
        tag=tag,
    )


def push(
    image: Image | Index,
    dest_ref: str,
    *,
    creds: tuple[str, str] | None = None,
    tls_verify: bool = False,
    cert_dir: Path | str | None = None,
    timeout: float = 300,
) -> None:
    """Push `image` to `dest_ref` ("127.0.0.1:PORT/repo:tag") unchanged, byte for byte.

    Raises RuntimeError when skopeo fails or the registry reports a different manifest
    digest (skopeo must never re-encode a test image).
    """
    skopeo = require("skopeo")
    with tempfile.TemporaryDirectory(prefix="regcache-push-") as tmp:
        digestfile = Path(tmp) / "digest"
        argv = [
            skopeo,
            "--insecure-policy",
            "copy",
            "--quiet",
            "--preserve-digests",
            f"--digestfile={digestfile}",
            f"--dest-tls-verify={'true' if tls_verify else 'false'}",
        ]
        if isinstance(image, Index):
            argv.append("--all")
        if creds is not None:
            argv.append(f"--dest-creds={creds[0]}:{creds[1]}")
        else:
            argv.append("--dest-no-creds")
        if cert_dir is not None:
            argv.append(f"--dest-cert-dir={cert_dir}")
        argv += [f"oci:{image.layout_dir}:{image.tag}", f"docker://{dest_ref}"]
        # A private XDG_RUNTIME_DIR/HOME keeps a developer's auth.json out of the push.
        env = clean_env(XDG_RUNTIME_DIR=tmp, HOME=tmp, TMPDIR=tmp)
        res = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=timeout)
        if res.returncode != 0:
            raise RuntimeError(f"skopeo push to {dest_ref} failed ({res.returncode}):\n{res.stdout}{res.stderr}")
        pushed = digestfile.read_text().strip()
    if pushed != image.manifest_digest:
        raise RuntimeError(f"skopeo changed the manifest: pushed {pushed}, built {image.manifest_digest}")
