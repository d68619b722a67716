"""image-sync's container image without Docker or Nix, for the cluster test: the same
contents as the flake's image (flake.nix, mkImage) assembled from binaries of this machine,
and a tiny sandbox ("pause") image. Differences from the flake's image are listed in
docs/src/cluster.md; tests/deploy/test_image.py compares CONTENTS with flake.nix.

  python3 tests/cluster/image.py --registry ADDR:PORT --image-sync target/debug/image-sync

pushes ADDR:PORT/image-sync:test and ADDR:PORT/pause:1 and prints their references;
`--build-tools` only builds the static crane and the pause binary (scripts/install-test-tools)."""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import oci  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CRANE_VERSION = "v0.22.1"

# What the flake's image holds (flake.nix: mkImage's `contents` and `config`), by the name
# flake.nix gives each, and where this image has the same thing.
CONTENTS = {
    "image-sync": "/bin/image-sync",
    "pkgs.crane": "/bin/crane",
    "pkgs.skopeo": "/bin/skopeo",
    "pkgs.cacert": "/etc/ssl/certs/ca-bundle.crt",
    "policyJson": "/etc/containers/policy.json",
    "passwd": "/etc/passwd",
    "group": "/etc/group",
}
CONFIG = {
    "Entrypoint": ["/bin/image-sync"],
    "User": "65532:65532",
    "WorkingDir": "/tmp",
    "Env": ["SSL_CERT_FILE=/etc/ssl/certs/ca-bundle.crt", "HOME=/tmp", "PATH=/bin"],
    "Labels": {
        "org.opencontainers.image.source": "https://github.com/pleme-io/image-sync",
        "org.opencontainers.image.version": "test",
    },
}
PASSWD = "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/tmp:/sbin/nologin\n"
GROUP = "root:x:0:\nnonroot:x:65532:\n"
POLICY = '{"default":[{"type":"insecureAcceptAnything"}]}'

PAUSE_GO = """// The sandbox container: sleeps until it is told to stop.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGTERM, syscall.SIGINT)
	<-c
}
"""


def tools_dir():
    path = os.environ.get("IMAGE_SYNC_CLUSTER_TOOLS_DIR", os.path.join(REPO, "target", "cluster-tools"))
    os.makedirs(path, exist_ok=True)
    return path


def go_env():
    env = dict(os.environ, CGO_ENABLED="0", GOFLAGS="-mod=mod -buildvcs=false")
    return env


def static_crane():
    """crane built with CGO_ENABLED=0 (a static binary), cached."""
    out = tools_dir()
    crane = os.path.join(out, "crane")
    if not os.path.exists(crane):
        subprocess.run(
            ["go", "install", f"github.com/google/go-containerregistry/cmd/crane@{CRANE_VERSION}"],
            env=dict(go_env(), GOBIN=out),
            check=True,
        )
    return crane


def pause_binary():
    out = tools_dir()
    pause = os.path.join(out, "pause")
    if not os.path.exists(pause):
        with tempfile.TemporaryDirectory() as work:
            with open(os.path.join(work, "main.go"), "w") as f:
                f.write(PAUSE_GO)
            subprocess.run(["go", "mod", "init", "pause"], cwd=work, check=True, capture_output=True)
            subprocess.run(["go", "build", "-trimpath", "-ldflags", "-s -w", "-o", pause, "."], cwd=work, env=go_env(), check=True)
    return pause


def shared_libraries(binary):
    """The host paths of the shared libraries BINARY loads (ldd), loader included."""
    out = subprocess.run(["ldd", binary], capture_output=True, text=True)
    libs = []
    for line in out.stdout.splitlines():
        parts = line.split()
        if "=>" in parts and len(parts) >= 3 and parts[2].startswith("/"):
            libs.append(parts[2])
        elif parts and parts[0].startswith("/"):
            libs.append(parts[0])
    return libs


def image_sync_layer(image_sync, skopeo, crane):
    """The image's one layer: binaries (glibc ones with their libraries), CA bundle, skopeo's
    policy, the non-root user, /tmp and /var/tmp."""
    layer = oci.Layer()
    with tempfile.TemporaryDirectory() as work:
        stripped = os.path.join(work, "image-sync")
        subprocess.run(["strip", "-o", stripped, image_sync], check=True)
        layer.file("/bin/image-sync", src=stripped, mode=0o755)
    layer.file("/bin/crane", src=crane, mode=0o755)
    layer.file("/bin/skopeo", src=skopeo, mode=0o755)
    libs = set()
    for binary in (image_sync, skopeo, crane):
        libs.update(shared_libraries(binary))
    for lib in sorted(libs):
        layer.file(lib, src=os.path.realpath(lib), mode=0o755)
    bundle = "/etc/ssl/certs/ca-certificates.crt"
    layer.file("/etc/ssl/certs/ca-bundle.crt", src=bundle)
    layer.symlink("/etc/ssl/certs/ca-certificates.crt", "ca-bundle.crt")
    layer.file("/etc/containers/policy.json", POLICY.encode())
    layer.file("/etc/passwd", PASSWD.encode())
    layer.file("/etc/group", GROUP.encode())
    layer.dir("/tmp", 0o1777)
    layer.dir("/var/tmp", 0o1777)
    return layer


def push_image_sync(registry_address, image_sync, repo="image-sync", tag="test"):
    skopeo = shutil.which("skopeo")
    if not skopeo:
        raise SystemExit("skopeo is not installed (scripts/install-test-tools)")
    layer = image_sync_layer(image_sync, skopeo, static_crane())
    registry = oci.Registry(registry_address)
    digest, _ = oci.image(registry, repo, tag, [layer], config=CONFIG)
    return f"{registry_address}/{repo}:{tag}", digest, layer.paths()


def push_pause(registry_address, repo="pause", tag="1"):
    layer = oci.Layer().file("/pause", src=pause_binary(), mode=0o755)
    registry = oci.Registry(registry_address)
    digest, _ = oci.image(registry, repo, tag, [layer], config={"Entrypoint": ["/pause"], "User": "65535:65535"})
    return f"{registry_address}/{repo}:{tag}", digest


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--registry", help="ADDR:PORT of a plain-HTTP registry")
    parser.add_argument("--image-sync", default=os.path.join(REPO, "target", "debug", "image-sync"))
    parser.add_argument("--build-tools", action="store_true", help="only build (or find) the static crane and pause binaries, then exit")
    args = parser.parse_args()
    if args.build_tools:
        print(static_crane())
        print(pause_binary())
        return
    if not args.registry:
        parser.error("--registry is required")
    ref, digest, paths = push_image_sync(args.registry, args.image_sync)
    print(f"{ref}@{digest}")
    for path in paths:
        print("  " + path, file=sys.stderr)
    ref, digest = push_pause(args.registry)
    print(f"{ref}@{digest}")


if __name__ == "__main__":
    main()
