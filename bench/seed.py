"""Seeds the benchmark's upstream registry with N generated images, and moves tags.

Used by bench/run. Images are built here (gzip'd tar layers, config, manifests; sha256
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
import hashlib
import http.client
import io
import json
import random
import tarfile
import threading
from concurrent.futures import ThreadPoolExecutor

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"

TAG = "v1"
PLATFORMS = [("linux", "amd64"), ("linux", "arm64")]


def repo_name(i):
    return f"bench/app-{i:04d}"


def moved_indices(n):
    return [i for i in range(n) if i % 20 == 0]


def large_indices(n, large_count):
    return [i for i in range(1, n) if i % 20 != 0][:large_count]


def sha(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


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
    return gzip.compress(raw, compresslevel=1, mtime=0), sha(raw)


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
        image.blobs[sha(config)] = config
        for layer in layers:
            image.blobs[sha(layer)] = layer
        manifest = {
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST if docker else OCI_MANIFEST,
            "config": {"mediaType": DOCKER_CONFIG if docker else OCI_CONFIG, "digest": sha(config), "size": len(config)},
            "layers": [
                {"mediaType": DOCKER_LAYER if docker else OCI_LAYER, "digest": sha(layer), "size": len(layer)}
                for layer in layers
            ],
        }
        data = json.dumps(manifest, indent=3).encode()
        return (sha(data), manifest["mediaType"], data)

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
        index = {"schemaVersion": 2, "mediaType": DOCKER_LIST if docker else OCI_INDEX, "manifests": entries}
        data = json.dumps(index, indent=3).encode()
        image.top = (sha(data), index["mediaType"], data)
    else:
        image.top = single(PLATFORMS[0], large_mb * 1024 * 1024 if is_large else 0)
    return image


class Pusher:
    """Pushes to a Distribution registry on 127.0.0.1 over keep-alive connections, one per thread."""

    def __init__(self, port):
        self.port = port
        self.local = threading.local()

    def _conn(self):
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
            self.local.conn = conn
        return conn

    def request(self, method, path, body=None, headers=None, expect=(200, 201, 202)):
        for attempt in range(3):
            conn = self._conn()
            try:
                conn.request(method, path, body=body, headers=headers or {})
                response = conn.getresponse()
                payload = response.read()
            except (http.client.HTTPException, OSError):
                conn.close()
                self.local.conn = None
                if attempt == 2:
                    raise
                continue
            if response.status not in expect:
                raise RuntimeError(f"{method} {path}: {response.status} {payload[:300]!r}")
            return response
        raise RuntimeError("unreachable")

    def blob(self, repo, digest, data):
        head = self.request("HEAD", f"/v2/{repo}/blobs/{digest}", expect=(200, 404))
        if head.status == 200:
            return
        started = self.request("POST", f"/v2/{repo}/blobs/uploads/", headers={"Content-Length": "0"})
        location = started.getheader("Location")
        if location.startswith("http"):
            location = "/" + location.split("/", 3)[3]
        sep = "&" if "?" in location else "?"
        self.request(
            "PUT",
            f"{location}{sep}digest={digest}",
            body=data,
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(len(data))},
            expect=(201,),
        )

    def manifest(self, repo, reference, media_type, data):
        self.request(
            "PUT",
            f"/v2/{repo}/manifests/{reference}",
            body=data,
            headers={"Content-Type": media_type, "Content-Length": str(len(data))},
            expect=(201,),
        )


class Upstream:
    """The seeded images of one upstream registry, and the tag moves on it."""

    def __init__(self, port, n, large_count, large_mb, workers=8):
        self.pusher = Pusher(port)
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
        for digest, data in image.blobs.items():
            self.pusher.blob(repo, digest, data)
        for digest, media_type, data in image.children:
            self.pusher.manifest(repo, digest, media_type, data)
        digest, media_type, data = image.top
        self.pusher.manifest(repo, tag or digest, media_type, data)
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
            self.pusher.manifest(repo_name(i), TAG, media_type, data)
            self.current[i] = digest

    def reset(self, n):
        for i in moved_indices(n):
            digest, media_type, data = self.original[i]
            self.pusher.manifest(repo_name(i), TAG, media_type, data)
            self.current[i] = digest
