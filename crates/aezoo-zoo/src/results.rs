//! `RESULTS.md`, rewritten from every protocol's `results/<tag>/results.json`:
//! the image protocols (`aezoo_train::compare`) and the graph protocols
//! ([`crate::graph`]) in one table file.

use std::path::Path;

use aezoo_nn::params::write_atomic;
use aezoo_train::compare::{markdown, CompareResult};
use aezoo_train::config::parse_json;
use aezoo_train::error::Result;
use serde_json::Value;

/// Rewrites `RESULTS.md` from every `results/<tag>/results.json` present:
/// full protocols first (zoo, then the rest by name), quick runs after.
pub fn write_results_md(results_dir: &Path, path: &Path) -> Result<()> {
    let mut all: Vec<CompareResult> = Vec::new();
    let mut graphs: Vec<(String, crate::graph::GraphCompareResult)> = Vec::new();
    if let Ok(rd) = std::fs::read_dir(results_dir) {
        for e in rd.filter_map(|e| e.ok()) {
            let f = e.path().join("results.json");
            if let Ok(text) = std::fs::read_to_string(&f) {
                let origin = f.display().to_string();
                let v: Value = parse_json(&text, &origin)?;
                if v.get("seeds").is_some() {
                    let tag = e.file_name().to_string_lossy().to_string();
                    graphs.push((tag, parse_json(&text, &origin)?));
                } else {
                    all.push(parse_json(&text, &origin)?);
                }
            }
        }
    }
    graphs.sort_by(|a, b| a.0.cmp(&b.0));
    all.sort_by_key(|r| (r.quick, r.protocol != "zoo", r.protocol.clone()));
    let mut s = String::from(
        "# Results\n\nWritten by `cargo xtask compare` (see `aezoo compare --help`); every figure below is re-made by the command named in its section. Each row trains the entry from scratch under the stated protocol, then evaluates it; test MSE is per pixel, images in [0, 1]; PSNR and SSIM (Gaussian window 11, σ 1.5) are means over test images.\n\n",
    );
    for r in &all {
        let cmd = match (r.quick, r.protocol.as_str()) {
            (true, p) => format!("cargo xtask compare --protocol {p} --quick"),
            (false, p) => format!("cargo xtask compare --protocol {p}"),
        };
        s.push_str(&markdown(r));
        s.push_str(&format!("\nRe-make: `{cmd}`\n\n"));
    }
    for (tag, r) in &graphs {
        let rel = results_dir
            .file_name()
            .map(|d| format!("{}/{tag}", d.to_string_lossy()))
            .unwrap_or_else(|| tag.clone());
        s.push_str(&crate::graph::markdown(r, &rel));
        let cmd = if r.protocol == "graphs" {
            "cargo xtask compare --graphs".to_string()
        } else {
            format!("cargo xtask compare --graphs --protocol {}", r.protocol)
        };
        s.push_str(&format!("\nRe-make: `{cmd}`\n\n"));
    }
    write_atomic(path, s.as_bytes())?;
    Ok(())
}
