"""Seeds the benchmark's upstream registry with N generated images, and moves tags.

Used by bench/run and bench/referrers. Images are built here (gzip'd tar layers, config, manifests; sha256
computed in Python) and pushed straight to the upstream Distribution registry's HTTP
API on 127.0.0.1 (monolithic blob upload POST + PUT, manifest PUT), bypassing the delay
proxy, so seeding 2,000 images takes seconds instead of minutes of `skopeo copy`.

The mix, for image i (repository `bench/app-NNNN`, tag `v1`):
- i % 3 == 0: a multi-arch image: an index (OCI index or Docker manifest list,
  alternating) over linux/amd64 and linux/arm64 manifests;
- otherwise a single manifest (OCI or Docker v2s2, alternating);
- every manifest has its own small (about 2-5 KiB compressed) layer, so all digests differ;
- the `large_count` images from index 1 on (never a moved one) also carry one large
  incompressible layer of `large_mb` MiB, for copy throughput.

Moving tags: every image with i % 20 == 0 (5 %, at least one) gets a second variant
(new layers, new config, new manifests) whose manifests and blobs are pushed by digest
at seed time; `move()` PUTs the variant's top-level manifest under the tag, `reset()`
puts the original back.
"""

import gzip
import io
import json
import os
import random
import sys
import tarfile
import threading
from concurrent.futures import ThreadPoolExecutor

# The OCI helpers (media types, manifest bodies, the registry client) shared with the
# cluster test.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "cluster"))
import oci  # noqa: E402

TAG = "v1"
PLATFORMS = [("linux", "amd64"), ("linux", "arm64")]


def repo_name(i):
    return f"bench/app-{i:04d}"


def moved_indices(n):
    return [i for i in range(n) if i % 20 == 0]


def large_indices(n, large_count):
    return [i for i in range(1, n) if i % 20 != 0][:large_count]


def make_layer(label, rng, extra_bytes=0):
    """A gzip'd tar with one small file (distinct per label) and optionally a big one."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        payload = (label + "\n").encode() + rng.randbytes(rng.randint(2048, 5120))
        info = tarfile.TarInfo(f"bench/{label}.bin")
        info.size = len(payload)
        info.mtime = 0
        tar.addfile(info, io.BytesIO(payload))
        if extra_bytes:
            info = tarfile.TarInfo(f"bench/{label}.large")
            info.size = extra_bytes
            info.mtime = 0
            tar.addfile(info, io.BytesIO(rng.randbytes(extra_bytes)))
    raw = buf.getvalue()
    return gzip.compress(raw, compresslevel=1, mtime=0), oci.digest(raw)


class Image:
    """One tag's content: blobs and manifests to push, and the top-level manifest."""

    def __init__(self):
        self.blobs = {}  # digest -> bytes
        self.children = []  # (digest, media type, bytes) pushed by digest before the top
        self.top = None  # (digest, media type, bytes)


def build_image(i, variant, large_mb, is_large):
    rng = random.Random(f"image-sync-bench/{i}/{variant}")
    image = Image()
    docker = i % 2 == 1

    def single(platform, extra_bytes):
        os_name, arch = platform
        label = f"app-{i:04d}-v{variant}-{arch}"
        layers = []
        diff_ids = []
        layer, diff_id = make_layer(label, rng)
        layers.append(layer)
        diff_ids.append(diff_id)
        if extra_bytes:
            layer, diff_id = make_layer(label + "-large", rng, extra_bytes)
            layers.append(layer)
            diff_ids.append(diff_id)
        config = json.dumps(
            {
                "architecture": arch,
                "os": os_name,
                "config": {"Labels": {"bench.image": label}},
                "rootfs": {"type": "layers", "diff_ids": diff_ids},
            },
            separators=(",", ":"),
        ).encode()
        image.blobs[oci.digest(config)] = config
        for layer in layers:
            image.blobs[oci.digest(layer)] = layer
        manifest = oci.manifest(config, layers, docker)
        data = json.dumps(manifest, indent=3).encode()
        return (oci.digest(data), manifest["mediaType"], data)

    if i % 3 == 0:
        entries = []
        for platform in PLATFORMS:
            child = single(platform, 0)
            image.children.append(child)
            entries.append(
                {
                    "mediaType": child[1],
                    "digest": child[0],
                    "size": len(child[2]),
                    "platform": {"os": platform[0], "architecture": platform[1]},
                }
            )
        index = oci.index_manifest(entries, docker)
        data = json.dumps(index, indent=3).encode()
        image.top = (oci.digest(data), index["mediaType"], data)
    else:
        image.top = single(PLATFORMS[0], large_mb * 1024 * 1024 if is_large else 0)
    return image


class Upstream:
    """The seeded images of one upstream registry, and the tag moves on it."""

    def __init__(self, port, n, large_count, large_mb, workers=8):
        self.registry = oci.Registry(f"127.0.0.1:{port}", timeout=120)
        self.n = n
        self.large = set(large_indices(n, large_count))
        self.large_mb = large_mb
        self.original = {}  # i -> (digest, media type, bytes)
        self.variant = {}
        self.current = {}  # i -> digest under the tag now
        self.bytes_total = 0
        self._lock = threading.Lock()
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(self._seed_one, range(n)))

    def _push(self, i, image, tag):
        repo = repo_name(i)
        for data in image.blobs.values():
            self.registry.push_blob(repo, data)
        for digest, media_type, data in image.children:
            self.registry.push_manifest(repo, digest, data, media_type)
        digest, media_type, data = image.top
        self.registry.push_manifest(repo, tag or digest, data, media_type)
        return sum(len(b) for b in image.blobs.values())

    def _seed_one(self, i):
        image = build_image(i, 0, self.large_mb, i in self.large)
        pushed = self._push(i, image, TAG)
        with self._lock:
            self.bytes_total += pushed
        self.original[i] = image.top
        self.current[i] = image.top[0]
        if i % 20 == 0:
            alt = build_image(i, 1, self.large_mb, False)
            self._push(i, alt, None)  # by digest: no tag moves yet
            self.variant[i] = alt.top

    def kind(self, i):
        return "index" if i % 3 == 0 else ("large" if i in self.large else "single")

    def move(self, n):
        """Moves the tag of 5 % of the first n images to their second variant."""
        for i in moved_indices(n):
            digest, media_type, data = self.variant[i]
            self.registry.push_manifest(repo_name(i), TAG, data, media_type)
            self.current[i] = digest

    def reset(self, n):
        for i in moved_indices(n):
            digest, media_type, data = self.original[i]
            self.registry.push_manifest(repo_name(i), TAG, data, media_type)
            self.current[i] = digest
