//! The learned codec end to end: `.aez` files from the decoder half only, and the R-D sweep against JPEG and WebP.

use super::*;

#[test]
fn compress_decompress_with_the_decoder_half_only() {
    let d = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let w = d.path().join("w");
    // export-codec writes both halves beside the full model.
    let o = aezoo(
        &root,
        &[
            "export-codec",
            "codec-mnist",
            w.to_str().unwrap(),
            "--weights",
            "weights/codec-mnist",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    for f in [
        "encoder.safetensors",
        "decoder.safetensors",
        "model.safetensors",
        "config.json",
    ] {
        assert!(w.join(f).is_file(), "{f}");
    }
    // A 45 × 70 picture: not a multiple of the 28 × 28 tiles.
    let img = d.path().join("pic.png");
    let px: Vec<u8> = (0..45 * 70)
        .map(|i| {
            if (i % 70) / 7 % 3 == 0 && (i / 70) % 9 < 6 {
                230
            } else {
                10
            }
        })
        .collect();
    image::GrayImage::from_raw(70, 45, px).unwrap().save(&img).unwrap();
    let aez = d.path().join("pic.aez");
    let o = aezoo(
        d.path(),
        &[
            "compress",
            img.to_str().unwrap(),
            "-o",
            aez.to_str().unwrap(),
            "--weights",
            w.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let line = String::from_utf8_lossy(&o.stdout).into_owned();
    let size = std::fs::metadata(&aez).unwrap().len();
    assert!(
        line.contains(&format!("({size} bytes, {:.4} bpp", 8.0 * size as f64 / (45.0 * 70.0))),
        "{line}"
    );
    let printed: f64 = line
        .split("PSNR ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let first = std::fs::read(&aez).unwrap();
    // Decoder only: no encoder weights in the folder.
    std::fs::remove_file(w.join("encoder.safetensors")).unwrap();
    std::fs::remove_file(w.join("model.safetensors")).unwrap();
    let png = d.path().join("out.png");
    for _ in 0..2 {
        let o = aezoo(
            d.path(),
            &[
                "decompress",
                aez.to_str().unwrap(),
                "-o",
                png.to_str().unwrap(),
                "--weights",
                w.to_str().unwrap(),
            ],
        );
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let a = image::open(&img).unwrap().to_luma8();
    let b = image::open(&png).unwrap().to_luma8();
    assert_eq!(b.dimensions(), (70, 45));
    let mse = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(&x, &y)| ((x as f64 - y as f64) / 255.0).powi(2))
        .sum::<f64>()
        / (45.0 * 70.0);
    assert!(
        (-10.0 * mse.log10() - printed).abs() < 0.005,
        "decoded PNG PSNR {} vs printed {printed}",
        -10.0 * mse.log10()
    );
    // Compressing again makes the same bytes.
    std::fs::copy(
        root.join("weights/codec-mnist/model.safetensors"),
        w.join("model.safetensors"),
    )
    .unwrap();
    let again = d.path().join("again.aez");
    let o = aezoo(
        d.path(),
        &[
            "compress",
            img.to_str().unwrap(),
            "-o",
            again.to_str().unwrap(),
            "--weights",
            w.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(&again).unwrap(), first);
    // A damaged file: one line naming it.
    let mut bad = first.clone();
    bad[20] ^= 0x10;
    std::fs::write(&aez, &bad).unwrap();
    let o = aezoo(
        d.path(),
        &["decompress", aez.to_str().unwrap(), "--weights", w.to_str().unwrap()],
    );
    assert_one_line_error(&o, &["pic.aez", "checksum"]);
    std::fs::write(&aez, &first[..first.len() / 2]).unwrap();
    let o = aezoo(
        d.path(),
        &["decompress", aez.to_str().unwrap(), "--weights", w.to_str().unwrap()],
    );
    assert_one_line_error(&o, &["pic.aez"]);
    // A non-codec entry cannot compress.
    let o = aezoo(&root, &["compress", img.to_str().unwrap(), "--entry", "ae-conv"]);
    assert_one_line_error(&o, &["compressing needs a `codec` entry"]);
}

#[test]
fn rate_distortion_against_jpeg_and_webp() {
    let d = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let imgs = d.path().join("imgs");
    std::fs::create_dir_all(&imgs).unwrap();
    for k in 0..2u32 {
        // 170 × 180: large enough for MS-SSIM's five scales.
        let px: Vec<u8> = (0..170 * 180u32)
            .map(|i| {
                if ((i % 180) / (9 + k) + (i / 180) / 11) % 4 == 0 {
                    240
                } else {
                    5
                }
            })
            .collect();
        image::GrayImage::from_raw(180, 170, px)
            .unwrap()
            .save(imgs.join(format!("p{k}.png")))
            .unwrap();
    }
    let out = d.path().join("rd");
    let o = aezoo(
        &root,
        &[
            "rd",
            "--images",
            imgs.to_str().unwrap(),
            "--entries",
            "codec-mnist",
            "--jpeg",
            "10,50,90",
            "--webp",
            "10,50",
            "-o",
            out.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let webp = Command::new("cwebp")
        .arg("-version")
        .output()
        .is_ok_and(|o| o.status.success());
    let libjpeg = Command::new("cjpeg")
        .arg("-version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !webp {
        missing("cwebp not installed: the WebP anchor is not checked");
    }
    if !libjpeg {
        missing("cjpeg not installed: the libjpeg-turbo anchor is not checked");
    }
    let csv = std::fs::read_to_string(out.join("rd.csv")).unwrap();
    let rows: Vec<&str> = csv.lines().skip(1).collect();
    assert_eq!(
        rows.len(),
        2 * (1 + 3 + if libjpeg { 3 } else { 0 } + if webp { 2 } else { 0 }),
        "{csv}"
    );
    // bpp is the bytes written, over the pixels.
    for r in &rows {
        let f: Vec<&str> = r.split(',').collect();
        let (bytes, bpp): (f64, f64) = (f[5].parse().unwrap(), f[6].parse().unwrap());
        assert!((bpp - 8.0 * bytes / (170.0 * 180.0)).abs() < 1e-9, "{r}");
        assert!(!f[8].is_empty(), "MS-SSIM missing: {r}");
    }
    let md = std::fs::read_to_string(out.join("rd.md")).unwrap();
    assert!(
        md.contains("| aezoo:codec-mnist | jpeg |") && md.contains("anchor's bpp at this PSNR"),
        "{md}"
    );
    assert!(out.join("rd.png").is_file() && out.join("rd_msssim.png").is_file());

    // `codec-photo` (the default) is its three shipped rate points: one curve,
    // one row per point and image, one BD-rate line per anchor.
    let rgb = d.path().join("rgb");
    std::fs::create_dir_all(&rgb).unwrap();
    image::RgbImage::from_fn(180, 170, |x, y| {
        image::Rgb([
            (x + y) as u8,
            ((x * 7) ^ (y * 3)) as u8,
            (255.0 * ((x as f32) * 0.05).sin().abs()) as u8,
        ])
    })
    .save(rgb.join("c.png"))
    .unwrap();
    let out = d.path().join("rd-photo");
    let o = aezoo(
        &root,
        &[
            "rd",
            "--images",
            rgb.to_str().unwrap(),
            "--jpeg",
            "10,50",
            "--webp",
            "50",
            "-o",
            out.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let csv = std::fs::read_to_string(out.join("rd.csv")).unwrap();
    let settings: Vec<&str> = csv
        .lines()
        .filter(|l| l.starts_with("aezoo:codec-photo,"))
        .map(|l| l.split(',').nth(1).unwrap())
        .collect();
    assert_eq!(
        settings,
        ["codec-photo-q1", "codec-photo-q2", "codec-photo-q3"],
        "{csv}"
    );
    let md = std::fs::read_to_string(out.join("rd.md")).unwrap();
    assert!(md.contains("| aezoo:codec-photo | jpeg |"), "{md}");
}
