{
  description = "image-sync: digest-first container image cache synchronizer (binary, OCI image, release)";

  # nixpkgs only. A release branch keeps crane/skopeo/cacert on a stable line;
  # `nix flake lock` (or the first `nix build`) writes flake.lock, commit it.
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.05";

  outputs =
    { self, nixpkgs }:
    let
      lib = nixpkgs.lib;

      # The single source of truth for the version: the image tag, the
      # release tags and the package version all come from Cargo.toml.
      cargoToml = builtins.fromTOML (builtins.readFile ./Cargo.toml);
      pname = cargoToml.package.name;
      version = cargoToml.package.version;

      imageName = "ghcr.io/pleme-io/image-sync";

      # Images are Linux-only; the binary and the dev shell also build on macOS.
      linuxSystems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      allSystems = linuxSystems ++ [
        "x86_64-darwin"
        "aarch64-darwin"
      ];
      forSystems = systems: f: lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});

      # Linux-only outputs (the container image) merged into per-system sets.
      isLinux = pkgs: builtins.elem pkgs.stdenv.hostPlatform.system linuxSystems;

      mkImageSync =
        pkgs:
        pkgs.rustPlatform.buildRustPackage {
          inherit pname version;
          src = lib.cleanSource ./.;
          cargoLock.lockFile = ./Cargo.lock;

          nativeBuildInputs = [
            pkgs.makeWrapper
            pkgs.installShellFiles
          ];

          # Only the unit tests run in the build sandbox. The end-to-end
          # tests (tests/e2e) start local registries and reach the network,
          # which the Nix sandbox forbids; CI runs them outside Nix.
          cargoTestFlags = lib.optional (builtins.pathExists ./src/lib.rs) "--lib" ++ [ "--bins" ];

          # Completions and the man page come from the binary itself (clap_complete,
          # clap_mangen), so they always match its flags; skipped when cross-compiling,
          # where the build machine cannot run it.
          postInstall =
            lib.optionalString (pkgs.stdenv.buildPlatform.canExecute pkgs.stdenv.hostPlatform) ''
              installShellCompletion --cmd ${pname} \
                --bash <($out/bin/${pname} completions bash) \
                --zsh <($out/bin/${pname} completions zsh) \
                --fish <($out/bin/${pname} completions fish)
              $out/bin/${pname} man > ${pname}.1
              installManPage ${pname}.1
            ''
            # image-sync shells out to crane (primary) and skopeo (fallback):
            # pin both next to the binary instead of trusting the caller's PATH.
            + ''
              wrapProgram $out/bin/${pname} \
                --prefix PATH : ${
                  lib.makeBinPath [
                    pkgs.crane
                    pkgs.skopeo
                  ]
                }
            '';

          meta = {
            description = cargoToml.package.description or "Container image cache synchronizer";
            mainProgram = pname;
            platforms = lib.platforms.unix;
          };
        };

      mkImage =
        pkgs:
        let
          image-sync = mkImageSync pkgs;

          # skopeo refuses to run without a signature policy. The cache is
          # filled from public registries that do not sign consistently, so
          # accept everything, as the policy shipped by containers/image does.
          policyJson = pkgs.writeTextDir "etc/containers/policy.json" (
            builtins.toJSON {
              default = [ { type = "insecureAcceptAnything"; } ];
            }
          );

          # A passwd/group entry for the numeric runtime user, so tools that
          # look the current user up (Go's os/user) do not fail.
          passwd = pkgs.writeTextDir "etc/passwd" ''
            root:x:0:0:root:/root:/sbin/nologin
            nonroot:x:65532:65532:nonroot:/tmp:/sbin/nologin
          '';
          group = pkgs.writeTextDir "etc/group" ''
            root:x:0:
            nonroot:x:65532:
          '';
        in
        pkgs.dockerTools.buildLayeredImage {
          name = imageName;
          tag = version;
          contents = [
            image-sync
            pkgs.crane
            pkgs.skopeo
            pkgs.cacert
            policyJson
            passwd
            group
          ];
          # /tmp must exist (and be world-writable) for runs without a
          # mounted emptyDir, e.g. `docker run`; skopeo otherwise wants /var/tmp.
          extraCommands = ''
            mkdir -p tmp var/tmp
            chmod 1777 tmp var/tmp
          '';
          config = {
            Entrypoint = [ "${image-sync}/bin/${pname}" ];
            # Numeric so Kubernetes can enforce runAsNonRoot without a lookup;
            # matches runAsUser in the CronJob.
            User = "65532:65532";
            WorkingDir = "/tmp";
            Env = [
              "SSL_CERT_FILE=${pkgs.cacert}/etc/ssl/certs/ca-bundle.crt"
              "HOME=/tmp"
              "PATH=/bin"
            ];
            Labels = {
              "org.opencontainers.image.source" = "https://github.com/pleme-io/image-sync";
              "org.opencontainers.image.version" = version;
            };
          };
        };
    in
    {
      packages = forSystems allSystems (
        pkgs:
        {
          default = mkImageSync pkgs;
        }
        // lib.optionalAttrs (isLinux pkgs) {
          image = mkImage pkgs;
        }
      );

      apps = forSystems allSystems (
        pkgs:
        let
          system = pkgs.stdenv.hostPlatform.system;
          # Pushes one image per architecture, then joins them into one
          # multi-arch index under the plain version tag. Building the other
          # architecture's image needs a builder for it (remote builder or
          # binfmt emulation, e.g. boot.binfmt.emulatedSystems on NixOS).
          # Credentials come from the usual docker config
          # ($DOCKER_CONFIG/config.json or ~/.docker/config.json), e.g. after
          # `crane auth login ghcr.io -u USER --password-stdin`.
          release = pkgs.writeShellApplication {
            name = "image-sync-release";
            runtimeInputs = [
              pkgs.crane
              pkgs.skopeo
            ];
            text = ''
              repo="${imageName}"
              version="${version}"
              authfile="''${DOCKER_CONFIG:-$HOME/.docker}/config.json"

              push() {
                # skopeo reads the gzipped docker-archive nix produces
                # (crane push expects an uncompressed tarball).
                # --insecure-policy: the local machine may have no
                # /etc/containers/policy.json; we are pushing our own build.
                skopeo --insecure-policy copy \
                  --authfile "$authfile" \
                  "docker-archive:$1" "docker://$repo:$version-$2"
              }

              push "${self.packages.x86_64-linux.image}" amd64
              push "${self.packages.aarch64-linux.image}" arm64

              # crane reads each manifest's config to fill in its platform.
              crane index append \
                --manifest "$repo:$version-amd64" \
                --manifest "$repo:$version-arm64" \
                --tag "$repo:$version"

              echo "pushed $repo:$version (linux/amd64, linux/arm64)"
            '';
          };
        in
        {
          default = {
            type = "app";
            program = "${self.packages.${system}.default}/bin/${pname}";
          };
        }
        // lib.optionalAttrs (isLinux pkgs) {
          release = {
            type = "app";
            program = "${release}/bin/image-sync-release";
          };
        }
      );

      devShells = forSystems allSystems (pkgs: {
        default = pkgs.mkShell {
          packages = [
            pkgs.cargo
            pkgs.rustc
            pkgs.clippy
            pkgs.rustfmt
            pkgs.rust-analyzer
            pkgs.crane
            pkgs.skopeo
          ];
        };
      });

      checks = forSystems allSystems (
        pkgs:
        let
          image-sync = mkImageSync pkgs;
        in
        {
          # Builds the wrapped binary and runs the unit tests (see
          # cargoTestFlags above for why the e2e tests are left out).
          build = image-sync;

          clippy = image-sync.overrideAttrs (old: {
            pname = "${pname}-clippy";
            nativeBuildInputs = old.nativeBuildInputs ++ [ pkgs.clippy ];
            buildPhase = ''
              runHook preBuild
              cargo clippy --offline --all-targets -- -D warnings
              runHook postBuild
            '';
            doCheck = false;
            installPhase = "touch $out";
          });

          # rustfmt directly rather than `cargo fmt`: no cargo metadata,
          # hence no dependency resolution in the sandbox.
          fmt =
            pkgs.runCommand "${pname}-fmt" { nativeBuildInputs = [ pkgs.rustfmt ]; } ''
              cd ${lib.cleanSource ./.}
              find . -name '*.rs' -not -path './target/*' -print0 \
                | xargs -0 --no-run-if-empty rustfmt --check --edition ${cargoToml.package.edition or "2021"}
              touch $out
            '';
        }
      );
    };
}
