//! Killed runs and hostile files: the kill -9 soak and the bounded fuzz run.

use super::*;

/// The soak's config: the tiny MLP, a checkpoint and a log line every step.
fn soak_config(dir: &Path) -> String {
    let text = r#"{
  "entry": "tiny", "family": "ae-mlp",
  "model": {"image": [1, 28, 28], "latent": 8},
  "data": {"dataset": "mnist", "train_limit": 1536, "test_limit": 64},
  "train": {"epochs": 3, "batch_size": 32, "lr": 0.001, "seed": 0, "log_every": 1, "checkpoint_every": 1}
}"#;
    let p = dir.join("tiny.json");
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

/// The temp files and folders writers leave while they write (and a killed
/// one leaves behind): `<name>.<pid>.tmp`, `checkpoints/.step-….tmp-<pid>`.
fn temps_in(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for sub in [dir.to_path_buf(), dir.join("checkpoints")] {
        for e in std::fs::read_dir(&sub).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tmp") || name.contains(".tmp-") {
                found.push(name);
            }
        }
    }
    found
}

/// The highest step of a run's newest complete checkpoint (0: none).
fn checkpoint_step(run: &Path) -> u64 {
    std::fs::read_dir(run.join("checkpoints"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join("trainer_state.json").is_file())
        .filter_map(|e| e.file_name().to_string_lossy().strip_prefix("step-")?.parse().ok())
        .max()
        .unwrap_or(0)
}

/// The highest step in a run's metrics.jsonl (a torn last line skipped).
fn logged_step(run: &Path) -> u64 {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["step"].as_u64())
        .max()
        .unwrap_or(0)
}

/// A metrics file's JSON values (a line each for `.jsonl`) without the
/// wall-clock fields.
fn without_clock(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap();
    let values: Vec<serde_json::Value> = if path.extension().is_some_and(|x| x == "jsonl") {
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    } else {
        vec![serde_json::from_str(&text).unwrap()]
    };
    let clock = ["images_per_s", "train_images_per_s", "train_seconds"];
    values
        .into_iter()
        .map(|mut v| {
            if let Some(o) = v.as_object_mut() {
                o.retain(|k, _| !clock.contains(&k.as_str()));
            }
            v
        })
        .collect()
}

#[test]
fn training_killed_at_random_moments_resumes_bit_identical() {
    // A run killed with SIGKILL again and again — at random moments, and the
    // moment a checkpoint or log write is seen in progress — then resumed
    // each time, ends with the uninterrupted run's weights bit for bit and
    // its metrics (wall-clock fields aside), no temp file left, and no kill
    // costing more than one checkpoint interval (here one step).
    let d = tempfile::tempdir().unwrap();
    let cfg = soak_config(d.path());
    let train = |run: &Path, resume: bool| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_aezoo"));
        c.current_dir(d.path())
            .env("XDG_CACHE_HOME", d.path().join(".cache"))
            .env_remove("AEZOO_DATA")
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        if resume {
            c.args(["train", "tiny", "--resume", run.to_str().unwrap()]);
        } else {
            c.args(["train", &cfg, "--no-plots", "--out", run.to_str().unwrap()]);
        }
        c
    };
    let whole = d.path().join("whole");
    let t0 = std::time::Instant::now();
    let o = train(&whole, false).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let span = t0.elapsed();

    let run = d.path().join("killed");
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let (mut kills, mut mid_write) = (0, 0);
    let mut finished = false;
    // Twelve tries at a kill (a run that ends first ends the soak), then the run to its end.
    for round in 0..13 {
        let resume = checkpoint_step(&run) > 0;
        let mut child = train(&run, resume).spawn().unwrap();
        let kill_at = span.mul_f64(0.03 + next(25) as f64 / 100.0);
        let on_write = round % 2 == 1;
        let started = std::time::Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if round < 12 && (on_write && !temps_in(&run).is_empty() || !on_write && started.elapsed() >= kill_at) {
                break None;
            }
            std::thread::sleep(std::time::Duration::from_micros(if on_write { 200 } else { 2000 }));
        };
        if let Some(status) = status {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            assert!(status.success(), "round {round}: {err}");
            finished = true;
            break;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        kills += 1;
        mid_write += usize::from(!temps_in(&run).is_empty());
        let (logged, kept) = (logged_step(&run), checkpoint_step(&run));
        assert!(
            logged <= kept + 1,
            "kill {kills}: steps up to {logged} were logged but the newest checkpoint is step {kept}"
        );
    }
    assert!(finished, "the run did not finish");
    eprintln!("soak: {kills} kills ({mid_write} inside a write) of runs lasting {span:?} whole");
    assert!(kills >= 8, "only {kills} kills landed before the run finished");
    assert!(mid_write >= 1, "no kill landed inside a write ({kills} kills)");
    assert_eq!(
        std::fs::read(whole.join("model.safetensors")).unwrap(),
        std::fs::read(run.join("model.safetensors")).unwrap(),
        "weights after {kills} kills ({mid_write} inside a write)"
    );
    for f in ["metrics.jsonl", "metrics.json"] {
        let (a, b) = (without_clock(&whole.join(f)), without_clock(&run.join(f)));
        assert_eq!(a, b, "{f} after {kills} kills");
    }
    assert_eq!(
        temps_in(&run),
        Vec::<String>::new(),
        "temp files left after {kills} kills"
    );
}

/// The repository root, where `aezoo fuzz` finds the shipped weights.
fn repo_root() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn every_parser_survives_a_bounded_fuzz_run() {
    // Each target for a few seconds under the default memory limit: no
    // panic, abort, hang or unclear error (a long run is in the README).
    let out = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_aezoo"))
        .current_dir(repo_root())
        .args(["fuzz", "--seconds", "3", "--out", out.path().to_str().unwrap()])
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{stdout}\n{}", stderr(&o));
    let list = Command::new(env!("CARGO_BIN_EXE_aezoo"))
        .args(["fuzz", "--list"])
        .output()
        .unwrap();
    let names: Vec<String> = String::from_utf8_lossy(&list.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    assert!(names.len() >= 13, "{names:?}");
    for n in &names {
        let line = stdout.lines().find(|l| l.split_whitespace().next() == Some(n.as_str()));
        let line = line.unwrap_or_else(|| panic!("no line for target {n}:\n{stdout}"));
        assert!(line.ends_with("no failure") && line.contains(" inputs, "), "{line}");
    }
}

#[test]
fn the_fuzzer_fails_on_a_worker_that_dies() {
    // A worker that cannot live in its memory limit is a failure with its
    // input kept, not a pass: the harness catches aborts.
    let out = tempfile::tempdir().unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_aezoo"))
        .current_dir(repo_root())
        .args(["fuzz", "--seconds", "1", "--targets", "weights", "--memory", "48MiB"])
        .args(["--out", out.path().to_str().unwrap()])
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(!o.status.success(), "{stdout}");
    assert!(stdout.contains("weights") && stdout.contains("FAILED"), "{stdout}");
    assert!(stderr(&o).contains("1 target(s) failed: weights"), "{}", stderr(&o));
}
