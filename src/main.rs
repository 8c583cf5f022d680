//! The `dbwarden` binary: everything lives in the library; see `commands::main`.

/// mimalloc rather than the system allocator: see the note in Cargo.toml.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    dbwarden::commands::main()
}
