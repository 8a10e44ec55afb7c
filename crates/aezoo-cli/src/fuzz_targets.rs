//! The targets of `aezoo fuzz` ([`crate::fuzz`]): each file format aezoo
//! reads, with the seed inputs its mutations start from and the code the
//! commands run on such a file — the same functions, so a fault found here is
//! one a user would meet. Targets that need a model use the shipped weights
//! of `aezoo_zoo`'s fuzz and compress entries (`weights/<entry>`): run from
//! the repository root.

use std::cell::OnceCell;
use std::io::Write;
use std::path::{Path, PathBuf};

use aezoo_data::idx;
use aezoo_nn::optim::Adam;
use aezoo_nn::{ParamStore, Rng};
use aezoo_train::checkpoint::{self, OptimizerState, TrainerState};
use aezoo_train::runlog::RunLog;
use aezoo_train::weights::{self, Loaded};
use aezoo_zoo::{default_entry, Task, ZOO};
use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};

use crate::fuzz::Structure;

/// One parser under test.
pub(crate) struct Target {
    pub(crate) name: &'static str,
    pub(crate) about: &'static str,
    /// The extension failing inputs are saved with.
    pub(crate) ext: &'static str,
    pub(crate) structure: Structure,
    /// Valid inputs, made once per worker; `scratch` may hold what they need beside them.
    pub(crate) seeds: fn(scratch: &Path) -> Result<Vec<Vec<u8>>>,
    /// Runs one input, written into the empty folder `case` (inside the
    /// seeds' `scratch`), through the code a command runs on such a file.
    pub(crate) run: fn(input: &[u8], case: &Path) -> Result<()>,
}

pub(crate) fn targets() -> Vec<Target> {
    vec![
        Target {
            name: "config",
            about: "a training config (configs/*.json): validated, the model built, one image through it",
            ext: "json",
            structure: Structure::Json,
            seeds: config_seeds,
            run: config_run,
        },
        Target {
            name: "weights",
            about: "model.safetensors of a weights folder (ae-conv): loaded, one image reconstructed",
            ext: "safetensors",
            structure: Structure::Safetensors,
            seeds: |_| {
                Ok(vec![read(
                    &shipped(default_entry(Task::FuzzModel))?.join("model.safetensors"),
                )?])
            },
            run: |input, case| {
                let dir = weights_case(case, None, Some(input))?;
                reconstruct_zero(&weights::load(&dir, &ZOO, &Device::Cpu)?)
            },
        },
        Target {
            name: "weights-config",
            about: "config.json of a weights folder (ae-conv's weights): loaded, one image reconstructed",
            ext: "json",
            structure: Structure::Json,
            seeds: |_| {
                Ok(vec![read(
                    &shipped(default_entry(Task::FuzzModel))?.join("config.json"),
                )?])
            },
            run: |input, case| {
                let dir = weights_case(case, Some(input), None)?;
                reconstruct_zero(&weights::load(&dir, &ZOO, &Device::Cpu)?)
            },
        },
        Target {
            name: "latents",
            about: "a latents.safetensors for `aezoo decode` (ae-conv): read, checked, decoded",
            ext: "safetensors",
            structure: Structure::Safetensors,
            seeds: latents_seeds,
            run: |input, case| {
                let path = write(case, "latents.safetensors", input)?;
                with_model(|m| {
                    let latents = crate::infer::read_latents(&path, m)?;
                    m.model.decode(&latents[0].z)?;
                    Ok(())
                })
            },
        },
        Target {
            name: "idx",
            about: "IDX images or labels, raw or gzip (MNIST's format)",
            ext: "idx",
            structure: Structure::Idx,
            seeds: idx_seeds,
            run: |input, case| {
                let path = write(case, "images-idx-ubyte", input)?;
                let images = idx::read_images(&path).map(|_| ());
                let labels = idx::read_labels(&path).map(|_| ());
                // Judged by what the file claims to be (its third magic byte
                // is the rank: 3 for images, 1 for labels).
                match (images, labels) {
                    (Ok(()), _) | (_, Ok(())) => Ok(()),
                    (Err(e), _) if claims_images(input) => Err(e.into()),
                    (_, Err(e)) => Err(e.into()),
                }
            },
        },
        Target {
            name: "image-reconstruct",
            about: "a PNG, JPEG or GIF through `aezoo reconstruct` (ae-conv)",
            ext: "img",
            structure: Structure::Image,
            seeds: |_| image_seeds(),
            run: |input, case| {
                let path = write(case, image_name(input), input)?;
                with_model(|m| {
                    let shape = ZOO.image_shape(&m.config)?;
                    let opts = crate::common::image_options(&m.config, false);
                    let x = aezoo_data::image_file::load_image(&path, shape, opts, &Device::Cpu)?;
                    m.model.reconstruct(&x)?;
                    Ok(())
                })
            },
        },
        Target {
            name: "image-compress",
            about: "a PNG, JPEG or GIF through `aezoo compress` (codec-mnist), any size",
            ext: "img",
            structure: Structure::Image,
            seeds: |_| image_seeds(),
            run: |input, case| {
                let path = write(case, image_name(input), input)?;
                with_codec(|lc| crate::codec::compress_file(lc, &path, &Device::Cpu).map(|_| ()))
            },
        },
        Target {
            name: "aez",
            about: "a .aez file through `aezoo decompress` (codec-mnist)",
            ext: "aez",
            structure: Structure::Aez,
            seeds: aez_seeds,
            run: |input, case| {
                let path = write(case, "image.aez", input)?;
                let codec = shipped(default_entry(Task::Compress))?;
                crate::codec::decompress_file(&path, Some(&codec), &Device::Cpu).map(|_| ())
            },
        },
        Target {
            name: "npy",
            about: "a Moving MNIST .npy (frames, clips, height, width) of uint8",
            ext: "npy",
            structure: Structure::Npy,
            seeds: |_| Ok(vec![npy(&[4, 3, 16, 16]), npy(&[2, 1, 5, 7])]),
            run: |input, case| {
                let path = write(case, "mnist_test_seq.npy", input)?;
                aezoo_data::moving_mnist::load_npy(&path)?;
                Ok(())
            },
        },
        Target {
            name: "graph-edges",
            about: "an edge list (<name>.edges.txt, or .gz) with its features: loaded, the split checked",
            ext: "txt",
            structure: Structure::Text,
            seeds: |scratch| graph_seeds(scratch, "edges"),
            run: |input, case| graph_run(input, case, "edges"),
        },
        Target {
            name: "graph-features",
            about: "a feature list (<name>.features.txt, or .gz) beside its edges: loaded, the split checked",
            ext: "txt",
            structure: Structure::Text,
            seeds: |scratch| graph_seeds(scratch, "features"),
            run: |input, case| graph_run(input, case, "features"),
        },
        Target {
            name: "trainer-state",
            about: "a checkpoint's trainer_state.json (ae-mlp): resumed into a model and optimiser",
            ext: "json",
            structure: Structure::Json,
            seeds: state_seeds,
            run: state_run,
        },
        Target {
            name: "metrics-jsonl",
            about: "a run's metrics.jsonl: its loss series read, the log reopened for a resume",
            ext: "jsonl",
            structure: Structure::JsonLines,
            seeds: |_| {
                let text = std::fs::read_to_string(shipped(default_entry(Task::Compress))?.join("metrics.jsonl"))?;
                let head: String = text.lines().take(30).map(|l| format!("{l}\n")).collect();
                Ok(vec![head.into_bytes()])
            },
            run: |input, case| {
                write(case, "metrics.jsonl", input)?;
                RunLog::read_series(case)?;
                RunLog::resume(case, 500)?;
                Ok(())
            },
        },
    ]
}

/// A shipped weights folder, found from the current folder.
fn shipped(entry: &str) -> Result<PathBuf> {
    let dir = Path::new("weights").join(entry);
    if !dir.join("model.safetensors").is_file() {
        bail!(
            "{}: not found; run `aezoo fuzz` from the repository root (its targets use the shipped weights)",
            dir.display()
        );
    }
    Ok(dir)
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

thread_local! {
    static MODEL: OnceCell<Loaded> = const { OnceCell::new() };
    static CODEC: OnceCell<aezoo_zoo::codec::LoadedCodec> = const { OnceCell::new() };
}

/// Runs `f` with the shipped ae-conv, loaded once per worker.
fn with_model(f: impl FnOnce(&Loaded) -> Result<()>) -> Result<()> {
    MODEL.with(|cell| {
        if cell.get().is_none() {
            let m = weights::load(&shipped(default_entry(Task::FuzzModel))?, &ZOO, &Device::Cpu)?;
            let _ = cell.set(m);
        }
        f(cell.get().expect("set above"))
    })
}

/// Runs `f` with the shipped codec-mnist, loaded once per worker.
fn with_codec(f: impl FnOnce(&aezoo_zoo::codec::LoadedCodec) -> Result<()>) -> Result<()> {
    CODEC.with(|cell| {
        if cell.get().is_none() {
            let c = aezoo_zoo::codec::load_codec(&shipped(default_entry(Task::Compress))?, &Device::Cpu)?;
            let _ = cell.set(c);
        }
        f(cell.get().expect("set above"))
    })
}

/// A weights folder in `case`: ae-conv's config and weights, one of them replaced.
fn weights_case(case: &Path, config: Option<&[u8]>, model: Option<&[u8]>) -> Result<PathBuf> {
    let src = shipped(default_entry(Task::FuzzModel))?;
    let dir = case.join("weights");
    std::fs::create_dir_all(&dir)?;
    match config {
        Some(c) => write(&dir, "config.json", c)?,
        None => write(&dir, "config.json", &read(&src.join("config.json"))?)?,
    };
    match model {
        Some(m) => write(&dir, "model.safetensors", m)?,
        None => {
            let to = dir.join("model.safetensors");
            std::fs::hard_link(src.join("model.safetensors"), &to)
                .or_else(|_| std::fs::copy(src.join("model.safetensors"), &to).map(|_| ()))?;
            to
        }
    };
    Ok(dir)
}

/// One zero image of the model's input shape through encoder and decoder.
fn reconstruct_zero(m: &Loaded) -> Result<()> {
    let [c, h, w] = ZOO.image_shape(&m.config)?;
    m.model
        .reconstruct(&Tensor::zeros((1, c, h, w), DType::F32, &Device::Cpu)?)?;
    Ok(())
}

fn config_seeds(_: &Path) -> Result<Vec<Vec<u8>>> {
    let mut seeds: Vec<Vec<u8>> = ZOO.entries.iter().map(|(_, json)| json.as_bytes().to_vec()).collect();
    if let Ok(rd) = std::fs::read_dir("configs") {
        let mut files: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        files.sort();
        for f in files {
            seeds.push(read(&f)?);
        }
    }
    Ok(seeds)
}

/// Work a model may take per input: parameters × pixels, a proxy for the
/// multiply-adds of one image. A config may legitimately ask for a model
/// that needs minutes per image; the target builds those but runs no image
/// through them, so that time is not mistaken for a hang.
const FORWARD_WORK: usize = 1 << 32;

fn config_run(input: &[u8], case: &Path) -> Result<()> {
    let path = write(case, "config.json", input)?;
    let cfg = ZOO.config_from_file(&path)?;
    if ZOO.pipeline_of(&cfg).is_some() {
        return Ok(());
    }
    let origin = path.display().to_string();
    let params = ParamStore::init(cfg.train.seed);
    let model = ZOO
        .family_of(&cfg)?
        .build(&cfg.model, &origin, params.var_builder(DType::F32, &Device::Cpu))?;
    let [c, h, w] = ZOO.image_shape(&cfg)?;
    if params.num_params().saturating_mul(c * h * w) <= FORWARD_WORK {
        model.reconstruct(&Tensor::zeros((1, c, h, w), DType::F32, &Device::Cpu)?)?;
    }
    Ok(())
}

fn latents_seeds(_: &Path) -> Result<Vec<Vec<u8>>> {
    let dir = tempfile::tempdir()?;
    let mut seeds = Vec::new();
    with_model(|m| {
        let [c, h, w] = ZOO.image_shape(&m.config)?;
        for n in [1, 3] {
            let x = Rng::new(n as u64).rand_uniform((n, c, h, w), 0.0, 1.0, DType::F32, &Device::Cpu)?;
            let z = m.model.encode(&x)?;
            let names: Vec<String> = (0..n).map(|i| format!("img{i}.png")).collect();
            let path = dir.path().join(format!("latents{n}.safetensors"));
            aezoo_train::infer::save_tensor(
                "latents",
                &z,
                &[
                    ("entry", m.config.entry.clone()),
                    ("files", serde_json::to_string(&names)?),
                ],
                &path,
            )?;
            seeds.push(read(&path)?);
        }
        Ok(())
    })?;
    Ok(seeds)
}

fn claims_images(input: &[u8]) -> bool {
    let raw = if input.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        let mut d = flate2::read::GzDecoder::new(input);
        let _ = std::io::Read::read_to_end(&mut std::io::Read::take(&mut d, 16), &mut out);
        out
    } else {
        input.to_vec()
    };
    raw.get(3) == Some(&3)
}

fn gzip(bytes: &[u8]) -> Result<Vec<u8>> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes)?;
    Ok(e.finish()?)
}

fn idx_seeds(_: &Path) -> Result<Vec<Vec<u8>>> {
    let splits = aezoo_data::bundled::load(aezoo_data::DatasetId::FashionMnist)?;
    let n = 24;
    let set = splits.test.take(n);
    let images = idx::IdxImages {
        count: n,
        rows: 28,
        cols: 28,
        pixels: (0..n).flat_map(|i| set.image(i).to_vec()).collect(),
    };
    let raw_images = idx::encode_images(&images);
    let raw_labels = idx::encode_labels(&set.labels()[..n]);
    Ok(vec![gzip(&raw_images)?, gzip(&raw_labels)?, raw_images, raw_labels])
}

/// A file name whose extension matches the input's magic bytes, as a user's would.
fn image_name(input: &[u8]) -> &'static str {
    if input.starts_with(&[0xff, 0xd8]) {
        "image.jpg"
    } else if input.starts_with(b"GIF") {
        "image.gif"
    } else {
        "image.png"
    }
}

fn image_seeds() -> Result<Vec<Vec<u8>>> {
    use image::{DynamicImage, ImageFormat, RgbImage};
    let mut rng = Rng::new(7);
    let picture = |w: u32, h: u32, rng: &mut Rng| {
        let mut img = RgbImage::new(w, h);
        for (x, y, p) in img.enumerate_pixels_mut() {
            let noise = rng.below(32) as u8;
            *p = image::Rgb([(x * 9) as u8 ^ noise, (y * 7) as u8, ((x + y) * 5) as u8]);
        }
        DynamicImage::ImageRgb8(img)
    };
    let mut seeds = Vec::new();
    for (w, h, fmt, gray) in [
        (28, 28, ImageFormat::Png, true),
        (37, 21, ImageFormat::Png, false),
        (33, 40, ImageFormat::Jpeg, false),
        (28, 28, ImageFormat::Jpeg, true),
        (19, 23, ImageFormat::Gif, false),
    ] {
        let mut img = picture(w, h, &mut rng);
        if gray {
            img = DynamicImage::ImageLuma8(img.to_luma8());
        }
        if fmt == ImageFormat::Gif {
            img = DynamicImage::ImageRgba8(img.to_rgba8());
        }
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, fmt)?;
        seeds.push(out.into_inner());
    }
    Ok(seeds)
}

fn aez_seeds(scratch: &Path) -> Result<Vec<Vec<u8>>> {
    let mut seeds = Vec::new();
    for (i, img) in image_seeds()?.into_iter().enumerate() {
        let path = write(scratch, &format!("seed{i}.{}", &image_name(&img)[6..]), &img)?;
        with_codec(|lc| {
            seeds.push(crate::codec::compress_file(lc, &path, &Device::Cpu)?.0);
            Ok(())
        })?;
    }
    Ok(seeds)
}

/// A `.npy` of uint8 of `shape`, as numpy writes it (format 1.0).
fn npy(shape: &[usize]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let mut header = format!(
        "{{'descr': '|u1', 'fortran_order': False, 'shape': ({}), }}",
        dims.join(", ") + if shape.len() == 1 { "," } else { "" }
    );
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    let n: usize = shape.iter().product();
    out.extend((0..n).map(|i| (i * 31 % 251) as u8));
    out
}

/// The first `edges` edges of the bundled Cora and the features of the
/// nodes they touch, renumbered: a small real graph.
fn small_graph(edges: usize) -> Result<(String, String)> {
    let g = aezoo_graph::data::bundled("cora").context("the bundled Cora graph")??;
    let mut ids = std::collections::BTreeMap::new();
    let mut lines = Vec::new();
    for &(a, b) in g.edges.iter().take(edges) {
        let next = ids.len();
        let a = *ids.entry(a).or_insert(next);
        let next = ids.len();
        let b = *ids.entry(b).or_insert(next);
        lines.push(format!("{a} {b}"));
    }
    let feats = g.features.as_ref().context("Cora has features")?;
    let mut rows = vec![String::new(); ids.len()];
    for (&old, &new) in &ids {
        let cols: Vec<String> = feats.row(old as usize).iter().map(|c| c.to_string()).collect();
        rows[new] = format!("{new} {}", cols.join(" "));
    }
    let edges_text = format!("# {} nodes\n{}\n", ids.len(), lines.join("\n"));
    let feats_text = format!("# {} nodes {} features\n{}\n", ids.len(), feats.dim, rows.join("\n"));
    Ok((edges_text, feats_text))
}

fn graph_seeds(scratch: &Path, which: &str) -> Result<Vec<Vec<u8>>> {
    let (edges, feats) = small_graph(120)?;
    // The other file of the pair stays as it is, beside every case.
    let (fuzzed, fixed) = if which == "edges" {
        (edges, feats)
    } else {
        (feats, edges)
    };
    let other = if which == "edges" { "features" } else { "edges" };
    write(scratch, &format!("fixed.{other}.txt"), fixed.as_bytes())?;
    let headerless: String = fuzzed.lines().skip(1).map(|l| format!("{l}\n")).collect();
    Ok(vec![
        fuzzed.clone().into_bytes(),
        gzip(fuzzed.as_bytes())?,
        headerless.into_bytes(),
    ])
}

fn graph_run(input: &[u8], case: &Path, which: &str) -> Result<()> {
    let other = if which == "edges" { "features" } else { "edges" };
    let fixed = case.parent().context("a case folder in the seeds' scratch")?;
    std::fs::copy(
        fixed.join(format!("fixed.{other}.txt")),
        case.join(format!("g.{other}.txt")),
    )?;
    let ext = if input.starts_with(&[0x1f, 0x8b]) {
        "txt.gz"
    } else {
        "txt"
    };
    write(case, &format!("g.{which}.{ext}"), input)?;
    let g = aezoo_graph::data::load("g", &[case.to_path_buf()])?;
    aezoo_graph::split::EdgeSplit::check(&g).map_err(|e| anyhow::anyhow!("{}: {e}", case.display()))?;
    Ok(())
}

/// The ae-mlp model and optimiser a checkpoint is restored into.
fn state_model(case_root: &Path) -> Result<(ParamStore, Adam, aezoo_train::config::EntryConfig)> {
    let cfg = ZOO.config_from_file(&case_root.join("seed-config.json"))?;
    let params = ParamStore::init(cfg.train.seed);
    ZOO.family_of(&cfg)?
        .build(&cfg.model, &cfg.entry, params.var_builder(DType::F32, &Device::Cpu))?;
    let adam = Adam::new(params.vars(), cfg.train.lr, cfg.train.optimizer.clone())?;
    Ok((params, adam, cfg))
}

/// A real checkpoint of a small ae-mlp in `scratch/seed-run`; its state is the seed.
fn state_seeds(scratch: &Path) -> Result<Vec<Vec<u8>>> {
    let cfg_text = ZOO
        .entries
        .iter()
        .find(|(n, _)| *n == default_entry(Task::FuzzTraining))
        .map(|(_, j)| j.to_string())
        .context("the built-in entry of Task::FuzzTraining")?;
    write(scratch, "seed-config.json", cfg_text.as_bytes())?;
    let (params, adam, cfg) = state_model(scratch)?;
    let state = TrainerState {
        format: checkpoint::STATE_FORMAT,
        entry: cfg.entry.clone(),
        epoch: 1,
        batch_in_epoch: 7,
        step: 12,
        rng: Rng::new(3).state(),
        optimizer: OptimizerState {
            kind: "adam".into(),
            step: 12,
            lr: cfg.train.lr,
            moments_file: "optimizer.safetensors".into(),
        },
        train_seconds: 1.5,
        loss_scale: None,
        epoch_sums: Some(checkpoint::EpochSums {
            loss: 0.25,
            images: 896,
            terms: vec![("mse".into(), 0.25)],
        }),
    };
    let dir = checkpoint::save(&scratch.join("seed-run"), &params, &adam, &cfg, &state)?;
    Ok(vec![read(&dir.join("trainer_state.json"))?])
}

fn state_run(input: &[u8], case: &Path) -> Result<()> {
    let root = case.parent().context("a case folder in the seeds' scratch")?;
    let seed = checkpoint::latest(&root.join("seed-run")).context("the seed checkpoint")?;
    let dir = case
        .join("checkpoints")
        .join(seed.file_name().context("a step folder")?);
    std::fs::create_dir_all(&dir)?;
    for f in ["model.safetensors", "optimizer.safetensors", "config.json"] {
        std::fs::hard_link(seed.join(f), dir.join(f))
            .or_else(|_| std::fs::copy(seed.join(f), dir.join(f)).map(|_| ()))?;
    }
    write(&dir, "trainer_state.json", input)?;
    let (params, mut adam, cfg) = state_model(root)?;
    // The bundled Fashion-MNIST subset's 5,000 training images.
    let batches = 5000usize.div_ceil(cfg.train.batch_size);
    checkpoint::load_restorable(case, |ck| {
        ck.restore(&params, &mut adam)?;
        ck.check_counters(batches, cfg.train.batch_size)
    })?;
    Ok(())
}
