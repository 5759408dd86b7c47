//! `xfer`: the xferkit command line. See README.md for usage; the program
//! is in `src/lib.rs`.

fn main() -> std::process::ExitCode {
    xferkit_cli::main()
}
