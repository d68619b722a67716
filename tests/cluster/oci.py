"""OCI images without Docker: a gzip layer tarball, a config and a manifest, pushed to a
registry with the distribution API (blob upload POST + PUT, manifest PUT). Plain HTTP
only: the registries this talks to are the test's own, on a host address."""

import gzip
import hashlib
import io
import json
import tarfile
import urllib.error
import urllib.request

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


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
    """A plain-HTTP registry at host:port."""

    def __init__(self, address: str):
        self.base = f"http://{address}"

    def _request(self, method, path, data=None, headers=None):
        req = urllib.request.Request(self.base + path, data=data, method=method, headers=headers or {})
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, dict(resp.headers), resp.read()

    def push_blob(self, repo: str, data: bytes) -> str:
        d = digest(data)
        try:
            self._request("HEAD", f"/v2/{repo}/blobs/{d}")
            return d
        except urllib.error.HTTPError:
            pass
        _, headers, _ = self._request("POST", f"/v2/{repo}/blobs/uploads/")
        location = headers["Location"]
        if location.startswith("/"):
            location = self.base + location
        sep = "&" if "?" in location else "?"
        req = urllib.request.Request(
            f"{location}{sep}digest={d}",
            data=data,
            method="PUT",
            headers={"Content-Type": "application/octet-stream"},
        )
        with urllib.request.urlopen(req, timeout=300):
            pass
        return d

    def push_manifest(self, repo: str, ref: str, body: bytes, media_type: str) -> str:
        self._request("PUT", f"/v2/{repo}/manifests/{ref}", data=body, headers={"Content-Type": media_type})
        return digest(body)


def image(registry, repo, tag, layers, config=None, docker=False, arch="amd64", annotations=None):
    """Pushes an image (one manifest) and returns (digest, descriptor)."""
    diff_ids, descriptors = [], []
    for layer in layers:
        plain, gz = layer.tar()
        diff_ids.append(digest(plain))
        descriptors.append(
            {"mediaType": DOCKER_LAYER if docker else OCI_LAYER, "digest": registry.push_blob(repo, gz), "size": len(gz)}
        )
    cfg = {
        "architecture": arch,
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": config or {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }
    cfg_bytes = json.dumps(cfg, sort_keys=True).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST if docker else OCI_MANIFEST,
        "config": {
            "mediaType": DOCKER_CONFIG if docker else OCI_CONFIG,
            "digest": registry.push_blob(repo, cfg_bytes),
            "size": len(cfg_bytes),
        },
        "layers": descriptors,
    }
    if annotations:
        manifest["annotations"] = annotations
    body = json.dumps(manifest, sort_keys=True).encode()
    d = registry.push_manifest(repo, tag, body, manifest["mediaType"])
    return d, {"mediaType": manifest["mediaType"], "digest": d, "size": len(body), "platform": {"architecture": arch, "os": "linux"}}


def index(registry, repo, tag, manifests, docker=False):
    """Pushes an index (OCI) or manifest list (Docker) of already pushed manifests."""
    media = DOCKER_LIST if docker else OCI_INDEX
    body = json.dumps({"schemaVersion": 2, "mediaType": media, "manifests": manifests}, sort_keys=True).encode()
    return registry.push_manifest(repo, tag, body, media)
