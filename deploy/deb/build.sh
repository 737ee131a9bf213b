#!/usr/bin/env bash
# Builds the Debian packages of the three daemons (poolflow-registrar,
# poolflow-collector, poolflow-exporter) with cargo-deb, from one release
# build, into target/debian/, and prints their paths. POOLFLOW_DEB_PROFILE
# names another Cargo profile (tests/debian-packages.sh uses `deb-test`).
#
#   deploy/deb/build.sh                       # installs cargo-deb if missing
#   sudo dpkg -i target/debian/poolflow-*.deb
#
# The packaging itself is `[package.metadata.deb]` in registrar/, collector/
# and exporter/Cargo.toml; tests/debian-packages.sh installs and tests the
# result.
set -euo pipefail
cd "$(dirname "$0")/../.."

# Pinned so a cargo-deb release cannot change the packages under us.
cargo_deb_version=3.8.0
if ! cargo deb --version 2>/dev/null | grep -q "$cargo_deb_version"; then
  echo "installing cargo-deb $cargo_deb_version (cargo install --locked)" >&2
  cargo install --locked --quiet cargo-deb --version "$cargo_deb_version"
fi

daemons=(registrar collector exporter)
# One build for the three, so they share one set of dependency features
# (cargo-deb building each package alone could build them three times).
package_args=()
for daemon in "${daemons[@]}"; do package_args+=(-p "$daemon"); done
profile="${POOLFLOW_DEB_PROFILE:-release}"
cargo build --profile "$profile" --locked "${package_args[@]}"

target="${CARGO_TARGET_DIR:-target}"
mkdir -p "$target/debian"
for daemon in "${daemons[@]}"; do
  # --strip: the release profile keeps line tables for profiling (debug =
  # 1), which would make each package several times larger.
  cargo deb --no-build --strip --locked --profile "$profile" -p "$daemon" \
    --output "$target/debian/" >&2
done
ls "$target"/debian/poolflow-{registrar,collector,exporter}_*.deb
