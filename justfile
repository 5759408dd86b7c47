# Convenience wrappers around `cargo xtask` (the source of truth; `just` is optional).

# Run the whole test suite against freshly started emulators (extra args go to cargo test).
test *ARGS:
    cargo xtask test {{ARGS}}

# What CI runs: fmt check, clippy -D warnings, tests with emulators, the package step.
ci:
    cargo xtask ci

# License files in every published crate's package, then cargo package verified (each crate
# built from its .crate file).
package:
    cargo xtask package

# Install the emulators into the cache ($XFERKIT_EMULATOR_CACHE or ~/.cache/xferkit-emulators).
emulators-install:
    cargo xtask emulators install

# Start the emulators in the background; endpoints are written to target/emulators.env.
emulators-start:
    cargo xtask emulators start

# Stop the emulators started by emulators-start.
emulators-stop:
    cargo xtask emulators stop

fmt:
    cargo fmt --all

clippy:
    cargo clippy --workspace --all-targets --all-features -- -D warnings

# Time xfer against curl, s5cmd, rclone, aws cli and cp on its own emulator instances
# (e.g. `just bench --backend all`, `just bench --size 64MiB --runs 1 --small-files 200`).
bench *ARGS:
    cargo xtask bench {{ARGS}}
