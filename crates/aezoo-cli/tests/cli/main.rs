//! The `aezoo` binary end to end: train → eval → sample on real bundled data,
//! and bad inputs (unknown config key, truncated IDX, a safetensors file with
//! a missing tensor) each give a one-line error and a non-zero exit, no panic.

use std::path::Path;
use std::process::{Command, Output};

use aezoo_data::idx::{encode_images, encode_labels, IdxImages};

mod codec;
mod device;
mod diffusers;
mod soak;

/// Something a test needs is not on this machine: a failure where
/// `AEZOO_REQUIRE_DATA` is set (CI), else a note and the check is skipped.
fn missing(what: &str) {
    assert!(
        !aezoo_env::flag("AEZOO_REQUIRE_DATA"),
        "AEZOO_REQUIRE_DATA is set: {what}"
    );
    eprintln!("{what}");
}

/// Runs `aezoo` in `cwd` with an environment that sees no user data caches.
fn aezoo(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_aezoo"))
        .current_dir(cwd)
        .args(args)
        .env("XDG_CACHE_HOME", cwd.join(".cache"))
        .env("HF_HUB_CACHE", cwd.join(".hf"))
        .env("HF_HUB_OFFLINE", "1")
        .env_remove("AEZOO_DATA")
        .env("RUST_LOG", "warn")
        .output()
        .expect("aezoo runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The last stderr line is `error: …`, alone, and the exit is non-zero.
fn assert_one_line_error(o: &Output, needles: &[&str]) {
    assert!(
        !o.status.success(),
        "expected failure, got success; stderr:\n{}",
        stderr(o)
    );
    assert_eq!(o.status.code(), Some(1), "exit code; stderr:\n{}", stderr(o));
    let err = stderr(o);
    assert!(!err.contains("panicked"), "panic:\n{err}");
    let line = err.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
    assert!(line.starts_with("error: "), "last line is not an error line:\n{err}");
    for n in needles {
        assert!(line.contains(n), "`{n}` not in: {line}");
    }
}

fn write_config(dir: &Path, extra: &str) -> String {
    let text = format!(
        r#"{{
  "entry": "tiny", "family": "ae-mlp",
  "model": {{"image": [1, 28, 28], "latent": 8}},
  "data": {{"dataset": "mnist"{extra}}},
  "train": {{"epochs": 1, "batch_size": 32, "lr": 0.001, "seed": 0}}
}}"#
    );
    let p = dir.join("tiny.json");
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

#[test]
fn train_eval_sample_round_trip() {
    let d = tempfile::tempdir().unwrap();
    let run = d.path().join("run");
    let o = aezoo(
        d.path(),
        &[
            "train",
            "vae-conv",
            "--epochs",
            "1",
            "--train-limit",
            "128",
            "--test-limit",
            "64",
            "--batch-size",
            "32",
            "--out",
            run.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("test MSE") && out.contains("PSNR") && out.contains("SSIM"),
        "{out}"
    );
    for f in [
        "model.safetensors",
        "config.json",
        "metrics.json",
        "metrics.jsonl",
        "loss.png",
        "reconstructions.png",
    ] {
        assert!(run.join(f).is_file(), "{f}");
    }
    // The run is recorded as the newest of its entry, so eval finds it by name.
    assert!(d.path().join("runs/vae-conv/latest").is_file());
    let o = aezoo(d.path(), &["eval", "vae-conv", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let trained: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(
        v["test"]["mse"], trained["test"]["mse"],
        "eval reproduces the run's test MSE"
    );
    // Samples from the prior.
    let png = d.path().join("grid.png");
    let o = aezoo(
        d.path(),
        &[
            "sample",
            "vae-conv",
            "-n",
            "16",
            "-o",
            png.to_str().unwrap(),
            "--weights",
            run.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(png.is_file());
}

#[test]
fn sample_refuses_a_non_generative_entry() {
    let d = tempfile::tempdir().unwrap();
    let run = tiny_run(d.path());
    let o = aezoo(d.path(), &["sample", "tiny", "--weights", run.to_str().unwrap()]);
    assert_one_line_error(&o, &["no prior"]);
}

#[test]
fn unknown_config_key_is_a_one_line_error() {
    let d = tempfile::tempdir().unwrap();
    let cfg = write_config(d.path(), r#", "nosie": 0.3"#);
    let o = aezoo(d.path(), &["train", &cfg]);
    assert_one_line_error(&o, &["tiny.json", "data", "unknown field `nosie`"]);
}

#[test]
fn truncated_idx_is_a_one_line_error() {
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    for (split, n) in [("train", 20), ("t10k", 10)] {
        let im = IdxImages {
            count: n,
            rows: 28,
            cols: 28,
            pixels: vec![7; n * 784],
        };
        std::fs::write(data.join(format!("{split}-images-idx3-ubyte")), encode_images(&im)).unwrap();
        std::fs::write(
            data.join(format!("{split}-labels-idx1-ubyte")),
            encode_labels(&vec![1; n]),
        )
        .unwrap();
    }
    let p = data.join("train-images-idx3-ubyte");
    let b = std::fs::read(&p).unwrap();
    std::fs::write(&p, &b[..5000]).unwrap();
    let o = aezoo(
        d.path(),
        &[
            "train",
            "ae-linear",
            "--data",
            data.to_str().unwrap(),
            "--out",
            d.path().join("r").to_str().unwrap(),
        ],
    );
    assert_one_line_error(&o, &["train-images-idx3-ubyte", "truncated", "found 5000"]);
    // A run that failed before it started leaves no folder and no `latest`.
    assert!(!d.path().join("r").exists() && !d.path().join("runs").exists());
}

#[test]
fn missing_tensor_is_a_one_line_error() {
    let d = tempfile::tempdir().unwrap();
    let run = tiny_run(d.path());
    // Drop one tensor from the file.
    let mut kept: Vec<_> = aezoo_train::checkpoint::read_tensors(&run.join("model.safetensors"))
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(kept.len(), 4);
    kept.retain(|(k, _)| k != "decoder.fc1.bias");
    aezoo_nn::params::save_safetensors_atomic(&kept, &run.join("model.safetensors")).unwrap();
    let o = aezoo(d.path(), &["eval", "tiny", "--weights", run.to_str().unwrap()]);
    assert_one_line_error(&o, &["model.safetensors", "missing tensor `decoder.fc1.bias`"]);
}

#[test]
fn unknown_entry_and_missing_weights_are_one_line_errors() {
    let d = tempfile::tempdir().unwrap();
    let o = aezoo(d.path(), &["train", "vae-quantum"]);
    assert_one_line_error(&o, &["vae-quantum", "vae-conv"]);
    let o = aezoo(d.path(), &["eval", "vae-conv"]);
    assert_one_line_error(&o, &["no weights", "cargo xtask train vae-conv"]);
    let o = aezoo(d.path(), &["train", "ae-linear", "--data", "/nonexistent/aezoo-data"]);
    assert_one_line_error(&o, &["mnist: not found", "/nonexistent/aezoo-data"]);
}

#[test]
fn resume_continues_a_stopped_run() {
    let d = tempfile::tempdir().unwrap();
    let cfg = write_config(d.path(), "");
    let run = d.path().join("r");
    let common = ["--train-limit", "96", "--test-limit", "32", "--no-plots"];
    let mut args = vec![
        "train",
        cfg.as_str(),
        "--epochs",
        "2",
        "--max-steps",
        "4",
        "--out",
        run.to_str().unwrap(),
    ];
    args.extend(common);
    let o = aezoo(d.path(), &args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        !run.join("metrics.json").exists(),
        "a stopped run has no final metrics.json"
    );
    let o = aezoo(d.path(), &["train", "tiny", "--resume", run.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(m["steps"], 6);
    assert_eq!(m["epochs"], 2);
}

/// Trains the tiny MLP entry on bundled MNIST into `dir/r`.
fn tiny_run(d: &Path) -> std::path::PathBuf {
    let cfg = write_config(d, "");
    let run = d.join("r");
    let o = aezoo(
        d,
        &[
            "train",
            &cfg,
            "--train-limit",
            "64",
            "--test-limit",
            "32",
            "--no-plots",
            "--out",
            run.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    run
}

#[test]
fn export_writes_an_upload_ready_folder_that_check_reproduces() {
    let d = tempfile::tempdir().unwrap();
    let run = tiny_run(d.path());
    let out = d.path().join("export");
    let o = aezoo(
        d.path(),
        &[
            "export",
            "tiny",
            out.to_str().unwrap(),
            "--weights",
            run.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    for f in ["config.json", "model.safetensors", "metrics.json", "README.md"] {
        assert!(out.join(f).is_file(), "{f}");
    }
    let card = std::fs::read_to_string(out.join("README.md")).unwrap();
    assert!(card.starts_with("---\nlibrary_name: aezoo"), "{card}");
    let o = aezoo(
        d.path(),
        &["eval", "tiny", "--weights", out.to_str().unwrap(), "--check"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("matches"));
    // A metrics.json that the weights do not reproduce is refused.
    let p = out.join("metrics.json");
    let mut m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    m["test"]["mse"] = serde_json::json!(m["test"]["mse"].as_f64().unwrap() + 0.001);
    std::fs::write(&p, m.to_string()).unwrap();
    let o = aezoo(
        d.path(),
        &["eval", "tiny", "--weights", out.to_str().unwrap(), "--check"],
    );
    assert_one_line_error(&o, &["--check", "differs", "mse"]);
}

/// Lays a weights folder out as hf-hub caches a model repository.
/// A model repository in an hf-hub cache, laid out as hf-hub writes it:
/// `models--owner--name/blobs/<etag>` holding the bytes,
/// `snapshots/<commit>/<file>` symlinks to `../../blobs/<etag>`, and
/// `refs/<revision>` naming the commit.
fn fake_hub(cache: &Path, repo: &str, weights: &Path) {
    fake_hub_at(cache, repo, "main", "89abcdef0123456789abcdef0123456789abcdef", weights);
}

fn fake_hub_at(cache: &Path, repo: &str, revision: &str, commit: &str, weights: &Path) {
    let files: Vec<(String, std::path::PathBuf)> = ["config.json", "model.safetensors"]
        .iter()
        .map(|f| (f.to_string(), weights.join(f)))
        .collect();
    fake_hub_files(cache, repo, revision, commit, &files);
}

/// Files at paths of the repository (`vae/config.json`), from local files.
fn fake_hub_files(cache: &Path, repo: &str, revision: &str, commit: &str, files: &[(String, std::path::PathBuf)]) {
    let folder = cache.join(format!("models--{}", repo.replace('/', "--")));
    std::fs::create_dir_all(folder.join("refs")).unwrap();
    std::fs::create_dir_all(folder.join("blobs")).unwrap();
    std::fs::write(folder.join("refs").join(revision), commit).unwrap();
    let snap = folder.join("snapshots").join(commit);
    for (f, src) in files {
        let bytes = std::fs::read(src).unwrap();
        // Any stable name stands in for the etag (sha256 for LFS files).
        let etag = format!(
            "{:016x}{:048x}",
            bytes.len(),
            bytes.iter().map(|&b| b as u64).sum::<u64>()
        );
        std::fs::write(folder.join("blobs").join(&etag), &bytes).unwrap();
        let link = snap.join(f);
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        let _ = std::fs::remove_file(&link);
        // Relative to the link's folder: one `..` more per subfolder.
        let up = "../".repeat(1 + f.matches('/').count());
        std::os::unix::fs::symlink(Path::new(&format!("{up}../blobs")).join(&etag), &link).unwrap();
    }
}

#[test]
fn hub_weights_load_from_the_hf_hub_cache() {
    let d = tempfile::tempdir().unwrap();
    let run = tiny_run(d.path());
    // aezoo() points HF_HUB_CACHE at <cwd>/.hf and sets HF_HUB_OFFLINE=1.
    fake_hub(&d.path().join(".hf"), "acme/tiny-ae", &run);
    let o = aezoo(d.path(), &["eval", "tiny", "--hub", "acme/tiny-ae", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let trained: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(v["test"]["mse"], trained["test"]["mse"]);
    // A revision after `@`: a tag in refs/.
    fake_hub_at(
        &d.path().join(".hf"),
        "acme/tiny-ae",
        "v1",
        "0123456789abcdef0123456789abcdef01234567",
        &run,
    );
    let o = aezoo(d.path(), &["eval", "tiny", "--hub", "acme/tiny-ae@v1", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // HF_HOME alone: the cache is $HF_HOME/hub.
    let home = d.path().join("hf-home");
    fake_hub(&home.join("hub"), "acme/home-ae", &run);
    let splits = aezoo_data::bundled::load(aezoo_data::DatasetId::Mnist).unwrap();
    let img = image::GrayImage::from_raw(28, 28, splits.test.image(0).to_vec()).unwrap();
    let png = d.path().join("digit.png");
    img.save(&png).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_aezoo"))
        .current_dir(d.path())
        .args(["reconstruct", "tiny", "--hub", "acme/home-ae", png.to_str().unwrap()])
        .env_remove("HF_HUB_CACHE")
        .env("HF_HOME", &home)
        .env("HF_HUB_OFFLINE", "1")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(d.path().join("digit.recon.png").is_file());
    // Offline and not cached: one line that says so.
    let o = aezoo(d.path(), &["eval", "tiny", "--hub", "acme/other"]);
    assert_one_line_error(&o, &["acme/other", "not in the hf-hub cache", "HF_HUB_OFFLINE"]);
    let o = aezoo(d.path(), &["eval", "tiny", "--hub", "not-a-spec"]);
    assert_one_line_error(&o, &["user/repo"]);
    // Online but unreachable (a closed local port stands in for no network).
    let o = Command::new(env!("CARGO_BIN_EXE_aezoo"))
        .current_dir(d.path())
        .args(["eval", "tiny", "--hub", "acme/other"])
        .env("HF_HUB_CACHE", d.path().join(".hf"))
        .env_remove("HF_HUB_OFFLINE")
        .env("HF_ENDPOINT", "http://127.0.0.1:9")
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    assert_one_line_error(&o, &["acme/other", "cannot reach the Hub"]);
}

#[test]
fn reconstruct_and_interpolate_image_files() {
    let d = tempfile::tempdir().unwrap();
    let run = tiny_run(d.path());
    // Two real digits from the bundled MNIST as PNG files.
    let splits = aezoo_data::bundled::load(aezoo_data::DatasetId::Mnist).unwrap();
    for i in 0..2 {
        let img = image::GrayImage::from_raw(28, 28, splits.test.image(i).to_vec()).unwrap();
        img.save(d.path().join(format!("digit{i}.png"))).unwrap();
    }
    let out = d.path().join("recon");
    let (a, b) = (d.path().join("digit0.png"), d.path().join("digit1.png"));
    let o = aezoo(
        d.path(),
        &[
            "reconstruct",
            "tiny",
            a.to_str().unwrap(),
            b.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--weights",
            run.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        text.lines().filter(|l| l.contains("PSNR") && l.contains('→')).count(),
        2,
        "one line per image: {text}"
    );
    assert!(text.contains("mean over 2 images: PSNR"), "{text}");
    assert!(out.join("digit0.recon.png").is_file());
    let strip = d.path().join("interp.png");
    let o = aezoo(
        d.path(),
        &[
            "interpolate",
            "tiny",
            a.to_str().unwrap(),
            b.to_str().unwrap(),
            "--steps",
            "5",
            "-o",
            strip.to_str().unwrap(),
            "--weights",
            run.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let png = image::open(&strip).unwrap();
    assert!(png.width() > 7 * 28, "2 inputs + 5 steps side by side");
    // A file that is not an image is a one-line error naming it.
    std::fs::write(d.path().join("junk.png"), b"not a png").unwrap();
    let junk = d.path().join("junk.png");
    let o = aezoo(
        d.path(),
        &[
            "reconstruct",
            "tiny",
            junk.to_str().unwrap(),
            "--weights",
            run.to_str().unwrap(),
        ],
    );
    assert_one_line_error(&o, &["junk.png", "cannot decode"]);
}

#[test]
fn shipped_weights_reproduce_their_metrics() {
    // Every weights/<entry>/ must evaluate to its metrics.json (4 d.p.) where
    // its data set is on this machine (CI installs Fashion-MNIST).
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let entries = std::fs::read_dir(root.join("weights")).expect("weights/ is part of the repository");
    let mut checked = 0;
    for e in entries.filter_map(|e| e.ok()).filter(|e| e.path().is_dir()) {
        let dir = e.path();
        let metrics: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("metrics.json")).unwrap()).unwrap();
        let data = metrics["data"].as_str().unwrap();
        if data.contains("/usr/share/datasets") && !Path::new("/usr/share/datasets/fashion-mnist").exists() {
            missing(&format!(
                "{}: needs {data}; not installed here, not checked",
                dir.display()
            ));
            continue;
        }
        // Image-folder entries (codec-photo: `python3 scripts/make_photo_set.py data/photos`).
        if let Some(folder) = data.strip_prefix("folder ").and_then(|d| d.split(':').next()) {
            if !root.join(folder).is_dir() {
                missing(&format!(
                    "{}: needs the folder {folder}; not made here, not checked",
                    dir.display()
                ));
                continue;
            }
        }
        let entry = metrics["entry"].as_str().unwrap();
        let o = Command::new(env!("CARGO_BIN_EXE_aezoo"))
            .current_dir(&root)
            .args(["eval", entry, "--weights", dir.to_str().unwrap(), "--check"])
            .env_remove("AEZOO_DATA")
            .env("HF_HUB_OFFLINE", "1")
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        assert!(o.status.success(), "{entry}: {}", stderr(&o));
        checked += 1;
    }
    eprintln!("checked {checked} shipped weights");
}

// ---------------------------------------------------------------- graph entries

#[test]
fn graph_train_eval_check_and_encode_round_trip() {
    let d = tempfile::tempdir().unwrap();
    let run = d.path().join("run");
    let o = aezoo(
        d.path(),
        &[
            "train",
            "vgae-cora",
            "--epochs",
            "5",
            "--seed",
            "3",
            "--out",
            run.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("vgae-cora: test AUC"), "{out}");
    for f in [
        "config.json",
        "model.safetensors",
        "metrics.json",
        "metrics.jsonl",
        "curves.png",
        "README.md",
    ] {
        assert!(run.join(f).is_file(), "{f}");
    }
    // The weights and the seed in config.json re-make the split: eval --check agrees.
    let o = aezoo(
        d.path(),
        &["eval", "vgae-cora", "--weights", run.to_str().unwrap(), "--check"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("matches"));

    for (extra, nodes) in [(None, 2708), (Some("--full-graph"), 2708)] {
        let emb = d.path().join("emb.safetensors");
        let mut args = vec![
            "encode-graph",
            "vgae-cora",
            "--weights",
            run.to_str().unwrap(),
            "-o",
            emb.to_str().unwrap(),
        ];
        args.extend(extra);
        let o = aezoo(d.path(), &args);
        assert!(o.status.success(), "{}", stderr(&o));
        let bytes = std::fs::read(&emb).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.tensor("embeddings").unwrap().shape(), &[nodes, 16]);
    }

    // Image commands refuse a graph entry with a one-line error.
    let o = aezoo(d.path(), &["sample", "vgae-cora", "--weights", run.to_str().unwrap()]);
    assert_one_line_error(&o, &["graph autoencoder family"]);
    // And graph runs keep no checkpoints to resume.
    let o = aezoo(d.path(), &["train", "gae-cora", "--max-steps", "3"]);
    assert_one_line_error(&o, &["no checkpoints"]);
}

fn graph_config(dir: &Path, dataset: &str, extra_train: &str) -> String {
    let p = dir.join("g.json");
    std::fs::write(
        &p,
        format!(
            r#"{{"entry": "mine", "family": "gae", "model": {{"features": false}},
  "data": {{"dataset": "{dataset}"}}, "train": {{"epochs": 2, "lr": 0.01, "seed": 0{extra_train}}}}}"#
        ),
    )
    .unwrap();
    p.display().to_string()
}

#[test]
fn malformed_edge_lists_are_one_line_errors() {
    let d = tempfile::tempdir().unwrap();
    let cases: [(&str, &[&str]); 3] = [
        ("0 1\n1 2\nx 3\n", &["mine.edges.txt:3", "bad node id `x`"]),
        ("0 1\n2 2\n", &["mine.edges.txt:2", "self-loop"]),
        ("# mine: 3 nodes\n0 1\n1 9\n", &["mine.edges.txt:3", "out of range"]),
    ];
    for (text, needles) in cases {
        let edges = d.path().join("mine.edges.txt");
        std::fs::write(&edges, text).unwrap();
        let cfg = graph_config(d.path(), edges.to_str().unwrap(), "");
        let o = aezoo(d.path(), &["train", &cfg]);
        assert_one_line_error(&o, needles);
    }
    // A graph entry with an image-only setting.
    let cfg = graph_config(d.path(), "cora", r#", "batch_size": 64"#);
    let o = aezoo(d.path(), &["train", &cfg]);
    assert_one_line_error(&o, &["train.batch_size", "whole graph"]);
    // A user's graph by name through --data trains.
    std::fs::write(
        d.path().join("ring.edges.txt"),
        (0..40).map(|i| format!("{i} {}\n", (i + 1) % 40)).collect::<String>(),
    )
    .unwrap();
    let cfg = graph_config(d.path(), "ring", "");
    let o = aezoo(
        d.path(),
        &["train", &cfg, "--data", d.path().to_str().unwrap(), "--out", "r"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
}

// ---------------------------------------------------------------- layer lists and image folders

#[test]
fn a_layer_list_vae_trains_on_an_image_folder() {
    let d = tempfile::tempdir().unwrap();
    let photos = d.path().join("photos");
    std::fs::create_dir(&photos).unwrap();
    for i in 0..12u32 {
        let img = image::RgbImage::from_fn(30 + i, 24, |x, y| {
            image::Rgb([(x * 8) as u8, (y * 10) as u8, (i * 20) as u8])
        });
        img.save(photos.join(format!("p{i}.png"))).unwrap();
    }
    let cfg = d.path().join("flex.json");
    std::fs::write(
        &cfg,
        r#"{"entry": "flex-tiny", "family": "vae-flex",
  "model": {"image": [3, 16, 16], "latent_channels": 2,
    "encoder": ["C2d_3_32_3_2_1", "VAERB_32_32", "GN_32_32", "SiLU", "C2d_32_4_3_1_1"],
    "decoder": ["C2d_2_32_3_1_1", "VAEA_32", "UpS_2", "C2d_32_3_3_1_1"],
    "loss": {"reconstruction": "l1", "ssim": true, "beta": 0.5}},
  "data": {"dataset": "folder", "folder": {"val_fraction": 0.25}},
  "train": {"epochs": 1, "batch_size": 4, "lr": 0.001, "seed": 0, "eval_batch_size": 8}}"#,
    )
    .unwrap();
    let run = d.path().join("run");
    let o = aezoo(
        d.path(),
        &[
            "train",
            "--config",
            cfg.to_str().unwrap(),
            "--data",
            photos.to_str().unwrap(),
            "--out",
            run.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("flex-tiny: test MSE"));
    assert!(run.join("model.safetensors").is_file() && run.join("reconstructions.png").is_file());
    // Its weights evaluate on the same (seeded) validation split.
    let o = aezoo(
        d.path(),
        &[
            "eval",
            "flex-tiny",
            "--weights",
            run.to_str().unwrap(),
            "--data",
            photos.to_str().unwrap(),
            "--check",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    // No folder given: a one-line error saying how to give one.
    let o = aezoo(d.path(), &["train", "--config", cfg.to_str().unwrap()]);
    assert_one_line_error(&o, &["--data DIR"]);

    // The modes: a folder reconstructed beside its files, encoded, decoded.
    let w = run.to_str().unwrap();
    let o = aezoo(
        d.path(),
        &["reconstruct", "flex-tiny", photos.to_str().unwrap(), "--weights", w],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("mean over 12 images: PSNR"), "{out}");
    assert!(photos.join("p3.recon.png").is_file());
    let lat = d.path().join("lat.safetensors");
    let o = aezoo(
        d.path(),
        &[
            "encode",
            "flex-tiny",
            photos.to_str().unwrap(),
            "--weights",
            w,
            "-o",
            lat.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("12 images → latents [12, 2, 8, 8]"),
        "earlier .recon.png outputs are not inputs"
    );
    let dec = d.path().join("dec");
    let o = aezoo(
        d.path(),
        &[
            "decode",
            "flex-tiny",
            lat.to_str().unwrap(),
            "--weights",
            w,
            "-o",
            dec.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        image::open(dec.join("p7.png")).unwrap().width(),
        16,
        "decoded images keep their source names"
    );
    // Latents of another shape, or a file that is not latents: one-line errors.
    let o = aezoo(
        d.path(),
        &[
            "decode",
            "flex-tiny",
            run.join("model.safetensors").to_str().unwrap(),
            "--weights",
            w,
        ],
    );
    assert_one_line_error(&o, &["model.safetensors", "no tensor `latents`"]);
    std::fs::write(d.path().join("junk.safetensors"), b"\x10\x00\x00").unwrap();
    let o = aezoo(d.path(), &["decode", "flex-tiny", "junk.safetensors", "--weights", w]);
    assert_one_line_error(&o, &["junk.safetensors", "not a safetensors file"]);

    // max-batch measures in child processes and reports the largest fit.
    let o = aezoo(
        d.path(),
        &["max-batch", cfg.to_str().unwrap(), "--budget", "4GiB", "--limit", "4"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("peak resident memory") && out.contains("largest batch within 4.00 GiB: 4"),
        "{out}"
    );
    let o = aezoo(
        d.path(),
        &["max-batch", cfg.to_str().unwrap(), "--budget", "1KiB", "--limit", "4"],
    );
    assert_one_line_error(&o, &["even a batch of 1"]);
}

// ---------------------------------------------------------------- video entries

fn video_config(dir: &Path) -> String {
    let text = r#"{
  "entry": "tiny-video", "family": "video-ae",
  "model": {"clip": [4, 32, 32], "channels": [2, 3], "latent_channels": 2, "kernel": 3,
            "residual": "a", "codebook": {"levels": 4}},
  "data": {"dataset": "moving-mnist",
           "moving_mnist": {"frames": 4, "size": 32, "train_clips": 8, "test_clips": 3}},
  "train": {"epochs": 2, "batch_size": 4, "lr": 0.002, "seed": 0, "eval_batch_size": 3}
}"#;
    let p = dir.join("tiny-video.json");
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

#[test]
fn errors_stay_one_line_with_rust_backtrace_set() {
    // A model error raised through candle (which appends a backtrace to its
    // text under RUST_BACKTRACE): still one line.
    let d = tempfile::tempdir().unwrap();
    let cfg = video_config(d.path());
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("[4, 32, 32]", "[4, 30, 30]")
        .replace(r#""size": 32"#, r#""size": 30"#);
    std::fs::write(&cfg, text).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_aezoo"))
        .current_dir(d.path())
        .args(["train", &cfg, "--out", d.path().join("run").to_str().unwrap()])
        .env("RUST_BACKTRACE", "1")
        .env("XDG_CACHE_HOME", d.path().join(".cache"))
        .env_remove("AEZOO_DATA")
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    assert_one_line_error(&o, &["divisible by 8"]);
    let err = stderr(&o);
    let from_error: Vec<&str> = err.lines().skip_while(|l| !l.starts_with("error: ")).collect();
    assert_eq!(from_error.len(), 1, "{err}");
}

#[test]
fn video_train_show_and_rate_sweep() {
    let d = tempfile::tempdir().unwrap();
    let cfg = video_config(d.path());
    let run = d.path().join("run");
    let o = aezoo(d.path(), &["train", &cfg, "--out", run.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    for f in [
        "model.safetensors",
        "progress.safetensors",
        "reconstructions.png",
        "loss.png",
    ] {
        assert!(run.join(f).is_file(), "{f} missing");
    }
    let out = d.path().join("show");
    let o = aezoo(
        d.path(),
        &[
            "show-video",
            "tiny-video",
            "--weights",
            run.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--clips",
            "2",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("test clip 1: PSNR") && text.contains("epochs 1, 2"),
        "{text}"
    );
    for f in ["clips.gif", "progress.gif", "loss.png"] {
        let bytes = std::fs::read(out.join(f)).unwrap();
        assert!(
            bytes.starts_with(if f.ends_with("gif") { b"GIF89a" } else { b"\x89PNG" }),
            "{f}"
        );
    }
    // The GIF: 4 frames (one per clip frame) of 2 rows × (original | reconstruction).
    let gif = image::codecs::gif::GifDecoder::new(std::io::Cursor::new(std::fs::read(out.join("clips.gif")).unwrap()))
        .unwrap();
    let frames = image::AnimationDecoder::into_frames(gif).collect_frames().unwrap();
    assert_eq!(frames.len(), 4);

    // Sweep K = 2, 4 by fine-tuning from the run: rate = latent values × log2 K.
    let sweep = d.path().join("rd");
    let o = aezoo(
        d.path(),
        &[
            "rd-video",
            &cfg,
            "--levels",
            "2,4",
            "--epochs",
            "1",
            "--init",
            run.to_str().unwrap(),
            "-o",
            sweep.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let csv = std::fs::read_to_string(sweep.join("rd.csv")).unwrap();
    let rows: Vec<Vec<&str>> = csv.lines().skip(1).map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 2);
    // latent 2 × 4 frames × 4 × 4 = 128 values.
    assert_eq!((rows[0][0], rows[0][1], rows[0][2]), ("2", "128", "128"));
    assert_eq!((rows[1][0], rows[1][2]), ("4", "256"));
    for f in ["rd.md", "rd.png", "rd_ssim.png"] {
        assert!(sweep.join(f).is_file(), "{f} missing");
    }
    // A non-video entry is refused by show-video in one line.
    let mlp = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../weights/ae-mlp");
    let o = aezoo(d.path(), &["show-video", "ae-mlp", "--weights", mlp.to_str().unwrap()]);
    assert_one_line_error(&o, &["not clips"]);
}

#[test]
fn bad_moving_mnist_files_are_one_line_errors() {
    let d = tempfile::tempdir().unwrap();
    let cfg = video_config(d.path());
    let npy = d.path().join("mnist_test_seq.npy");
    // A float array: refused, naming the file and the dtype.
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (4, 2, 32, 32), }";
    let padded = format!("{header:<117}\n");
    bytes.extend((padded.len() as u16).to_le_bytes());
    bytes.extend(padded.as_bytes());
    bytes.extend(vec![0u8; 4 * 2 * 32 * 32 * 4]);
    std::fs::write(&npy, &bytes).unwrap();
    let o = aezoo(d.path(), &["train", &cfg, "--data", npy.to_str().unwrap()]);
    assert_one_line_error(&o, &["mnist_test_seq.npy", "<f4"]);
    // Truncated uint8 data.
    let header = "{'descr': '|u1', 'fortran_order': False, 'shape': (4, 2, 32, 32), }";
    let padded = format!("{header:<117}\n");
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend((padded.len() as u16).to_le_bytes());
    bytes.extend(padded.as_bytes());
    bytes.extend(vec![0u8; 1000]);
    std::fs::write(&npy, &bytes).unwrap();
    let o = aezoo(d.path(), &["train", &cfg, "--data", d.path().to_str().unwrap()]);
    assert_one_line_error(&o, &["mnist_test_seq.npy", "truncated", "8192"]);
}
