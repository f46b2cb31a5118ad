#!/bin/sh
# Installs a PlexiChat release: detects this machine's architecture, takes a local archive
# or downloads it, refuses it unless its SHA-256 is the one SHA256SUMS lists for it, and
# installs the server under a prefix, optionally with its systemd unit.
#
#   sh install.sh                                  # download this release for this machine
#   sh install.sh --archive plexichat-….tar.gz     # a local archive (SHA256SUMS beside it)
#   sh install.sh --prefix "$HOME/.local" --systemd
#
# POSIX sh and the tools of a minimal system: uname, tar, gzip, sha256sum (or shasum, or
# openssl), and curl or wget to download.
set -eu

VERSION="@VERSION@"
BASE_URL="${PLEXICHAT_BASE_URL:-@BASE_URL@}"

usage() {
    cat <<USAGE
usage: install.sh [--prefix DIR] [--archive FILE] [--sums FILE] [--arch ARCH]
                  [--base-url URL] [--systemd [--unit-dir DIR] [--no-user]]

Installs PlexiChat $VERSION: the server as PREFIX/bin/plexichat (default /usr/local), its
production profile as PREFIX/etc/plexichat/profile.yaml (an existing one is kept), and
with --systemd the unit plexichat.service (default in /etc/systemd/system) and, as root,
the plexichat system user it runs as (unless --no-user).

  --archive FILE  install this archive instead of downloading it
  --sums FILE     the SHA256SUMS to check it against (default: beside the archive, or
                  downloaded with it)
  --arch ARCH     x86_64, aarch64 or riscv64 (default: this machine's)
  --base-url URL  where the release's files are (default: $BASE_URL, or
                  PLEXICHAT_BASE_URL)
USAGE
}

fail() {
    echo "install.sh: $*" >&2
    exit 1
}

prefix=/usr/local
archive=
sums=
arch=
systemd=no
unit_dir=/etc/systemd/system
create_user=yes
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) prefix="${2:?--prefix needs a directory}"; shift 2 ;;
        --archive) archive="${2:?--archive needs a file}"; shift 2 ;;
        --sums) sums="${2:?--sums needs a file}"; shift 2 ;;
        --arch) arch="${2:?--arch needs x86_64, aarch64 or riscv64}"; shift 2 ;;
        --base-url) BASE_URL="${2:?--base-url needs a URL}"; shift 2 ;;
        --systemd) systemd=yes; shift ;;
        --unit-dir) unit_dir="${2:?--unit-dir needs a directory}"; shift 2 ;;
        --no-user) create_user=no; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; exit 2 ;;
    esac
done

[ -n "$arch" ] || arch=$(uname -m)
case "$arch" in
    x86_64|amd64) triple=x86_64-unknown-linux-gnu ;;
    aarch64|arm64) triple=aarch64-unknown-linux-gnu ;;
    riscv64) triple=riscv64gc-unknown-linux-gnu ;;
    *) fail "no PlexiChat build for the architecture $arch (there are x86_64, aarch64 and riscv64)" ;;
esac
name="plexichat-$VERSION-$triple"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT INT TERM

download() {
    if command -v curl >/dev/null 2>&1; then
        curl --fail --silent --show-error --location --output "$2" "$1"
    elif command -v wget >/dev/null 2>&1; then
        wget --quiet --output-document "$2" "$1"
    else
        fail "downloading $1 needs curl or wget"
    fi
}

if [ -z "$archive" ]; then
    archive="$work/$name.tar.gz"
    echo "downloading $BASE_URL/$name.tar.gz"
    download "$BASE_URL/$name.tar.gz" "$archive"
    if [ -z "$sums" ]; then
        sums="$work/SHA256SUMS"
        download "$BASE_URL/SHA256SUMS" "$sums"
    fi
fi
[ -f "$archive" ] || fail "no archive at $archive"
[ -n "$sums" ] || sums="$(dirname "$archive")/SHA256SUMS"
[ -f "$sums" ] || fail "no SHA256SUMS at $sums to check $archive against (give one with --sums)"

sha256() {
    if command -v sha256sum >/dev/null 2>&1; then
        sha256sum "$1" | cut -d ' ' -f 1
    elif command -v shasum >/dev/null 2>&1; then
        shasum -a 256 "$1" | cut -d ' ' -f 1
    elif command -v openssl >/dev/null 2>&1; then
        openssl dgst -sha256 -r "$1" | cut -d ' ' -f 1
    else
        fail "checking the archive needs sha256sum, shasum or openssl"
    fi
}

# The archive is judged by the name it was released under, whatever it is called here.
expected=$(awk -v file="$name.tar.gz" '$2 == file || $2 == "*" file { print $1 }' "$sums")
[ -n "$expected" ] || fail "$sums lists no $name.tar.gz"
actual=$(sha256 "$archive")
if [ "$actual" != "$expected" ]; then
    fail "checksum mismatch for $archive: SHA256SUMS says $expected, the file is $actual; refusing to install it"
fi
echo "checksum ok: $name.tar.gz"

tar -xzf "$archive" -C "$work"
unpacked="$work/$name"
[ -x "$unpacked/plexichat" ] || fail "$archive does not hold $name/plexichat"

mkdir -p "$prefix/bin" "$prefix/etc/plexichat"
# Into place by rename, so a running server's binary is never half-written.
cp "$unpacked/plexichat" "$prefix/bin/.plexichat.new"
chmod 0755 "$prefix/bin/.plexichat.new"
mv -f "$prefix/bin/.plexichat.new" "$prefix/bin/plexichat"
echo "installed $prefix/bin/plexichat"
if [ -e "$prefix/etc/plexichat/profile.yaml" ]; then
    echo "kept $prefix/etc/plexichat/profile.yaml (the release's is $prefix/etc/plexichat/profile.yaml.new)"
    cp "$unpacked/profile.yaml" "$prefix/etc/plexichat/profile.yaml.new"
else
    cp "$unpacked/profile.yaml" "$prefix/etc/plexichat/profile.yaml"
    echo "installed $prefix/etc/plexichat/profile.yaml"
fi

if [ "$systemd" = yes ]; then
    mkdir -p "$unit_dir"
    # The unit names the Debian package's paths; this install's are under the prefix.
    sed -e "s|/usr/bin/plexichat|$prefix/bin/plexichat|g" \
        -e "s|/etc/plexichat/profile.yaml|$prefix/etc/plexichat/profile.yaml|g" \
        "$unpacked/plexichat.service" >"$unit_dir/plexichat.service"
    echo "installed $unit_dir/plexichat.service"
    if [ "$create_user" = yes ] && [ "$(id -u)" = 0 ] && ! id plexichat >/dev/null 2>&1; then
        useradd --system --home-dir /var/lib/plexichat --no-create-home \
            --shell /usr/sbin/nologin plexichat
        echo "created the system user plexichat"
    fi
    if [ -d /run/systemd/system ] && [ "$unit_dir" = /etc/systemd/system ]; then
        systemctl daemon-reload
        echo "start it with: systemctl enable --now plexichat"
    fi
fi
echo "PlexiChat $VERSION is installed: $prefix/bin/plexichat --version"
