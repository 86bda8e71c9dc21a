//! Rebuild when the bpf-linker on PATH changes: it is an undeclared build tool.
fn main() {
    match which::which("bpf-linker") {
        Ok(linker) => println!("cargo::rerun-if-changed={}", linker.display()),
        Err(_) => println!(
            "cargo::warning=bpf-linker is not on PATH; build through `./x`, which installs it"
        ),
    }
}
