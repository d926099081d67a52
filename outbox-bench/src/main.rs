//! `outbox-bench`: see the library docs (`src/lib.rs`) for what it measures.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    outbox_bench::main_with(&args)
}
