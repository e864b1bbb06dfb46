//! The `switchyard` command: a thin edge over the library.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
