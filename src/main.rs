//! The `switchyard` command: a thin edge over the library (`switchyard::cli`).

fn main() -> std::process::ExitCode {
    switchyard::cli::main()
}
