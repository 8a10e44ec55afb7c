//! Embeds every `configs/*.json` of the workspace as a built-in zoo entry, so
//! `aezoo train <entry>` works from any folder; adding a config file adds an entry.

use std::io::Write;
use std::path::PathBuf;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let configs = manifest.join("../../configs");
    println!("cargo:rerun-if-changed={}", configs.display());
    let mut entries: Vec<(String, PathBuf)> = std::fs::read_dir(&configs)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .map(|p| (p.file_stem().unwrap().to_string_lossy().into_owned(), p))
                .collect()
        })
        .unwrap_or_default();
    entries.sort();
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("builtin_entries.rs");
    let mut f = std::fs::File::create(out).unwrap();
    writeln!(f, "/// Built-in entries: (name, config JSON), from `configs/*.json`.").unwrap();
    writeln!(f, "pub static BUILTIN: &[(&str, &str)] = &[").unwrap();
    for (name, path) in entries {
        println!("cargo:rerun-if-changed={}", path.display());
        let abs = path.canonicalize().unwrap();
        writeln!(f, "    ({name:?}, include_str!({:?})),", abs.display().to_string()).unwrap();
    }
    writeln!(f, "];").unwrap();
}
