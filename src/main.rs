//! The `dbwarden` binary: everything lives in the library; see `commands::main`.

fn main() -> std::process::ExitCode {
    dbwarden::commands::main()
}
