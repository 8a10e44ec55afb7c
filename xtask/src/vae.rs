//! `cargo xtask bench --vae`: the diffusers VAEs (`vae-kl-sd`, `vae-tiny`)
//! encoding and decoding one photograph-sized image, aezoo (`aezoo bench E
//! --image-size N`) beside diffusers (`scripts/bench/diffusers_vae.py`),
//! alternating → the "Pretrained VAEs" section of BENCH.md.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};

use crate::{json_line, least, num, ratio, root};

/// The heading of BENCH.md's section; `cargo xtask bench` keeps it.
pub const HEADING: &str = "## Pretrained VAEs: encode + decode beside diffusers";

/// `(entry, image side, tile)`: tile 0 is the whole image in one pass
/// (diffusers' default); 256 is `enable_tiling()` with 256-pixel tiles,
/// the same blending on both sides.
const CASES: &[(&str, usize, usize)] = &[
    ("vae-kl-sd", 256, 0),
    ("vae-kl-sd", 512, 0),
    ("vae-kl-sd", 512, 256),
    ("vae-tiny", 512, 0),
];

/// The section of `text` from [`HEADING`] to the end, if there is one.
pub fn section(text: &str) -> Option<&str> {
    text.find(HEADING).map(|i| &text[i..])
}

/// Runs the cases `rounds` times each and writes the section into `out`.
pub fn bench(exe: &Path, python: &str, rounds: usize, cores: usize, out: &Path) -> Result<()> {
    let mut rows = String::new();
    let mut framework = String::from("diffusers not run");
    for &(entry, n, tile) in CASES {
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for r in 0..rounds {
            eprintln!("bench --vae: {entry} {n}×{n} tile {tile} round {}/{rounds}", r + 1);
            let (n_s, tile_s) = (n.to_string(), tile.to_string());
            let o = Command::new(exe)
                .current_dir(root())
                .args(["bench", entry, "--image-size", &n_s, "--tile", &tile_s, "--rounds", "2"])
                .env("RUST_LOG", "error")
                .output()
                .context("cannot run aezoo")?;
            ours.push(json_line(&o.stdout).with_context(|| {
                format!(
                    "aezoo bench {entry} failed: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                )
            })?);
            let o = Command::new(python)
                .current_dir(root())
                .arg(root().join("scripts/bench/diffusers_vae.py"))
                .args([entry, "--image-size", &n_s, "--tile", &tile_s, "--rounds", "2"])
                .args(["--threads", &cores.to_string()])
                .output()
                .with_context(|| format!("cannot start {python}"))?;
            match json_line(&o.stdout) {
                Some(v) if v.get("error").is_none() => {
                    if let Some(f) = v.get("framework").and_then(|f| f.as_str()) {
                        framework = f.to_string();
                    }
                    theirs.push(v)
                }
                _ => {
                    let why = String::from_utf8_lossy(&o.stderr);
                    let out = String::from_utf8_lossy(&o.stdout);
                    // The row keeps aezoo's figures; the twin's cells stay empty.
                    eprintln!(
                        "bench --vae: the diffusers twin failed: {}",
                        out.lines().chain(why.lines()).last().unwrap_or("no output")
                    );
                }
            }
        }
        // Each side's best round: interference only slows a run.
        let cell = |runs: &[serde_json::Value], k: &str| num(least(runs, k), 2);
        let total = |runs: &[serde_json::Value]| least(runs, "encode_decode_s");
        rows += &format!(
            "| `{entry}` | {n}×{n} | {} | {} / {} | {} | {} / {} | {} | **{}** | {} | {} |\n",
            if tile == 0 {
                "whole".to_string()
            } else {
                format!("{tile} px tiles")
            },
            cell(&ours, "encode_s"),
            cell(&ours, "decode_s"),
            cell(&ours, "encode_decode_s"),
            cell(&theirs, "encode_s"),
            cell(&theirs, "decode_s"),
            cell(&theirs, "encode_decode_s"),
            ratio(total(&theirs), total(&ours)),
            num(least(&ours, "peak_rss_mb"), 0),
            num(least(&theirs, "peak_rss_mb"), 0),
        );
    }
    let mut md = format!(
        "{HEADING}\n\nWritten by `cargo xtask bench --vae{}`. One RGB image through the encoder (posterior mean; TAESD's latents) and the decoder, f32 on the CPU, {cores} threads each; the same config (`configs/<entry>.json`, diffusers' own fields), random weights (seed 0), the same input. Each process times 2 passes after a warm-up and reports its best; {rounds} round{} alternate aezoo (`aezoo bench E --image-size N --tile T`) and diffusers (`scripts/bench/diffusers_vae.py`), best round shown. Seconds; speed = diffusers' time / aezoo's. Target (issue 26): ≥ 1.25× at 512×512. Peak RSS in MiB (whole process, weights included). {framework}.\n\n",
        if rounds != 1 { format!(" --rounds {rounds}") } else { String::new() },
        if rounds == 1 { "" } else { "s" },
    );
    md += "| entry | image | pass | aezoo encode / decode | total | diffusers encode / decode | total | speed | peak RSS aezoo | diffusers |\n";
    md += "|---|---|---|---:|---:|---:|---:|---:|---:|---:|\n";
    md += &rows;
    // What the file holds before this section stays.
    let old = std::fs::read_to_string(out).unwrap_or_default();
    let kept = old[..old.len() - section(&old).map_or(0, str::len)].trim_end();
    let head = if kept.is_empty() {
        String::new()
    } else {
        format!("{kept}\n\n")
    };
    std::fs::write(out, head + &md).with_context(|| format!("cannot write {}", out.display()))?;
    println!("wrote the VAE section of {}", out.display());
    Ok(())
}
