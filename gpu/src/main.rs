//! `switchyard` built for CUDA offline: the same command line as `../src/main.rs`.

fn main() -> std::process::ExitCode {
    switchyard::cli::main()
}
