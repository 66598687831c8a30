# Sourced by hack/controlplane: `hack/controlplane image` builds the project's image here, with no
# registry, and prints its name.
#
# The base: Debian bookworm with Python 3.11, made by mmdebstrap from Debian's packages and
# imported as an OCI image (localhost/modelrollout-base). The image: the repository's own
# Dockerfile, built by buildah (vfs storage, chroot isolation) with --build-arg BASE= that base;
# elsewhere the same Dockerfile builds on the public python image it defaults to. Each is
# cached by a hash of its inputs, so a warm run rebuilds nothing. The result is an OCI archive
# under $CACHE/images, which `node on` imports into containerd's k8s.io namespace.
IMAGE_REPO=localhost/modelrollout
BASE_IMAGE=localhost/modelrollout-base:bookworm-py311
BASE_PACKAGES=python3,python3-venv,ca-certificates
BUILDAH=(buildah --storage-driver vfs)

build_base() {
  local stamp=$CACHE/images/base.id
  if [ -s "$stamp" ] && "${BUILDAH[@]}" inspect --type image "$BASE_IMAGE" >/dev/null 2>&1; then return; fi
  log "building $BASE_IMAGE with mmdebstrap (Debian bookworm: $BASE_PACKAGES)"
  local tar=$CACHE/images/base-rootfs.tar c
  mkdir -p "$CACHE/images"
  mmdebstrap --quiet --variant=minbase --include="$BASE_PACKAGES" \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --aptopt='Acquire::Retries "3"' \
    --customize-hook='rm -rf "$1"/var/cache/apt/* "$1"/var/lib/apt/lists/*' \
    bookworm "$tar" http://deb.debian.org/debian
  c=$("${BUILDAH[@]}" from scratch)
  "${BUILDAH[@]}" add "$c" "$tar" / >/dev/null
  "${BUILDAH[@]}" config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --cmd /bin/bash "$c"
  "${BUILDAH[@]}" commit -q --rm "$c" "$BASE_IMAGE" >"$stamp.tmp"
  mv "$stamp.tmp" "$stamp"
  rm -f "$tar"
}

image_inputs_hash() { # everything the Dockerfile copies (as in the work tree), and the base it builds on
  (cd "$ROOT" && { cat "$CACHE/images/base.id"; git ls-files -z --cached --others --exclude-standard \
    Dockerfile .dockerignore pyproject.toml README.md operator | sort -z | xargs -0 sha256sum; } | sha256sum | cut -c1-12)
}

cmd_image() {
  command -v buildah >/dev/null && command -v mmdebstrap >/dev/null || { log "needs Debian's buildah and mmdebstrap"; return 1; }
  build_base
  local tag name out
  tag=$(image_inputs_hash); name=$IMAGE_REPO:$tag; out=$CACHE/images/modelrollout-$tag.tar
  if [ ! -s "$out" ]; then
    log "building $name from the Dockerfile (base $BASE_IMAGE)"
    # pip in the build trusts what pip here trusts (this machine reaches PyPI through a proxy with its
    # own CA): the host's CA bundle and a pip.conf naming it, mounted for RUN steps only, not kept.
    local ca=${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}} mounts=()
    if [ -s "$ca" ]; then
      printf '[global]\ncert = /run/build-ca.crt\n' >"$CACHE/images/pip.conf"
      mounts=(-v "$ca:/run/build-ca.crt:ro" -v "$CACHE/images/pip.conf:/etc/pip.conf:ro")
    fi
    (cd "$ROOT" && "${BUILDAH[@]}" bud --quiet --isolation chroot --layers=false --build-arg "BASE=$BASE_IMAGE" \
      "${mounts[@]}" -t "$name" -f Dockerfile . >&2)
    rm -f "$CACHE"/images/modelrollout-*.tar
    "${BUILDAH[@]}" push -q "$name" "oci-archive:$out.tmp:$name" >&2
    mv "$out.tmp" "$out"
    "${BUILDAH[@]}" rmi "$name" >/dev/null 2>&1 || true
    "${BUILDAH[@]}" rmi --prune >/dev/null 2>&1 || true
  fi
  echo "$name"
}
