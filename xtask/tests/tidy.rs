//! Tidy checks over the source tree, as tests: every file opens with a `//!`
//! line and stays under 1,500 lines, every environment variable read
//! anywhere is in `aezoo_env::VARS` (and read through it), unsafe code lives
//! in `aezoo-kernels` alone, only `aezoo-nn` calls the kernels, and the
//! trainer depends on no model family.

use std::path::{Path, PathBuf};

/// The workspace root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every file under `dir` whose name ends with one of `exts`, skipping
/// build outputs and hidden folders.
fn files(dir: &Path, exts: &[&str]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.filter_map(|e| e.ok()) {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') && name != ".ci" || name == "target" || name == "runs" || name == "data" {
            continue;
        }
        if p.is_dir() {
            out.extend(files(&p, exts));
        } else if exts.iter().any(|x| name.ends_with(x)) {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// The Rust sources of the workspace.
fn rust_files() -> Vec<PathBuf> {
    let r = root();
    let mut v = files(&r.join("crates"), &[".rs"]);
    v.extend(files(&r.join("xtask"), &[".rs"]));
    v
}

fn rel(p: &Path) -> String {
    p.strip_prefix(root()).unwrap_or(p).display().to_string()
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn every_source_file_opens_with_a_doc_line() {
    let bad: Vec<String> = rust_files()
        .into_iter()
        .filter(|p| !read(p).starts_with("//!"))
        .map(|p| rel(&p))
        .collect();
    assert!(bad.is_empty(), "files without a `//!` first line: {bad:?}");
}

#[test]
fn no_source_file_is_over_1500_lines() {
    let bad: Vec<String> = rust_files()
        .into_iter()
        .filter_map(|p| {
            let n = read(&p).lines().count();
            (n > 1500).then(|| format!("{} ({n} lines)", rel(&p)))
        })
        .collect();
    assert!(bad.is_empty(), "source files over 1,500 lines: {bad:?}");
}

/// The `AEZOO_*` names a text mentions.
fn aezoo_names(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let b = text.as_bytes();
    let mut i = 0;
    while let Some(k) = text[i..].find("AEZOO_") {
        let start = i + k;
        let mut end = start + "AEZOO_".len();
        while end < b.len() && (b[end].is_ascii_uppercase() || b[end].is_ascii_digit() || b[end] == b'_') {
            end += 1;
        }
        let before_ok = start == 0 || !(b[start - 1].is_ascii_alphanumeric() || b[start - 1] == b'_');
        if before_ok && end > start + "AEZOO_".len() {
            out.push(text[start..end].trim_end_matches('_').to_string());
        }
        i = end;
    }
    out
}

#[test]
fn every_environment_variable_is_in_the_table() {
    let r = root();
    let known: Vec<&str> = aezoo_env::VARS.iter().map(|v| v.name).collect();
    // Every AEZOO_* name in code, scripts, CI and docs is a variable of the table.
    let mut texts = rust_files();
    texts.extend(files(&r.join("scripts"), &[".py", ".sh"]));
    texts.extend(files(&r.join(".ci"), &["run"]));
    texts.extend(
        files(&r, &[".md"])
            .into_iter()
            .filter(|p| p.parent() == Some(r.as_path())),
    );
    texts.extend(files(&r.join("docs"), &[".md"]));
    let mut unknown = Vec::new();
    for p in &texts {
        for name in aezoo_names(&read(p)) {
            if !known.contains(&name.as_str()) {
                unknown.push(format!("{} in {}", name, rel(p)));
            }
        }
    }
    unknown.dedup();
    assert!(
        unknown.is_empty(),
        "variables missing from aezoo_env::VARS: {unknown:?}"
    );
    // Nothing reads the environment around the table: only aezoo-env calls
    // std::env::var, but for cargo's own variables in build scripts and xtask.
    let env_crate = r.join("crates/aezoo-env");
    let this_file = r.join("xtask/tests/tidy.rs");
    let mut stray = Vec::new();
    for p in rust_files()
        .iter()
        .filter(|p| !p.starts_with(&env_crate) && **p != this_file)
    {
        for (n, line) in read(p).lines().enumerate() {
            for call in ["env::var(", "env::var_os("] {
                if let Some(k) = line.find(call) {
                    let arg = &line[k + call.len()..];
                    let cargo_own = ["\"CARGO", "\"OUT_DIR\""].iter().any(|c| arg.starts_with(c));
                    if !cargo_own {
                        stray.push(format!("{}:{}: {}", rel(p), n + 1, line.trim()));
                    }
                }
            }
        }
    }
    assert!(stray.is_empty(), "environment reads outside aezoo-env: {stray:?}");
    // And every variable of the table is used somewhere.
    let all: String = rust_files()
        .iter()
        .filter(|p| !p.starts_with(&env_crate))
        .map(|p| read(p))
        .collect();
    let unused: Vec<&str> = known
        .iter()
        .copied()
        .filter(|n| !all.contains(&format!("\"{n}\"")))
        .collect();
    assert!(
        unused.is_empty(),
        "variables in the table that nothing reads: {unused:?}"
    );
    // The README's table lists every AEZOO_* variable.
    let readme = read(&r.join("README.md"));
    let undocumented: Vec<&str> = known
        .iter()
        .copied()
        .filter(|n| n.starts_with("AEZOO_") && !readme.contains(&format!("| `{n}` |")))
        .collect();
    assert!(
        undocumented.is_empty(),
        "README's variable table lacks {undocumented:?}"
    );
}

/// `(crate folder, its root source file)` for every crate and xtask.
fn crate_roots() -> Vec<(String, PathBuf)> {
    let r = root();
    let mut out = vec![("xtask".to_string(), r.join("xtask/src/main.rs"))];
    for e in std::fs::read_dir(r.join("crates")).unwrap().filter_map(|e| e.ok()) {
        let dir = e.path();
        let lib = dir.join("src/lib.rs");
        let root_file = if lib.is_file() { lib } else { dir.join("src/main.rs") };
        out.push((e.file_name().to_string_lossy().into_owned(), root_file));
    }
    out.sort();
    out
}

#[test]
fn unsafe_code_lives_in_the_kernels_alone() {
    for (name, root_file) in crate_roots() {
        let forbids = read(&root_file).contains("#![forbid(unsafe_code)]");
        if name == "aezoo-kernels" {
            assert!(!forbids, "aezoo-kernels holds the unsafe SIMD and FFI code");
        } else {
            assert!(forbids, "{name}: {} lacks #![forbid(unsafe_code)]", rel(&root_file));
        }
    }
}

/// The `[dependencies]` section of a manifest (normal dependencies only).
fn normal_deps(manifest: &str) -> String {
    let mut out = String::new();
    let mut on = false;
    for line in manifest.lines() {
        if line.starts_with('[') {
            on = line == "[dependencies]" || line.ends_with(".dependencies]") && !line.contains("dev-");
        } else if on {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[test]
fn only_aezoo_nn_calls_the_kernels_and_the_trainer_knows_no_family() {
    let r = root();
    for e in std::fs::read_dir(r.join("crates")).unwrap().filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        let deps = normal_deps(&read(&e.path().join("Cargo.toml")));
        if name != "aezoo-nn" {
            assert!(
                !deps.contains("aezoo-kernels"),
                "{name} depends on aezoo-kernels: go through aezoo-nn"
            );
        }
    }
    let train = normal_deps(&read(&r.join("crates/aezoo-train/Cargo.toml")));
    for family in [
        "aezoo-ae",
        "aezoo-vae",
        "aezoo-video",
        "aezoo-graph",
        "aezoo-compress",
        "aezoo-zoo",
    ] {
        assert!(
            !train.contains(family),
            "aezoo-train depends on {family}: families come in through a Zoo"
        );
    }
    // No string in the binary names a built-in entry or an entry group
    // (`codec-photo` for `codec-photo-q1…`): defaults come from aezoo_zoo.
    let configs = r.join("configs");
    let mut names: Vec<String> = files(&configs, &[".json"])
        .iter()
        .filter(|p| p.parent() == Some(configs.as_path()))
        .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .collect();
    let groups: Vec<String> = names
        .iter()
        .filter_map(|n| n.rsplit_once("-q").map(|(g, _)| g.to_string()))
        .collect();
    names.extend(groups);
    assert!(names.len() > 10, "configs/ holds the built-in entries");
    for p in files(&r.join("crates/aezoo-cli/src"), &[".rs"]) {
        let text = read(&p);
        for name in &names {
            assert!(
                !text.contains(&format!("\"{name}\"")),
                "{}: names the entry `{name}` in a string; defaults come from aezoo_zoo",
                rel(&p)
            );
        }
    }
}

#[test]
fn the_docs_stay_maps() {
    // ARCHITECTURE.md is a map and the README a newcomer's page; dated
    // measurements live in RESULTS.md, BENCH.md, docs/perf.md and results/.
    let r = root();
    for (file, limit) in [("ARCHITECTURE.md", 20_000), ("README.md", 15_360)] {
        let n = read(&r.join(file)).len();
        assert!(n < limit, "{file} is {n} bytes, over {limit}");
    }
}
