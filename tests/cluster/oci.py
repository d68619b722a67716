"""OCI images without Docker: a gzip layer tarball, a config and a manifest, pushed to a
registry with the distribution API (blob upload POST + PUT, manifest PUT). Plain HTTP
only: the registries this talks to are the test's own, on a host address.

Shared by the cluster test (tests/cluster/e2e.py, image.py) and the benchmarks
(bench/seed.py, bench/platforms), which put this folder on sys.path: the media types,
descriptors, manifest and index bodies, and the registry client live only here."""

import gzip
import hashlib
import http.client
import io
import json
import tarfile
import threading

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
# The Accept header of a manifest HEAD or GET that takes any of the four kinds.
MANIFEST_ACCEPT = ", ".join([OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST])


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def descriptor(media_type: str, data: bytes) -> dict:
    """The descriptor of a blob or manifest: media type, digest and size."""
    return {"mediaType": media_type, "digest": digest(data), "size": len(data)}


def manifest(config: bytes, layers, docker=False) -> dict:
    """An image manifest (OCI, or Docker v2s2 when `docker`) of a config and gzip'd layers."""
    return {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST if docker else OCI_MANIFEST,
        "config": descriptor(DOCKER_CONFIG if docker else OCI_CONFIG, config),
        "layers": [descriptor(DOCKER_LAYER if docker else OCI_LAYER, layer) for layer in layers],
    }


def index_manifest(manifests, docker=False) -> dict:
    """An OCI index (or a Docker manifest list when `docker`) of manifest descriptors."""
    return {"schemaVersion": 2, "mediaType": DOCKER_LIST if docker else OCI_INDEX, "manifests": manifests}


class Layer:
    """A layer's content: directories, files (bytes or a host path) and symlinks, owned by
    root unless said otherwise, with fixed timestamps so the same content gives the same
    digest."""

    def __init__(self):
        self.entries = []

    def dir(self, path, mode=0o755):
        self.entries.append(("dir", path.strip("/"), mode, None))
        return self

    def file(self, path, data=None, src=None, mode=0o644):
        if src is not None:
            with open(src, "rb") as f:
                data = f.read()
        self.entries.append(("file", path.strip("/"), mode, data))
        return self

    def symlink(self, path, target):
        self.entries.append(("symlink", path.strip("/"), 0o777, target))
        return self

    def paths(self):
        return sorted("/" + e[1] for e in self.entries if e[0] != "dir")

    def tar(self) -> bytes:
        """(uncompressed tar, gzip of it)"""
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
            seen = set()
            for kind, path, mode, data in self.entries:
                parts = path.split("/")
                for i in range(1, len(parts)):
                    parent = "/".join(parts[:i])
                    if parent not in seen:
                        seen.add(parent)
                        info = tarfile.TarInfo(parent)
                        info.type, info.mode = tarfile.DIRTYPE, 0o755
                        tar.addfile(info)
                if path in seen:
                    continue
                seen.add(path)
                info = tarfile.TarInfo(path)
                info.mode = mode
                if kind == "dir":
                    info.type = tarfile.DIRTYPE
                    tar.addfile(info)
                elif kind == "symlink":
                    info.type, info.linkname = tarfile.SYMTYPE, data
                    tar.addfile(info)
                else:
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        plain = raw.getvalue()
        return plain, gzip.compress(plain, compresslevel=1, mtime=0)


class Registry:
    """A plain-HTTP registry at host:port, over keep-alive connections (one per thread, so
    one Registry serves a thread pool); a dropped connection is retried twice."""

    def __init__(self, address: str, timeout=300):
        self.address = address
        self.timeout = timeout
        self.local = threading.local()

    def _conn(self):
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = http.client.HTTPConnection(self.address, timeout=self.timeout)
            self.local.conn = conn
        return conn

    def request(self, method, path, body=None, headers=None, expect=(200, 201, 202)):
        """The response (body read) of a request; raises unless its status is in `expect`."""
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

    def push_blob(self, repo: str, data: bytes) -> str:
        """Uploads a blob unless the repository has it; returns its digest."""
        d = digest(data)
        head = self.request("HEAD", f"/v2/{repo}/blobs/{d}", expect=(200, 404))
        if head.status == 200:
            return d
        started = self.request("POST", f"/v2/{repo}/blobs/uploads/", headers={"Content-Length": "0"})
        location = started.getheader("Location")
        if location.startswith("http"):
            location = "/" + location.split("/", 3)[3]
        sep = "&" if "?" in location else "?"
        self.request(
            "PUT",
            f"{location}{sep}digest={d}",
            body=data,
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(len(data))},
            expect=(201,),
        )
        return d

    def push_manifest(self, repo: str, ref: str, body: bytes, media_type: str) -> str:
        """PUTs a manifest under a tag or digest; returns its digest."""
        self.request(
            "PUT",
            f"/v2/{repo}/manifests/{ref}",
            body=body,
            headers={"Content-Type": media_type, "Content-Length": str(len(body))},
            expect=(201,),
        )
        return digest(body)


def image(registry, repo, tag, layers, config=None, docker=False, arch="amd64", annotations=None):
    """Pushes an image (one manifest) and returns (digest, descriptor)."""
    diff_ids, blobs = [], []
    for layer in layers:
        plain, gz = layer.tar()
        diff_ids.append(digest(plain))
        registry.push_blob(repo, gz)
        blobs.append(gz)
    cfg = {
        "architecture": arch,
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": config or {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }
    cfg_bytes = json.dumps(cfg, sort_keys=True).encode()
    registry.push_blob(repo, cfg_bytes)
    body = manifest(cfg_bytes, blobs, docker)
    if annotations:
        body["annotations"] = annotations
    data = json.dumps(body, sort_keys=True).encode()
    d = registry.push_manifest(repo, tag, data, body["mediaType"])
    return d, {"mediaType": body["mediaType"], "digest": d, "size": len(data), "platform": {"architecture": arch, "os": "linux"}}


def index(registry, repo, tag, manifests, docker=False):
    """Pushes an index (OCI) or manifest list (Docker) of already pushed manifests."""
    body = index_manifest(manifests, docker)
    return registry.push_manifest(repo, tag, json.dumps(body, sort_keys=True).encode(), body["mediaType"])
