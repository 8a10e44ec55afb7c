//! aezoo-data's tests: IDX parsing and its errors, every link of the source
//! chain (explicit, $AEZOO_DATA, user cache, system, the hf-hub cache, the
//! bundled subsets), seeded batching and the noise transform.

use std::io::Write;
use std::path::{Path, PathBuf};

use aezoo_data::idx::{self, IdxImages};
use aezoo_data::source::IDX_FILES;
use aezoo_data::{bundled, DataError, DatasetId, EpochPlan, GaussianNoise, Locator, Source};
use aezoo_nn::Rng;
use candle_core::{DType, Device, Tensor};

// ---------------------------------------------------------------- helpers

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// A small valid data set: `n_train` / `n_test` images whose pixels encode
/// their index, written as IDX (gzipped or not) into `dir`.
fn write_idx_set(dir: &Path, n_train: usize, n_test: usize, gzip: bool) {
    std::fs::create_dir_all(dir).unwrap();
    for (split, n) in [("train", n_train), ("t10k", n_test)] {
        let images = IdxImages {
            count: n,
            rows: 28,
            cols: 28,
            pixels: (0..n * 784).map(|i| ((i / 784) % 251) as u8).collect(),
        };
        let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
        let (ib, lb) = (idx::encode_images(&images), idx::encode_labels(&labels));
        let (ib, lb, ext) = if gzip { (gz(&ib), gz(&lb), ".gz") } else { (ib, lb, "") };
        std::fs::write(dir.join(format!("{split}-images-idx3-ubyte{ext}")), ib).unwrap();
        std::fs::write(dir.join(format!("{split}-labels-idx1-ubyte{ext}")), lb).unwrap();
    }
}

/// A locator that sees nothing of this machine: only what a test gives it.
fn isolated() -> Locator {
    Locator::bundled_only()
}

fn err_of<T: std::fmt::Debug>(r: Result<T, DataError>) -> String {
    r.expect_err("expected an error").to_string()
}

// ---------------------------------------------------------------- IDX

#[test]
fn idx_round_trip_raw_and_gz() {
    let d = tmp();
    write_idx_set(d.path(), 7, 3, false);
    let im = idx::read_images(&d.path().join("train-images-idx3-ubyte")).unwrap();
    assert_eq!((im.count, im.rows, im.cols), (7, 28, 28));
    assert_eq!(im.pixels[6 * 784], 6);
    let e = tmp();
    write_idx_set(e.path(), 7, 3, true);
    let im2 = idx::read_images(&e.path().join("train-images-idx3-ubyte.gz")).unwrap();
    assert_eq!(im, im2);
    assert_eq!(
        idx::read_labels(&e.path().join("t10k-labels-idx1-ubyte.gz")).unwrap(),
        vec![0, 1, 2]
    );
}

#[test]
fn truncated_idx_names_file_and_sizes() {
    let d = tmp();
    write_idx_set(d.path(), 5, 2, false);
    let p = d.path().join("train-images-idx3-ubyte");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..1000]).unwrap();
    let e = err_of(idx::read_images(&p));
    assert!(e.contains("train-images-idx3-ubyte"), "{e}");
    assert!(
        e.contains("truncated") && e.contains(&format!("expected {}", 16 + 5 * 784)) && e.contains("found 1000"),
        "{e}"
    );
    // Header cut short.
    std::fs::write(&p, &bytes[..10]).unwrap();
    let e = err_of(idx::read_images(&p));
    assert!(e.contains("IDX header") && e.contains("found 10"), "{e}");
}

#[test]
fn wrong_magic_extra_bytes_and_corrupt_gzip() {
    let d = tmp();
    write_idx_set(d.path(), 3, 2, false);
    // Labels where images are expected.
    let e = err_of(idx::read_images(&d.path().join("train-labels-idx1-ubyte")));
    assert!(
        e.contains("expected magic 0x00000803") && e.contains("found 0x00000801"),
        "{e}"
    );
    // Trailing garbage.
    let p = d.path().join("t10k-labels-idx1-ubyte");
    let mut b = std::fs::read(&p).unwrap();
    b.extend_from_slice(b"junk");
    std::fs::write(&p, b).unwrap();
    let e = err_of(idx::read_labels(&p));
    assert!(e.contains("4 bytes after the data"), "{e}");
    // A gzip stream cut in the middle.
    let g = tmp();
    write_idx_set(g.path(), 30, 2, true);
    let p = g.path().join("train-images-idx3-ubyte.gz");
    let b = std::fs::read(&p).unwrap();
    std::fs::write(&p, &b[..b.len() / 2]).unwrap();
    let e = err_of(idx::read_images(&p));
    assert!(e.contains("train-images-idx3-ubyte.gz") && e.contains("gzip"), "{e}");
    // A missing file.
    let e = err_of(idx::read_images(&g.path().join("nope")));
    assert!(e.contains("nope") && e.contains("cannot read"), "{e}");
}

#[test]
fn test_images_of_another_shape_are_refused_naming_the_file() {
    // 14 x 56 test images hold as many bytes as 28 x 28 ones.
    let d = tmp();
    write_idx_set(d.path(), 4, 3, false);
    let wide = IdxImages {
        count: 3,
        rows: 14,
        cols: 56,
        pixels: vec![7; 3 * 784],
    };
    std::fs::write(d.path().join("t10k-images-idx3-ubyte"), idx::encode_images(&wide)).unwrap();
    let loc = Locator {
        explicit: Some(d.path().to_path_buf()),
        ..isolated()
    };
    let e = err_of(loc.load(DatasetId::FashionMnist));
    assert!(
        e.contains("t10k-images-idx3-ubyte") && e.contains("[1, 14, 56]") && e.contains("[1, 28, 28]"),
        "{e}"
    );
}

#[test]
fn a_gzip_that_inflates_past_the_budget_is_refused() {
    // A megabyte of zeros, about a kilobyte gzipped: past a 64 KiB cap it
    // is refused (the reader stops there), within it inflated whole.
    let bomb = gz(&vec![0u8; 1 << 20]);
    let e = err_of(idx::decode_maybe_gz_within(bomb.clone(), Path::new("bomb.gz"), 1 << 16));
    assert!(
        e.contains("bomb.gz") && e.contains("inflates to more than 65536 bytes"),
        "{e}"
    );
    assert_eq!(
        idx::decode_maybe_gz_within(bomb, Path::new("bomb.gz"), 1 << 20)
            .unwrap()
            .len(),
        1 << 20
    );
}

#[test]
fn an_image_header_beyond_the_budget_is_refused_before_decoding() {
    // A PNG whose header says 20000 x 20000, with no pixel data behind it.
    let d = tmp();
    let p = d.path().join("huge.png");
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend(20000u32.to_be_bytes());
    ihdr.extend(20000u32.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    png.extend(13u32.to_be_bytes());
    png.extend(&ihdr);
    png.extend(crc32(&ihdr).to_be_bytes());
    for (kind, body) in [(&b"IDAT"[..], &[0x78u8, 0x9c][..]), (b"IEND", b"")] {
        let chunk = [kind, body].concat();
        png.extend((body.len() as u32).to_be_bytes());
        png.extend(&chunk);
        png.extend(crc32(&chunk).to_be_bytes());
    }
    std::fs::write(&p, &png).unwrap();
    let e = err_of(aezoo_data::image_file::open_image(&p));
    assert!(
        e.contains("huge.png") && e.contains("20000x20000") && e.contains("limits"),
        "{e}"
    );
    // A broken JPEG's decoder error is one line naming the file.
    let j = d.path().join("broken.jpg");
    std::fs::write(&j, [0xff, 0xd8, 0xff, 0xdb, 0x00, 0x43, 0x00, 1, 2, 3]).unwrap();
    let e = err_of(aezoo_data::image_file::open_image(&j));
    assert!(e.contains("broken.jpg") && !e.contains('\n'), "{e}");
}

/// CRC-32 (PNG's), bit by bit.
fn crc32(bytes: &[u8]) -> u32 {
    let mut c = 0xffff_ffffu32;
    for &b in bytes {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 == 1 { 0xedb8_8320 ^ (c >> 1) } else { c >> 1 };
        }
    }
    !c
}

#[test]
fn label_count_must_match_images() {
    let d = tmp();
    write_idx_set(d.path(), 4, 2, false);
    std::fs::write(d.path().join("train-labels-idx1-ubyte"), idx::encode_labels(&[1, 2, 3])).unwrap();
    let mut loc = isolated();
    loc.explicit = Some(d.path().to_path_buf());
    let e = err_of(loc.load(DatasetId::Mnist));
    assert!(
        e.contains("train-labels-idx1-ubyte") && e.contains("3 labels") && e.contains("4 images"),
        "{e}"
    );
}

// ---------------------------------------------------------------- the chain

#[test]
fn explicit_dir_direct_or_named_subfolder() {
    let d = tmp();
    write_idx_set(d.path(), 6, 4, true);
    let mut loc = isolated();
    loc.explicit = Some(d.path().to_path_buf());
    let s = loc.load(DatasetId::FashionMnist).unwrap();
    assert_eq!((s.train.len(), s.test.len()), (6, 4));
    assert_eq!(s.source, Source::Explicit(d.path().to_path_buf()));
    // DIR/<name>/ works as well.
    let e = tmp();
    write_idx_set(&e.path().join("mnist"), 5, 3, false);
    loc.explicit = Some(e.path().to_path_buf());
    let s = loc.load(DatasetId::Mnist).unwrap();
    assert_eq!(s.source, Source::Explicit(e.path().join("mnist")));
}

#[test]
fn explicit_dir_without_files_is_an_error_not_a_fallback() {
    let d = tmp();
    std::fs::write(d.path().join("train-images-idx3-ubyte"), b"x").unwrap();
    let mut loc = isolated();
    loc.explicit = Some(d.path().to_path_buf());
    let e = err_of(loc.load(DatasetId::FashionMnist));
    assert!(e.contains("fashion-mnist: not found"), "{e}");
    assert!(
        e.contains("train-labels-idx1-ubyte[.gz]") && !e.contains("missing train-images"),
        "{e}"
    );
}

#[test]
fn explicit_dir_with_a_broken_file_names_it() {
    let d = tmp();
    write_idx_set(d.path(), 6, 4, false);
    let p = d.path().join("t10k-images-idx3-ubyte");
    let b = std::fs::read(&p).unwrap();
    std::fs::write(&p, &b[..b.len() - 1]).unwrap();
    let mut loc = isolated();
    loc.explicit = Some(d.path().to_path_buf());
    let e = err_of(loc.load(DatasetId::FashionMnist));
    assert!(e.contains("t10k-images-idx3-ubyte") && e.contains("truncated"), "{e}");
}

#[test]
fn chain_order_env_then_user_cache_then_system_then_bundled() {
    let (env, cache, sys) = (tmp(), tmp(), tmp());
    write_idx_set(&env.path().join("fashion-mnist"), 3, 2, false);
    write_idx_set(&cache.path().join("fashion-mnist"), 4, 2, false);
    write_idx_set(&sys.path().join("fashion-mnist"), 5, 2, true);
    let mut loc = isolated();
    loc.env_dir = Some(env.path().to_path_buf());
    loc.user_cache = Some(cache.path().to_path_buf());
    loc.system_roots = vec![sys.path().to_path_buf()];
    let id = DatasetId::FashionMnist;
    assert!(matches!(loc.load(id).unwrap().source, Source::Env(_)));
    loc.env_dir = Some(PathBuf::from("/nonexistent/aezoo"));
    assert!(matches!(loc.load(id).unwrap().source, Source::UserCache(_)));
    loc.user_cache = None;
    let s = loc.load(id).unwrap();
    assert_eq!(s.source, Source::System(sys.path().join("fashion-mnist")));
    assert_eq!(s.train.len(), 5);
    loc.system_roots.clear();
    let s = loc.load(id).unwrap();
    assert_eq!(s.source, Source::Bundled);
    assert!(s.describe().contains("bundled"), "{}", s.describe());
}

#[test]
fn debian_fashion_mnist_is_found_where_installed() {
    // The real location, read through the default chain when the package is
    // installed (CI installs it); elsewhere the chain must fall through.
    let loc = Locator {
        system_roots: vec![PathBuf::from(aezoo_data::source::SYSTEM_ROOT)],
        ..isolated()
    };
    let s = loc.load(DatasetId::FashionMnist).unwrap();
    if Path::new("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").exists() {
        assert_eq!(
            s.source,
            Source::System(PathBuf::from("/usr/share/datasets/fashion-mnist"))
        );
        assert_eq!((s.train.len(), s.test.len()), (60_000, 10_000));
        // The bundled subset is its prefix.
        let b = bundled::load(DatasetId::FashionMnist).unwrap();
        assert_eq!(b.train.image(4999), s.train.image(4999));
        assert_eq!(b.test.labels(), &s.test.labels()[..1000]);
    } else {
        assert!(
            !aezoo_env::flag("AEZOO_REQUIRE_DATA"),
            "AEZOO_REQUIRE_DATA is set: Debian's dataset-fashion-mnist is not installed"
        );
        assert_eq!(s.source, Source::Bundled);
    }
}

/// Lays the fixture parquet files out as hf-hub caches them.
fn fake_hub_cache(root: &Path) {
    let repo = root.join("datasets--zalando-datasets--fashion_mnist");
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let refs = repo.join("refs/refs/convert");
    std::fs::create_dir_all(&refs).unwrap();
    std::fs::write(refs.join("parquet"), commit).unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fashion_mnist");
    for split in ["train", "test"] {
        let dst = repo.join("snapshots").join(commit).join("fashion_mnist").join(split);
        std::fs::create_dir_all(&dst).unwrap();
        std::fs::copy(fixtures.join(split).join("0000.parquet"), dst.join("0000.parquet")).unwrap();
    }
}

#[test]
fn hub_parquet_from_the_hf_hub_cache() {
    let cache = tmp();
    let mut loc = isolated();
    loc.hub_cache = Some(cache.path().to_path_buf());
    // Empty cache, no download allowed: falls through to the bundled subset.
    assert_eq!(loc.load(DatasetId::FashionMnist).unwrap().source, Source::Bundled);
    fake_hub_cache(cache.path());
    let s = loc.load(DatasetId::FashionMnist).unwrap();
    assert_eq!(
        s.source,
        Source::Hub {
            repo: "zalando-datasets/fashion_mnist".into(),
            downloaded: false
        }
    );
    assert_eq!((s.train.len(), s.test.len()), (12, 6));
    let b = bundled::load(DatasetId::FashionMnist).unwrap();
    for i in 0..12 {
        assert_eq!(s.train.image(i), b.train.image(i), "train image {i}");
    }
    assert_eq!(s.test.labels(), &b.test.labels()[..6]);
    // MNIST is not in that cache.
    assert_eq!(loc.load(DatasetId::Mnist).unwrap().source, Source::Bundled);
}

#[test]
fn corrupt_hub_parquet_is_an_error() {
    let cache = tmp();
    fake_hub_cache(cache.path());
    let snap = cache
        .path()
        .join("datasets--zalando-datasets--fashion_mnist/snapshots/0123456789abcdef0123456789abcdef01234567/fashion_mnist/test/0000.parquet");
    let b = std::fs::read(&snap).unwrap();
    std::fs::write(&snap, &b[..b.len() / 3]).unwrap();
    let mut loc = isolated();
    loc.hub_cache = Some(cache.path().to_path_buf());
    let e = err_of(loc.load(DatasetId::FashionMnist));
    assert!(e.contains("0000.parquet") && e.contains("parquet"), "{e}");
}

#[test]
fn bundled_subsets_are_what_the_docs_say() {
    let m = bundled::load(DatasetId::Mnist).unwrap();
    assert_eq!((m.train.len(), m.test.len()), (8495, 1505));
    assert_eq!(m.train.image_shape(), [1, 28, 28]);
    // Interleaved by class: the first ten labels are 0..9.
    assert_eq!(&m.train.labels()[..10], &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    assert_eq!(&m.test.labels()[..10], &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    let f = bundled::load(DatasetId::FashionMnist).unwrap();
    assert_eq!((f.train.len(), f.test.len()), (5000, 1000));
    // Fashion-MNIST's first training label is 9 (ankle boot), its first test label 9.
    assert_eq!(f.train.labels()[0], 9);
    assert_eq!(f.test.labels()[0], 9);
}

#[test]
fn unknown_dataset_name_lists_known_ones() {
    let e = err_of(DatasetId::parse("cifar"));
    assert!(
        e.contains("cifar") && e.contains("fashion-mnist") && e.contains("mnist"),
        "{e}"
    );
    assert_eq!(IDX_FILES.len(), 4);
}

// ---------------------------------------------------------------- batching

#[test]
fn epoch_plans_are_seeded_permutations() {
    let a = EpochPlan::new(1000, 128, 7, 0, true);
    let b = EpochPlan::new(1000, 128, 7, 0, true);
    let c = EpochPlan::new(1000, 128, 7, 1, true);
    assert_eq!(a.order(), b.order());
    assert_ne!(a.order(), c.order());
    let mut sorted = a.order().to_vec();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..1000).collect::<Vec<_>>());
    assert_eq!(a.num_batches(), 8);
    assert_eq!(a.batch(7).len(), 1000 - 7 * 128);
    let all: Vec<usize> = (0..a.num_batches()).flat_map(|i| a.batch(i).to_vec()).collect();
    assert_eq!(all, a.order());
    let plain = EpochPlan::new(10, 4, 7, 0, false);
    assert_eq!(plain.batch(1), &[4, 5, 6, 7]);
}

#[test]
fn batches_are_nchw_in_unit_range() {
    let f = bundled::load(DatasetId::FashionMnist).unwrap();
    let t = f.test.batch(&[0, 3], &Device::Cpu).unwrap();
    assert_eq!(t.dims(), &[2, 1, 28, 28]);
    let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
    assert!(v.iter().all(|x| (0.0..=1.0).contains(x)));
    assert_eq!(v[784 + 400], f.test.image(3)[400] as f32 / 255.0);
    assert!(f.test.batch(&[1000], &Device::Cpu).is_err());
}

#[test]
fn gaussian_noise_is_seeded_and_clipped() {
    let x = Tensor::full(0.5f32, (2, 1, 4, 4), &Device::Cpu).unwrap();
    let n = GaussianNoise { std: 0.5, clip: true };
    let a = n.apply(&x, &mut Rng::new(1)).unwrap();
    let b = n.apply(&x, &mut Rng::new(1)).unwrap();
    let va: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
    let vb: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(va, vb);
    assert!(va.iter().all(|v| (0.0..=1.0).contains(v)));
    assert!(va.iter().any(|&v| v != 0.5));
    let loose = GaussianNoise { std: 3.0, clip: false }
        .apply(&x, &mut Rng::new(2))
        .unwrap();
    let max = loose
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(max > 1.0);
}

// ---------------------------------------------------------------- image folders

mod folders {
    use aezoo_data::folder::{fit_image, image_files, load_folder, Fit, FolderConfig, OnError};
    use std::path::Path;

    /// A `w × h` RGB picture whose pixels encode their position.
    fn write_png(path: &Path, w: u32, h: u32, tint: u8) {
        let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 7) as u8, (y * 5) as u8, tint]));
        img.save(path).unwrap();
    }

    fn folder(n: usize) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        for i in 0..n {
            let sub = if i % 2 == 0 { "" } else { "sub/" };
            write_png(
                &d.path().join(format!("{sub}img{i:02}.png")),
                40 + i as u32,
                20,
                i as u8,
            );
        }
        std::fs::write(d.path().join("notes.txt"), "not an image").unwrap();
        d
    }

    #[test]
    fn a_folder_is_split_by_seed_and_fitted_to_the_model() {
        let d = folder(10);
        let files = image_files(d.path()).unwrap();
        assert_eq!(files.len(), 10, "PNGs in sub-folders, not the .txt");
        let cfg = FolderConfig {
            val_fraction: 0.2,
            ..Default::default()
        };
        let set = load_folder(d.path(), [3, 16, 16], &cfg, 0).unwrap();
        assert_eq!((set.splits.train.len(), set.splits.test.len()), (8, 2));
        assert_eq!(set.splits.train.image_shape(), [3, 16, 16]);
        let mut all: Vec<_> = set.train_files.iter().chain(&set.val_files).cloned().collect();
        all.sort();
        assert_eq!(all, files);
        assert_eq!(
            load_folder(d.path(), [3, 16, 16], &cfg, 0).unwrap().val_files,
            set.val_files
        );
        assert_ne!(
            load_folder(d.path(), [3, 16, 16], &cfg, 1).unwrap().val_files,
            set.val_files
        );
        // Grey models read the same files as luma.
        let grey = load_folder(d.path(), [1, 16, 16], &cfg, 0).unwrap();
        assert_eq!(grey.splits.train.image_shape(), [1, 16, 16]);
    }

    #[test]
    fn random_crops_are_seeded_windows_of_the_larger_picture() {
        let d = folder(6);
        let cfg = FolderConfig {
            fit: Fit::RandomCrop,
            crop_from: Some(20),
            val_fraction: 0.2,
            ..Default::default()
        };
        let set = load_folder(d.path(), [3, 8, 8], &cfg, 0).unwrap();
        let train = &set.splits.train;
        assert!(
            train.has_crops() && !set.splits.test.has_crops(),
            "validation stays fixed"
        );
        let dev = candle_core::Device::Cpu;
        let crop = |seed| {
            train
                .random_crops(&[0, 1, 2], &mut aezoo_nn::Rng::new(seed), &dev)
                .unwrap()
        };
        let a = crop(1);
        assert_eq!(a.dims(), &[3, 3, 8, 8]);
        let same = (a.clone() - crop(1))
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let other = (a - crop(2))
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(same, 0.0, "same generator state, same windows");
        assert!(other > 0.0, "another state, other windows");
        // A crop source smaller than the model's input is refused.
        let bad = FolderConfig {
            crop_from: Some(4),
            ..cfg.clone()
        };
        let e = load_folder(d.path(), [3, 8, 8], &bad, 0).unwrap_err().to_string();
        assert!(e.contains("crop_from: 4"), "{e}");
        // Several crops per picture per epoch: index i cuts picture i mod n.
        let many = FolderConfig {
            crops_per_picture: Some(3),
            ..cfg.clone()
        };
        let set3 = load_folder(d.path(), [3, 8, 8], &many, 0).unwrap();
        let n = set3.splits.train.len();
        assert_eq!((train.epoch_len(), set3.splits.train.epoch_len()), (n, 3 * n));
        let last = set3
            .splits
            .train
            .random_crops(&[3 * n - 1], &mut aezoo_nn::Rng::new(1), &dev)
            .unwrap();
        assert_eq!(last.dims(), &[1, 3, 8, 8]);
        assert_eq!(
            set3.splits.test.epoch_len(),
            set3.splits.test.len(),
            "validation: one each"
        );
        for (fit, k) in [(Fit::CenterCrop, 2), (Fit::RandomCrop, 0)] {
            let bad = FolderConfig {
                fit,
                crops_per_picture: Some(k),
                ..cfg.clone()
            };
            let e = load_folder(d.path(), [3, 8, 8], &bad, 0).unwrap_err().to_string();
            assert!(e.contains("crops_per_picture"), "{e}");
        }
    }

    #[test]
    fn centre_crop_keeps_the_aspect_and_stretch_does_not() {
        let img = image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(40, 20, |x, _| {
            image::Rgb([if (10..30).contains(&x) { 0 } else { 255 }, 0, 0])
        }));
        // The centre 20×20 of a 40×20 picture is the black middle band.
        let c = fit_image(&img, 10, 10, Fit::CenterCrop).to_rgb8();
        assert_eq!((c.width(), c.height()), (10, 10));
        // (the outermost columns may blend the band's edge through the resampling filter)
        assert!(
            (1..9).all(|x| (0..10).all(|y| c.get_pixel(x, y)[0] < 30)),
            "centre crop sees only the black band"
        );
        let s = fit_image(&img, 10, 10, Fit::Stretch).to_rgb8();
        assert!(s.get_pixel(0, 5)[0] > 200, "stretch keeps the red edges");
    }

    #[test]
    fn unreadable_files_are_skipped_or_fail_as_configured() {
        let d = folder(6);
        std::fs::write(d.path().join("broken.jpg"), b"\xff\xd8 not really a jpeg").unwrap();
        let cfg = FolderConfig {
            val_fraction: 0.2,
            ..Default::default()
        };
        let set = load_folder(d.path(), [3, 8, 8], &cfg, 0).unwrap();
        assert_eq!(set.skipped.len(), 1);
        assert_eq!(set.splits.train.len() + set.splits.test.len(), 6);
        let fail = FolderConfig {
            on_error: OnError::Fail,
            ..cfg.clone()
        };
        let e = load_folder(d.path(), [3, 8, 8], &fail, 0).unwrap_err().to_string();
        assert!(e.contains("broken.jpg") && e.contains("cannot decode"), "{e}");
        let e = load_folder(&d.path().join("nope"), [3, 8, 8], &cfg, 0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope"), "{e}");
        let e = load_folder(d.path(), [2, 8, 8], &cfg, 0).unwrap_err().to_string();
        assert!(e.contains("2-channel"), "{e}");
        let empty = tempfile::tempdir().unwrap();
        let e = load_folder(empty.path(), [3, 8, 8], &cfg, 0).unwrap_err().to_string();
        assert!(e.contains("0 readable PNG/JPEG images"), "{e}");
    }
}

// ---------------------------------------------------------------- Moving MNIST

mod moving_mnist {
    use super::*;
    use aezoo_data::moving_mnist::{generate, load, load_npy, parse_npy, MovingMnistConfig, NPY_FILE};

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
    }

    fn cfg(train: usize, test: usize) -> MovingMnistConfig {
        MovingMnistConfig {
            train_clips: train,
            test_clips: test,
            ..Default::default()
        }
    }

    fn digits() -> aezoo_data::ImageSet {
        bundled::load(DatasetId::Mnist).unwrap().test.take(50)
    }

    #[test]
    fn generated_clips_are_seeded_bouncing_digits() {
        let c = cfg(6, 0);
        let a = generate(&digits(), 6, &c, &mut Rng::new(3)).unwrap();
        let b = generate(&digits(), 6, &c, &mut Rng::new(3)).unwrap();
        let other = generate(&digits(), 6, &c, &mut Rng::new(4)).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, other);
        assert_eq!(a.image_shape(), [20, 64, 64]);
        let plane = 64 * 64;
        for i in 0..a.len() {
            let clip = a.image(i);
            // Two digits in every frame: at least one full digit's ink.
            for f in 0..20 {
                let ink = clip[f * plane..(f + 1) * plane].iter().filter(|&&p| p > 127).count();
                assert!(ink >= 40, "clip {i} frame {f}: {ink} bright pixels");
            }
            // They move: the first and last frames differ.
            assert_ne!(&clip[..plane], &clip[19 * plane..]);
        }
        // Consecutive frames move by at most step_length · (64 − 28) ≈ 3.6 px
        // per axis: the ink's centre of mass shifts little.
        let com = |f: &[u8]| {
            let (mut s, mut x) = (0f64, 0f64);
            for (p, &v) in f.iter().enumerate() {
                s += v as f64;
                x += v as f64 * (p % 64) as f64;
            }
            x / s
        };
        let clip = a.image(0);
        for f in 1..20 {
            let d = (com(&clip[f * plane..(f + 1) * plane]) - com(&clip[(f - 1) * plane..f * plane])).abs();
            assert!(d <= 4.0, "frame {f}: centre moved {d} px");
        }
    }

    #[test]
    fn test_clips_do_not_depend_on_the_number_of_training_clips() {
        let loc = Locator::bundled_only();
        let a = load(&loc, &cfg(3, 4), 0).unwrap();
        let b = load(&loc, &cfg(7, 4), 0).unwrap();
        assert_eq!(a.test, b.test);
        assert_eq!(a.train.image(2), b.train.image(2));
        assert_eq!((a.train.len(), b.train.len(), a.test.len()), (3, 7, 4));
        assert!(a.source.is_bundled());
    }

    #[test]
    fn npy_in_the_published_layout_loads_clip_major() {
        // python3 scripts/pins/npy_fixture.py: arange(120) as (frames 3, clips 2, 4, 5)
        let set = load_npy(&fixture("moving_tiny.npy")).unwrap();
        assert_eq!((set.len(), set.image_shape()), (2, [3, 4, 5]));
        for c in 0..2 {
            for f in 0..3 {
                for p in 0..20 {
                    assert_eq!(set.image(c)[f * 20 + p] as usize, ((f * 2 + c) * 20 + p) % 256);
                }
            }
        }
        // Through the chain: --data FILE or a folder holding mnist_test_seq.npy;
        // the last test_clips clips are held out.
        let d = tmp();
        std::fs::copy(fixture("moving_tiny.npy"), d.path().join(NPY_FILE)).unwrap();
        let loc = Locator {
            explicit: Some(d.path().to_path_buf()),
            ..Default::default()
        };
        let s = load(&loc, &cfg(0, 1), 0).unwrap();
        assert_eq!((s.train.len(), s.test.len()), (1, 1));
        assert_eq!(s.test.image(0), set.image(1));
        assert!(matches!(s.source, Source::Explicit(_)));
    }

    #[test]
    fn other_npy_layouts_are_clear_errors() {
        let err = |e: DataError| e.to_string();
        let e = err(load_npy(&fixture("moving_float.npy")).unwrap_err());
        assert!(
            e.contains("moving_float.npy") && e.contains("<f4") && e.contains("uint8"),
            "{e}"
        );
        let e = err(load_npy(&fixture("moving_fortran.npy")).unwrap_err());
        assert!(e.contains("fortran_order True"), "{e}");
        let good = std::fs::read(fixture("moving_tiny.npy")).unwrap();
        let p = Path::new("clips.npy");
        let e = err(parse_npy(&good[..good.len() - 7], p).unwrap_err());
        assert!(
            e.contains("clips.npy") && e.contains("truncated") && e.contains("120"),
            "{e}"
        );
        let e = err(parse_npy(b"PK\x03\x04 not numpy", p).unwrap_err());
        assert!(e.contains("not a .npy file"), "{e}");
        let at = good.windows(12).position(|w| w == b"(3, 2, 4, 5)").unwrap();
        let mut three_d = good.clone();
        three_d[at..at + 12].copy_from_slice(b"(6, 4, 5)   ");
        let e = err(parse_npy(&three_d, p).unwrap_err());
        assert!(e.contains("expected 4 axes (frames, clips, height, width)"), "{e}");
        let e = err(parse_npy(&good[..40], p).unwrap_err());
        assert!(e.contains("truncated .npy header"), "{e}");
        // A bool array, or uint8 spelled another way: refused, not reinterpreted.
        let at = good.windows(5).position(|w| w == b"'|u1'").unwrap();
        for other in [b"'|b1'", b"'>u1'", b"'<u1'"] {
            let mut m = good.clone();
            m[at..at + 5].copy_from_slice(other);
            let e = err(parse_npy(&m, p).unwrap_err());
            assert!(e.contains("clips.npy") && e.contains("uint8 (|u1)"), "{e}");
        }
        // A newline inside the header (found by `aezoo fuzz`): refused, and
        // no message quotes it across lines.
        let mut m = good.clone();
        m[at + 2] = b'\n';
        let e = err(parse_npy(&m, p).unwrap_err());
        assert!(e.contains("control characters") && !e.contains('\n'), "{e}");
        // An explicit path without the file names it.
        let d = tmp();
        let loc = Locator {
            explicit: Some(d.path().to_path_buf()),
            ..Default::default()
        };
        let e = err(load(&loc, &cfg(1, 1), 0).unwrap_err());
        assert!(
            e.contains(NPY_FILE) && e.contains(&d.path().display().to_string()),
            "{e}"
        );
        // Every mutation of the header or a cut anywhere: an error or a set, never a panic.
        for cut in 0..good.len() {
            let _ = parse_npy(&good[..cut], p);
        }
        for i in 0..128 {
            let mut m = good.clone();
            m[i] ^= 0x5a;
            let _ = parse_npy(&m, p);
        }
    }
}
