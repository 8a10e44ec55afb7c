//! aezoo-train's tests, through a toy family defined here (what adding a
//! family takes: a struct, `Family`, one table line): the trainer's
//! `Learner` stopped and resumed ends bit-identical to an uninterrupted run,
//! observers see every step and epoch in order, the `Zoo` resolves and
//! refuses entries by their family, and the loss scaler and precision rules.

use std::path::Path;
use std::sync::{Arc, Mutex};

use aezoo_data::Locator;
use aezoo_nn::layers::{linear, Linear, LinearConfig};
use aezoo_nn::{Autoencoder, Batch, Family, StepCtx, StepOutput};
use aezoo_train::observers::Observer;
use aezoo_train::precision::{LossScaler, Precision};
use aezoo_train::trainer::{EpochEvent, RunState, StepEvent};
use aezoo_train::{DynFamily, EntryConfig, Learner, Pipeline, Registered, TrainOptions, Zoo};
use candle_core::{DType, Device, Module, Result, Tensor, Var};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

// ---------------------------------------------------------------- a toy family

/// `model` of the toy family: a one-layer code of `latent` values.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TinyConfig {
    image: [usize; 3],
    latent: usize,
}

/// `x → sigmoid(W₂ · relu(W₁ · x))`, mean squared error.
struct Tiny {
    enc: Linear,
    dec: Linear,
    image: [usize; 3],
    latent: usize,
}

impl Autoencoder for Tiny {
    fn encode(&self, xs: &Tensor) -> Result<Tensor> {
        self.enc.forward(&xs.flatten_from(1)?)?.relu()
    }
    fn decode(&self, z: &Tensor) -> Result<Tensor> {
        let [c, h, w] = self.image;
        aezoo_nn::ops::sigmoid(&self.dec.forward(z)?)?.reshape((z.dim(0)?, c, h, w))
    }
    fn step(&self, batch: &Batch, _ctx: &mut StepCtx) -> Result<StepOutput> {
        let recon = self.reconstruct(&batch.input)?;
        let loss = (&recon - &batch.target)?.sqr()?.mean_all()?;
        Ok(StepOutput {
            loss: loss.clone(),
            terms: vec![("mse", loss)],
            recon,
        })
    }
    fn latent_shape(&self) -> Vec<usize> {
        vec![self.latent]
    }
}

impl Family for Tiny {
    type Config = TinyConfig;
    const NAME: &'static str = "tiny";
    const ABOUT: &'static str = "a one-layer autoencoder for the trainer's tests";

    fn new(cfg: &TinyConfig, vb: VarBuilder) -> Result<Self> {
        let d = cfg.image.iter().product();
        Ok(Self {
            enc: linear(d, cfg.latent, LinearConfig::default(), vb.pp("enc"))?,
            dec: linear(cfg.latent, d, LinearConfig::default(), vb.pp("dec"))?,
            image: cfg.image,
            latent: cfg.latent,
        })
    }

    fn image_shape(cfg: &TinyConfig) -> [usize; 3] {
        cfg.image
    }
}

/// A graph-like family of another pipeline, validated by its own rule.
fn other_pipeline(_: &EntryConfig, origin: &str) -> aezoo_train::Result<()> {
    Err(aezoo_train::TrainError::Config {
        origin: origin.into(),
        msg: "checked by the other pipeline".into(),
    })
}

static FAMILIES: &[&dyn DynFamily] = &[&Registered::<Tiny>::NEW];
/// Another pipeline with one family, `other`.
struct Other;

impl Pipeline for Other {
    fn name(&self) -> &'static str {
        "other"
    }
    fn kind(&self) -> &'static str {
        "other"
    }
    fn commands(&self) -> &'static str {
        "`other-train`"
    }
    fn families(&self) -> Vec<(&'static str, &'static str)> {
        vec![("other", "another pipeline's family")]
    }
    fn validate(&self, cfg: &EntryConfig, origin: &str) -> aezoo_train::Result<()> {
        other_pipeline(cfg, origin)
    }
}
static ENTRIES: &[(&str, &str)] = &[(
    "tiny-mnist",
    r#"{
  "entry": "tiny-mnist", "family": "tiny",
  "model": {"image": [1, 28, 28], "latent": 6},
  "data": {"dataset": "mnist", "train_limit": 200, "test_limit": 64},
  "train": {"epochs": 2, "batch_size": 32, "eval_batch_size": 64, "lr": 0.01, "seed": 3,
            "log_every": 2, "checkpoint_every": 3}
}"#,
)];
static ZOO: Zoo = Zoo {
    families: FAMILIES,
    pipelines: &[&Other],
    entries: ENTRIES,
    protocols: &[],
    importers: &[],
};

// ---------------------------------------------------------------- helpers

fn entry() -> EntryConfig {
    ZOO.resolve_entry("tiny-mnist").unwrap().0
}

fn opts(dir: &Path) -> TrainOptions {
    let mut o = TrainOptions::new(dir, Locator::bundled_only());
    o.plots = false;
    o
}

fn weights(dir: &Path) -> Vec<(String, Vec<u32>)> {
    let t = aezoo_train::checkpoint::read_tensors(&dir.join("model.safetensors")).unwrap();
    t.into_iter()
        .map(|(k, v)| {
            let bits = v.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            (k, bits.into_iter().map(f32::to_bits).collect())
        })
        .collect()
}

// ---------------------------------------------------------------- tests

#[test]
fn a_stopped_and_resumed_run_ends_with_the_same_bits() {
    let cfg = entry();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let full = aezoo_train::train(&cfg, &ZOO, &opts(a.path())).unwrap();
    assert!(full.completed && full.epochs_done == 2 && full.steps == 14, "{full:?}");
    // Stopped mid-epoch (step 5 of 7), then at the epoch end, then resumed.
    for stop in [5, 7] {
        let mut o = opts(b.path());
        o.max_steps = Some(stop);
        o.resume = stop != 5;
        let out = aezoo_train::train(&cfg, &ZOO, &o).unwrap();
        assert!(!out.completed && out.steps == stop, "{out:?}");
    }
    let mut o = opts(b.path());
    o.resume = true;
    let rest = aezoo_train::train(&cfg, &ZOO, &o).unwrap();
    assert!(rest.completed && rest.steps == 14);
    assert_eq!(weights(a.path()), weights(b.path()));
    assert_eq!(full.metrics, rest.metrics);
    // The log reads as if the run had never stopped.
    let lines = |d: &Path| {
        std::fs::read_to_string(d.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                for timing in ["images_per_s", "train_images_per_s", "train_seconds"] {
                    v.as_object_mut().unwrap().remove(timing);
                }
                v
            })
            .collect::<Vec<_>>()
    };
    // Every line, the epochs' train_loss over all their batches included.
    assert_eq!(lines(a.path()), lines(b.path()));
}

/// Trains `tiny-mnist` into `dir`, stopped after `stop` steps.
fn stopped_run(dir: &Path, stop: u64) {
    let mut o = opts(dir);
    o.max_steps = Some(stop);
    let out = aezoo_train::train(&entry(), &ZOO, &o).unwrap();
    assert_eq!(out.steps, stop);
}

/// Resumes the run in `dir` to its end, recording the steps it takes.
fn resume(dir: &Path) -> (aezoo_train::TrainOutcome, Vec<String>) {
    let mut o = opts(dir);
    o.resume = true;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut learner = Learner::new(&entry(), &ZOO, &o).unwrap();
    learner.observe(Box::new(Recorder(seen.clone())));
    let out = learner.fit().unwrap();
    let seen = seen.lock().unwrap().clone();
    (out, seen)
}

#[test]
fn resume_recovers_from_torn_files_and_leaves_no_temp_files() {
    let full = tempfile::tempdir().unwrap();
    aezoo_train::train(&entry(), &ZOO, &opts(full.path())).unwrap();
    let d = tempfile::tempdir().unwrap();
    // Stopped at step 5 of the first epoch: checkpoints step-3 and step-5.
    stopped_run(d.path(), 5);
    let ck = d.path().join("checkpoints");
    // A kill between step-5's rename and `latest`'s update: `latest` still
    // names step-3, and resume must start from step-5 all the same.
    std::fs::write(ck.join("latest"), "step-00000003\n").unwrap();
    // Temp files of killed writers, and a torn last log line.
    for f in ["model.safetensors.999999.tmp", "metrics.jsonl.999999.tmp"] {
        std::fs::write(d.path().join(f), b"half").unwrap();
    }
    std::fs::write(ck.join("latest.999999.tmp"), b"step-").unwrap();
    std::fs::create_dir(ck.join(".step-00000006.tmp-999999")).unwrap();
    let mut log = std::fs::OpenOptions::new()
        .append(true)
        .open(d.path().join("metrics.jsonl"))
        .unwrap();
    std::io::Write::write_all(&mut log, br#"{"kind":"step","epoch":1,"st"#).unwrap();
    drop(log);
    let (out, seen) = resume(d.path());
    assert!(out.completed && out.steps == 14);
    assert_eq!(seen[1], "step 6", "resumed from the newest checkpoint: {seen:?}");
    assert_eq!(weights(full.path()), weights(d.path()));
    for dir in [d.path().to_path_buf(), ck.clone()] {
        let left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp"))
            .collect();
        assert!(left.is_empty(), "temp files left in {}: {left:?}", dir.display());
    }
    let text = std::fs::read_to_string(d.path().join("metrics.jsonl")).unwrap();
    assert!(
        text.lines()
            .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()),
        "{text}"
    );
}

#[test]
fn a_damaged_newest_checkpoint_falls_back_to_the_one_before() {
    let full = tempfile::tempdir().unwrap();
    aezoo_train::train(&entry(), &ZOO, &opts(full.path())).unwrap();
    let d = tempfile::tempdir().unwrap();
    stopped_run(d.path(), 5);
    // step-5's weights torn in half.
    let w = d.path().join("checkpoints/step-00000005/model.safetensors");
    let bytes = std::fs::read(&w).unwrap();
    std::fs::write(&w, &bytes[..bytes.len() / 2]).unwrap();
    let (out, seen) = resume(d.path());
    assert!(out.completed);
    assert_eq!(seen[1], "step 4", "resumed from step-3: {seen:?}");
    assert_eq!(weights(full.path()), weights(d.path()));
}

#[test]
fn a_trainer_state_that_cannot_be_true_is_refused_naming_the_field() {
    // Found by `aezoo fuzz`: fields that parse but cannot hold are errors
    // naming trainer_state.json and the field, before anything is restored.
    let cases: [(&str, fn(&mut serde_json::Value), &str); 5] = [
        (
            "moments_file",
            |v| v["optimizer"]["moments_file"] = "../../elsewhere.safetensors".into(),
            "optimizer.moments_file",
        ),
        ("step", |v| v["step"] = 4.into(), "does not match its folder"),
        ("epoch", |v| v["epoch"] = 1000.into(), "past the run's"),
        ("lr", |v| v["optimizer"]["lr"] = (-1.0).into(), "optimizer.lr"),
        (
            "batch",
            |v| v["batch_in_epoch"] = 1_000_000.into(),
            "batch_in_epoch 1000000",
        ),
    ];
    for (what, change, needle) in cases {
        let d = tempfile::tempdir().unwrap();
        stopped_run(d.path(), 3);
        // Only one checkpoint, so there is none to fall back to.
        let _ = std::fs::remove_dir_all(d.path().join("checkpoints/step-00000002"));
        let p = d.path().join("checkpoints/step-00000003/trainer_state.json");
        let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        change(&mut v);
        std::fs::write(&p, v.to_string()).unwrap();
        let mut o = opts(d.path());
        o.resume = true;
        let e = aezoo_train::train(&entry(), &ZOO, &o).unwrap_err().to_string();
        assert!(e.contains("trainer_state.json") && e.contains(needle), "{what}: {e}");
    }
}

#[test]
fn a_diverging_run_stops_naming_the_step_and_what_is_kept() {
    let d = tempfile::tempdir().unwrap();
    let mut cfg = entry();
    cfg.train.lr = 1e10;
    let e = aezoo_train::train(&cfg, &ZOO, &opts(d.path())).unwrap_err().to_string();
    assert!(
        e.contains("step 1:") && e.contains("lower train.lr") && e.contains("no checkpoint had been written"),
        "{e}"
    );
    assert!(
        aezoo_train::checkpoint::latest(d.path()).is_none(),
        "nothing diverged is kept"
    );
    // Past a checkpoint, the message names it.
    let d = tempfile::tempdir().unwrap();
    stopped_run(d.path(), 3);
    let mut cfg = entry();
    cfg.train.lr = 1e10;
    let mut o = opts(d.path());
    o.resume = true;
    let e = aezoo_train::train(&cfg, &ZOO, &o).unwrap_err().to_string();
    assert!(
        e.contains("step 4:") && e.contains("step-00000003") && e.contains("is kept"),
        "{e}"
    );
}

/// Records what the learner tells its observers.
struct Recorder(Arc<Mutex<Vec<String>>>);

impl Observer for Recorder {
    fn on_epoch_start(&mut self, run: &RunState, batches: usize) -> aezoo_train::Result<()> {
        self.0
            .lock()
            .unwrap()
            .push(format!("start {} {batches} from {}", run.epoch, run.batch));
        Ok(())
    }
    fn on_step(&mut self, run: &RunState, s: &StepEvent) -> aezoo_train::Result<()> {
        assert_eq!(run.step, s.step);
        assert!(s.loss.is_finite() && s.terms.len() == 1);
        self.0.lock().unwrap().push(format!("step {}", s.step));
        Ok(())
    }
    fn on_batches_end(&mut self, _run: &RunState) -> aezoo_train::Result<()> {
        self.0.lock().unwrap().push("batches end".into());
        Ok(())
    }
    fn on_epoch_end(&mut self, run: &RunState, e: &EpochEvent) -> aezoo_train::Result<()> {
        assert_eq!((run.epoch, run.batch), (e.epoch, 0));
        assert!(
            run.run_dir.join("model.safetensors").is_file(),
            "checkpoints come first"
        );
        self.0
            .lock()
            .unwrap()
            .push(format!("end {} mse {}", e.epoch, e.metrics.mse > 0.0));
        Ok(())
    }
}

#[test]
fn observers_see_every_step_and_epoch_in_order() {
    let d = tempfile::tempdir().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut learner = Learner::new(&entry(), &ZOO, &opts(d.path())).unwrap();
    learner.observe(Box::new(Recorder(seen.clone())));
    let out = learner.fit().unwrap();
    assert!(out.completed);
    let mut want = Vec::new();
    for epoch in 0..2 {
        want.push(format!("start {epoch} 7 from 0"));
        want.extend((1..=7).map(|s| format!("step {}", 7 * epoch + s)));
        want.push("batches end".into());
        want.push(format!("end {} mse true", epoch + 1));
    }
    assert_eq!(*seen.lock().unwrap(), want);
    for f in [
        "config.json",
        "metrics.jsonl",
        "model.safetensors",
        "checkpoints/latest",
    ] {
        assert!(d.path().join(f).is_file(), "{f}");
    }
    assert!(!d.path().join("loss.png").exists(), "plots were off");
}

#[test]
fn the_zoo_resolves_entries_by_family_and_refuses_the_rest() {
    let cfg = entry();
    assert_eq!(ZOO.image_shape(&cfg).unwrap(), [1, 28, 28]);
    assert_eq!(ZOO.entry_names(), ["tiny-mnist"]);
    let e = ZOO.resolve_entry("no-such").unwrap_err().to_string();
    assert!(e.contains("no-such") && e.contains("tiny-mnist"), "{e}");
    let text = ENTRIES[0].1;
    let e = ZOO
        .config_from_str(&text.replace(r#""family": "tiny""#, r#""family": "nope""#), "t.json")
        .unwrap_err()
        .to_string();
    assert!(e.contains("nope") && e.contains("tiny, other"), "{e}");
    let e = ZOO
        .config_from_str(&text.replace(r#""latent": 6"#, r#""latent": 6, "depth": 2"#), "t.json")
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("t.json: model") && e.contains("depth"), "{e}");
    // Another pipeline's family: its own validation, and image commands point there.
    let other = text.replace(r#""family": "tiny""#, r#""family": "other""#);
    let e = ZOO.config_from_str(&other, "o.json").unwrap_err().to_string();
    assert!(e.contains("checked by the other pipeline"), "{e}");
    let cfg = EntryConfig::parse(&other, "o.json").unwrap();
    assert_eq!(ZOO.pipeline_of(&cfg), Some("other"));
    let e = ZOO.family_of(&cfg).err().unwrap().to_string();
    assert!(e.contains("`other-train`"), "{e}");
    // A family without a codebook says so when asked to resize one.
    let e = ZOO
        .family_of(&entry())
        .unwrap()
        .with_codebook(&entry().model, "t", 8, None)
        .unwrap_err();
    assert!(e.to_string().contains("no codebook"), "{e}");
}

#[test]
fn the_loss_scaler_skips_overflowing_steps_halves_and_regrows() {
    let x = Var::from_slice(&[1f32, -2.0, 0.5], 3, &Device::Cpu).unwrap();
    let vars = vec![("x".to_string(), x.clone())];
    let mut sc = LossScaler::new();
    assert_eq!(sc.scale(), 65536.0);
    // d/dx Σ 3x = 3 everywhere; the scale is a power of two, so exactly 3 back.
    let loss = (x.as_tensor() * 3.0).unwrap().sum_all().unwrap();
    let mut g = sc.scale_loss(&loss).unwrap().backward().unwrap();
    assert!(sc.unscale(&mut g, &vars).unwrap());
    assert_eq!(g.get(x.as_tensor()).unwrap().to_vec1::<f32>().unwrap(), [3.0; 3]);
    // 1e38 · 65536 overflows f32: skipped, scale halved.
    let loss = (x.as_tensor() * 1e38).unwrap().sum_all().unwrap();
    let mut g = sc.scale_loss(&loss).unwrap().backward().unwrap();
    assert!(!sc.unscale(&mut g, &vars).unwrap());
    assert_eq!((sc.scale(), sc.state().skipped, sc.state().good_steps), (32768.0, 1, 0));
    // A NaN gradient too.
    let loss = (x.as_tensor() * f64::NAN).unwrap().sum_all().unwrap();
    let mut g = sc.scale_loss(&loss).unwrap().backward().unwrap();
    assert!(!sc.unscale(&mut g, &vars).unwrap());
    assert_eq!(sc.scale(), 16384.0);
    // 2,000 finite steps in a row double it (PyTorch's growth_interval).
    let loss = x.as_tensor().sum_all().unwrap();
    for i in 1..=2000 {
        let mut g = sc.scale_loss(&loss).unwrap().backward().unwrap();
        assert!(sc.unscale(&mut g, &vars).unwrap());
        assert_eq!(sc.scale(), if i < 2000 { 16384.0 } else { 32768.0 }, "after {i}");
    }
}

#[test]
fn precision_resolves_per_device_and_family_and_bad_choices_are_named() {
    let cpu = Device::Cpu;
    assert_eq!(Precision::Auto.resolve(&cpu, true), Ok(DType::F32), "f32 on the CPU");
    assert_eq!(Precision::Bf16.resolve(&cpu, true), Ok(DType::BF16));
    assert_eq!(Precision::F16.resolve(&cpu, true), Ok(DType::F16));
    assert_eq!(Precision::Auto.resolve(&cpu, false), Ok(DType::F32));
    let e = Precision::Bf16.resolve(&cpu, false).unwrap_err();
    assert!(e.contains("`bf16`") && e.contains("does not support"), "{e}");
    // A family without mixed precision, asked for it: a config error, no run folder.
    let d = tempfile::tempdir().unwrap();
    let mut cfg = entry();
    cfg.train.precision = Precision::F16;
    let e = aezoo_train::train(&cfg, &ZOO, &opts(&d.path().join("run")))
        .unwrap_err()
        .to_string();
    assert!(e.contains("train.precision") && e.contains("`f16`"), "{e}");
    assert!(!d.path().join("run").exists());
    let e = EntryConfig::parse(
        &ENTRIES[0].1.replace(r#""seed": 3"#, r#""seed": 3, "precision": "fp8""#),
        "t.json",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("train.precision") && e.contains("fp8"), "{e}");
}
