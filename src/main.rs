//! The `windlass` binary: everything lives in the library; see [`windlass::cli`].

fn main() -> std::process::ExitCode {
    windlass::cli::main()
}
