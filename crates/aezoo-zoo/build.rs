//! Embeds every `configs/*.json` of the workspace as a built-in zoo entry, so
//! `aezoo train <entry>` works from any folder; adding a config file adds an entry.
//! `configs/protocols/*.json` are embedded the same way as compare protocols.

use std::io::Write;
use std::path::PathBuf;

fn json_files(dir: &std::path::Path) -> Vec<(String, PathBuf)> {
    let mut files: Vec<(String, PathBuf)> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .map(|p| (p.file_stem().unwrap().to_string_lossy().into_owned(), p))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

fn table(f: &mut std::fs::File, doc: &str, name: &str, files: Vec<(String, PathBuf)>) {
    writeln!(f, "/// {doc}").unwrap();
    writeln!(f, "pub static {name}: &[(&str, &str)] = &[").unwrap();
    for (stem, path) in files {
        println!("cargo:rerun-if-changed={}", path.display());
        let abs = path.canonicalize().unwrap();
        writeln!(f, "    ({stem:?}, include_str!({:?})),", abs.display().to_string()).unwrap();
    }
    writeln!(f, "];").unwrap();
}

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let configs = manifest.join("../../configs");
    let protocols = configs.join("protocols");
    println!("cargo:rerun-if-changed={}", configs.display());
    println!("cargo:rerun-if-changed={}", protocols.display());
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("builtin_entries.rs");
    let mut f = std::fs::File::create(out).unwrap();
    table(
        &mut f,
        "Built-in entries: (name, config JSON), from `configs/*.json`.",
        "BUILTIN",
        json_files(&configs),
    );
    table(
        &mut f,
        "Built-in compare protocols, from `configs/protocols/*.json`.",
        "PROTOCOLS",
        json_files(&protocols),
    );
}
