//! `aezoo compare`: train and evaluate zoo entries under one stated protocol
//! and write the results table (`RESULTS.md`), one JSON file per protocol
//! and a reconstruction strip per entry (the same first test images for every
//! entry: originals above, [noised inputs,] reconstructions below).
//!
//! A protocol is data (`configs/protocols/<name>.json`): a text that states
//! it, `data` and `train` settings merged into every entry's config, optional
//! `quick` overrides (the `--quick` run also uses only the bundled subsets),
//! and rows — an entry, an optional label, model/data/train overrides, and an
//! optional reference figure to beat. Nothing here knows a family.

use std::path::{Path, PathBuf};
use std::time::Instant;

use aezoo_data::Locator;
use aezoo_nn::params::write_atomic;
use candle_core::Device;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::{parse_json, parse_value, EntryConfig};
use crate::error::{io_err, Result, TrainError};
use crate::eval::{evaluate_entry, EvalMetrics};
use crate::trainer::{load_data, recon_strip, train, TrainOptions, STRIP_IMAGES};
use crate::weights;
use crate::zoo::Zoo;

/// One row of a protocol.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Row {
    pub entry: String,
    /// Names the row when a protocol has several of one entry (its run
    /// folder, strip and `--only` name); default: the entry.
    #[serde(default)]
    pub id: Option<String>,
    /// The name the reference table uses for it.
    #[serde(default)]
    pub label: Option<String>,
    /// A published test MSE this row must beat.
    #[serde(default)]
    pub reference: Option<f64>,
    /// Whether the reference was measured on clean inputs (for noised entries).
    #[serde(default)]
    pub reference_on_clean: bool,
    #[serde(default)]
    pub model: Option<Value>,
    #[serde(default)]
    pub data: Option<Value>,
    #[serde(default)]
    pub train: Option<Value>,
}

/// A compare protocol.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Protocol {
    pub name: String,
    /// The protocol stated in words, printed above its table.
    pub about: String,
    #[serde(default)]
    pub data: Option<Value>,
    #[serde(default)]
    pub train: Option<Value>,
    /// Overrides for `--quick` (`{"train": {...}}`); quick runs use the bundled data.
    #[serde(default)]
    pub quick: Option<Value>,
    pub rows: Vec<Row>,
}

impl Row {
    /// The row's name: its `id`, else its entry.
    pub fn key(&self) -> &str {
        self.id.as_deref().unwrap_or(&self.entry)
    }
}

impl Protocol {
    /// A built-in protocol of `zoo` by name, or a protocol file.
    pub fn resolve(name_or_path: &str, zoo: &Zoo) -> Result<Self> {
        let p = Path::new(name_or_path);
        if name_or_path.ends_with(".json") || p.is_file() {
            let text = std::fs::read_to_string(p).map_err(io_err(p))?;
            return parse_json::<Self>(&text, name_or_path)?.checked(name_or_path);
        }
        let (name, text) = zoo.protocol(name_or_path).ok_or_else(|| TrainError::Config {
            origin: "compare".into(),
            msg: format!(
                "unknown protocol `{name_or_path}`; built-in: {}",
                zoo.protocol_names().join(", ")
            ),
        })?;
        let origin = format!("<built-in>/configs/protocols/{name}.json");
        parse_json::<Self>(text, &origin)?.checked(&origin)
    }

    /// Refuses two rows with one name (they would share a run folder and a strip).
    fn checked(self, origin: &str) -> Result<Self> {
        for (i, row) in self.rows.iter().enumerate() {
            if self.rows[..i].iter().any(|r| r.key() == row.key()) {
                return Err(TrainError::Config {
                    origin: origin.into(),
                    msg: format!("rows[{i}]: a second row named `{}`; give it an `id`", row.key()),
                });
            }
        }
        Ok(self)
    }
}

/// Merges `patch` into `base`: objects key by key, anything else replaced.
pub fn merge(base: &mut Value, patch: &Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                merge(b.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (b, p) => *b = p.clone(),
    }
}

/// The config a row trains with.
pub fn row_config(protocol: &Protocol, row: &Row, quick: bool, zoo: &Zoo) -> Result<EntryConfig> {
    let (cfg, _) = zoo.resolve_entry(&row.entry)?;
    let mut v = serde_json::to_value(&cfg).expect("config serialises");
    let patch = |v: &mut Value, section: &str, p: &Option<Value>| {
        if let Some(p) = p {
            merge(&mut v[section], p);
        }
    };
    patch(&mut v, "data", &protocol.data);
    patch(&mut v, "train", &protocol.train);
    patch(&mut v, "model", &row.model);
    patch(&mut v, "data", &row.data);
    patch(&mut v, "train", &row.train);
    if quick {
        if let Some(q) = &protocol.quick {
            for section in ["model", "data", "train"] {
                if let Some(p) = q.get(section) {
                    merge(&mut v[section], p);
                }
            }
        }
    }
    let origin = format!("protocol {} row {}", protocol.name, row.key());
    let cfg: EntryConfig = parse_value(&v, &origin, "config")?;
    zoo.validate(&cfg, &origin)?;
    Ok(cfg)
}

/// The measured result of one row.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RowResult {
    pub entry: String,
    /// The row's `id`, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub family: String,
    pub label: Option<String>,
    pub params: usize,
    /// Metrics as the entry is meant to be used (noised inputs for denoisers).
    pub test: EvalMetrics,
    /// Metrics on clean inputs, for entries trained on noised inputs.
    pub test_clean: Option<EvalMetrics>,
    pub reference: Option<f64>,
    pub reference_on_clean: bool,
    /// Whether the compared MSE is below the reference.
    pub beats_reference: Option<bool>,
    pub train_images_per_s: f64,
    pub wall_seconds: f64,
    pub epochs: usize,
    pub strip: String,
    pub data: String,
    /// The commit that trained this row (rows kept from an earlier `--only` run keep theirs).
    #[serde(default)]
    pub git_commit: Option<String>,
}

impl RowResult {
    /// The row's name: its `id`, else its entry.
    pub fn key(&self) -> &str {
        self.id.as_deref().unwrap_or(&self.entry)
    }
}

/// Everything a compare run produced.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CompareResult {
    pub protocol: String,
    pub about: String,
    pub quick: bool,
    pub rows: Vec<RowResult>,
    pub git_commit: Option<String>,
}

/// Where a compare run writes.
#[derive(Clone, Debug)]
pub struct CompareOptions {
    /// `results/` (PNG strips and JSON per protocol).
    pub results_dir: PathBuf,
    /// `runs/compare/` (the training runs).
    pub runs_dir: PathBuf,
    pub quick: bool,
    pub device: Device,
    /// Only these entries (all rows when empty).
    pub only: Vec<String>,
    /// Data chain for full runs.
    pub locator: Locator,
    pub git_commit: Option<String>,
}

/// The folder name of a protocol's outputs.
pub fn tag(protocol: &str, quick: bool) -> String {
    if quick {
        format!("quick-{protocol}")
    } else {
        protocol.to_string()
    }
}

/// Trains and evaluates every row of `protocol`.
pub fn run(protocol: &Protocol, zoo: &Zoo, opts: &CompareOptions) -> Result<CompareResult> {
    let tag = tag(&protocol.name, opts.quick);
    let out_dir = opts.results_dir.join(&tag);
    std::fs::create_dir_all(&out_dir).map_err(io_err(&out_dir))?;
    let locator = if opts.quick {
        Locator::bundled_only()
    } else {
        opts.locator.clone()
    };
    let mut rows = Vec::new();
    for row in &protocol.rows {
        if !opts.only.is_empty() && !opts.only.iter().any(|o| *o == row.entry || o == row.key()) {
            continue;
        }
        let cfg = row_config(protocol, row, opts.quick, zoo)?;
        let run_dir = opts.runs_dir.join(&tag).join(row.key());
        if run_dir.exists() {
            std::fs::remove_dir_all(&run_dir).map_err(io_err(&run_dir))?;
        }
        tracing::info!(
            "compare {tag}: {} ({})",
            row.key(),
            row.label.as_deref().unwrap_or(&cfg.family)
        );
        let t0 = Instant::now();
        let mut topts = TrainOptions::new(&run_dir, locator.clone());
        topts.device = opts.device.clone();
        let outcome = train(&cfg, zoo, &topts)?;
        let loaded = weights::load(&run_dir, zoo, &opts.device)?;
        let splits = load_data(&cfg, zoo, &locator)?;
        let (test, test_clean) = evaluate_entry(loaded.model.as_ref(), &splits.test, &cfg, &opts.device)?;
        let wall_seconds = t0.elapsed().as_secs_f64();
        // The strip: the first test images of the split, the same for every entry.
        let idx: Vec<usize> = (0..STRIP_IMAGES.min(splits.test.len())).collect();
        let (png, _, _) = recon_strip(&cfg, loaded.model.as_ref(), &splits, &idx, &opts.device)?;
        let strip = out_dir.join(format!("{}.png", row.key()));
        write_atomic(&strip, &png)?;
        let compared = if row.reference_on_clean {
            test_clean.as_ref().map(|m| m.mse).unwrap_or(test.mse)
        } else {
            test.mse
        };
        let result = RowResult {
            entry: row.entry.clone(),
            id: row.id.clone(),
            family: cfg.family.clone(),
            label: row.label.clone(),
            params: outcome.params,
            test,
            test_clean,
            reference: row.reference,
            reference_on_clean: row.reference_on_clean,
            beats_reference: row.reference.map(|r| compared < r),
            train_images_per_s: outcome.train_images_per_s,
            wall_seconds,
            epochs: outcome.epochs_done,
            strip: strip.display().to_string(),
            data: outcome.data.clone(),
            git_commit: opts.git_commit.clone(),
        };
        tracing::info!(
            "compare {tag}: {} test MSE {:.5}{} ({:.0} img/s, {:.0} s)",
            row.key(),
            result.test.mse,
            result
                .reference
                .map(|r| format!(" vs reference {r}"))
                .unwrap_or_default(),
            result.train_images_per_s,
            wall_seconds
        );
        rows.push(result);
    }
    let results_json = out_dir.join("results.json");
    if !opts.only.is_empty() {
        rows = keep_other_rows(protocol, opts.quick, &results_json, rows);
    }
    let result = CompareResult {
        protocol: protocol.name.clone(),
        about: protocol.about.clone(),
        quick: opts.quick,
        rows,
        git_commit: opts.git_commit.clone(),
    };
    let json = serde_json::to_string_pretty(&result).expect("results serialise") + "\n";
    write_atomic(&results_json, json.as_bytes())?;
    Ok(result)
}

/// With `--only`, the rows not re-run stay as the last full run left them
/// (in the protocol's order), so the table stays whole.
fn keep_other_rows(protocol: &Protocol, quick: bool, path: &Path, new: Vec<RowResult>) -> Vec<RowResult> {
    let old: Vec<RowResult> = std::fs::read_to_string(path)
        .ok()
        .and_then(|s| serde_json::from_str::<CompareResult>(&s).ok())
        .filter(|r| r.protocol == protocol.name && r.quick == quick)
        .map(|r| r.rows)
        .unwrap_or_default();
    let mut out = Vec::new();
    for row in &protocol.rows {
        let pick = new
            .iter()
            .find(|r| r.key() == row.key())
            .or_else(|| old.iter().find(|r| r.key() == row.key()));
        if let Some(r) = pick {
            out.push(r.clone());
        }
    }
    out
}

fn fmt_mse(m: &EvalMetrics) -> String {
    format!("{:.4}", m.mse)
}

/// The Markdown section of one protocol's results.
pub fn markdown(r: &CompareResult) -> String {
    let mut s = String::new();
    let title = if r.quick {
        format!("## Protocol `{}` — quick (bundled subsets)\n\n", r.protocol)
    } else {
        format!("## Protocol `{}`\n\n", r.protocol)
    };
    s.push_str(&title);
    s.push_str(&r.about);
    if r.quick {
        s.push_str(" Quick run: the real subsets bundled with aezoo (Fashion-MNIST 5,000 / 1,000), fewer epochs; not comparable with the full table.");
    }
    s.push_str("\n\n");
    let has_ref = r.rows.iter().any(|x| x.reference.is_some());
    let has_clean = r.rows.iter().any(|x| x.test_clean.is_some());
    let mut head = String::from("| entry | family | params | test MSE |");
    let mut rule = String::from("|---|---|---:|---:|");
    if has_clean {
        head.push_str(" MSE, clean inputs |");
        rule.push_str("---:|");
    }
    head.push_str(" PSNR (dB) | SSIM | train img/s | wall (s) |");
    rule.push_str("---:|---:|---:|---:|");
    if has_ref {
        head.push_str(" reference | beats it |");
        rule.push_str("---:|:---:|");
    }
    head.push_str(" reconstructions |\n");
    rule.push_str("---|\n");
    s.push_str(&head);
    s.push_str(&rule);
    for x in &r.rows {
        let name = match &x.label {
            Some(l) => format!("`{}` ({l})", x.entry),
            None => format!("`{}`", x.entry),
        };
        s.push_str(&format!(
            "| {name} | {} | {} | {} |",
            x.family,
            x.params,
            fmt_mse(&x.test)
        ));
        if has_clean {
            s.push_str(&format!(
                " {} |",
                x.test_clean.as_ref().map(fmt_mse).unwrap_or_else(|| "—".into())
            ));
        }
        s.push_str(&format!(
            " {:.2} | {:.4} | {:.0} | {:.0} |",
            x.test.psnr, x.test.ssim, x.train_images_per_s, x.wall_seconds
        ));
        if has_ref {
            match (x.reference, x.beats_reference) {
                (Some(rf), Some(b)) => s.push_str(&format!(
                    " {rf}{} | {} |",
                    if x.reference_on_clean { " (clean)" } else { "" },
                    if b { "yes" } else { "**no**" }
                )),
                _ => s.push_str(" — | — |"),
            }
        }
        s.push_str(&format!(" [{0}]({0}) |\n", x.strip));
    }
    if let Some(first) = r.rows.first() {
        s.push_str(&format!("\nData: {}.", first.data));
    }
    let mut commits: Vec<&str> = r
        .rows
        .iter()
        .filter_map(|x| x.git_commit.as_deref())
        .chain(r.git_commit.as_deref())
        .collect();
    commits.dedup();
    commits.sort_unstable();
    commits.dedup();
    if !commits.is_empty() {
        let list: Vec<String> = commits.iter().map(|c| format!("`{c}`")).collect();
        s.push_str(&format!(" Commit: {}.", list.join(", ")));
    }
    s.push('\n');
    s
}
