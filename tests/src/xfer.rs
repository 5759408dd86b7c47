//! `xfer`, for the tests of this package (`CARGO_BIN_EXE_xfer-under-test`):
//! the same program as the CLI crate's binary.

fn main() -> std::process::ExitCode {
    xferkit_cli::main()
}
