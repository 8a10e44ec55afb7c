//! A mutation fuzzer for the `.aez` decoder: valid files of random pictures
//! (a small codec with seeded weights), then bit flips, byte overwrites,
//! truncations, insertions and header-field rewrites — with the checksum
//! recomputed for half of them, so the header checks and the entropy decoder
//! are reached. Every outcome must be `Ok` or an `AezError`; a panic is
//! caught, printed with its input, and makes the exit status 1.
//!
//!     cargo run --release -p aezoo-compress --example fuzz_aez [-- ITERATIONS [SEED]]

use std::panic::{catch_unwind, AssertUnwindSafe};

use aezoo_compress::aez::{compress, decompress, fingerprint, read, MAX_PIXELS};
use aezoo_compress::{Codec, CodecConfig, Quantization};
use aezoo_nn::{Family, ParamStore, Rng};
use candle_core::{DType, Device, Tensor};

fn main() {
    let mut args = std::env::args().skip(1);
    let iterations: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let seed: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let cfg = CodecConfig {
        image: [1, 12, 12],
        encoder: ["C2d_1_4_3_2_1", "ReLU", "C2d_4_3_3_2_1"].map(String::from).to_vec(),
        decoder: ["CT2d_3_4_3_2_1_1", "ReLU", "CT2d_4_1_3_2_1_1", "Sigm"]
            .map(String::from)
            .to_vec(),
        alpha: 0.75,
        lambda: 0.01,
        quantization: Quantization::Noise,
        // Coded in tiles twice the training size: the fully convolutional path.
        tile: Some([24, 24]),
        prior_gain: Some(10.0),
    };
    let store = ParamStore::init(seed);
    let codec = Codec::new(&cfg, store.var_builder(DType::F32, &Device::Cpu)).expect("codec");
    let synth: Vec<_> = store
        .tensors()
        .into_iter()
        .filter(|(n, _)| !n.starts_with("encoder."))
        .collect();
    let fp = fingerprint(&synth).expect("fingerprint");
    let mut rng = Rng::new(seed ^ 0xf022);
    let mut seeds = Vec::new();
    for i in 0..8 {
        let (h, w) = (1 + rng.below(40) as usize, 1 + rng.below(40) as usize);
        let img = rng
            .rand_uniform((1, 1, h, w), 0.0, 1.0, DType::F32, &Device::Cpu)
            .expect("image");
        let img = if i % 2 == 0 { (img * 0.1).expect("scale") } else { img };
        seeds.push(compress(&codec, "fuzz", fp, &img).expect("compress"));
    }
    let (mut ok, mut errors, mut panics, mut skipped) = (0usize, 0usize, 0usize, 0usize);
    for it in 0..iterations {
        let mut b = seeds[it % seeds.len()].clone();
        match rng.below(5) {
            0 => {
                for _ in 0..1 + rng.below(8) {
                    let i = rng.below(b.len() as u64) as usize;
                    b[i] ^= 1 << rng.below(8);
                }
            }
            1 => {
                let i = rng.below(b.len() as u64) as usize;
                b[i] = rng.below(256) as u8;
            }
            2 => b.truncate(rng.below(b.len() as u64) as usize),
            3 => {
                let i = rng.below(b.len() as u64 + 1) as usize;
                b.insert(i, rng.below(256) as u8);
            }
            _ => {
                // Rewrite a header field (sizes, tile, word count) with a random value.
                let at = 6 + b[5] as usize + 8 + rng.below(17) as usize;
                if at < b.len() {
                    b[at] = rng.below(256) as u8;
                }
            }
        }
        if rng.below(2) == 0 && b.len() >= 4 {
            let n = b.len() - 4;
            let crc = crc32fast::hash(&b[..n]);
            b[n..].copy_from_slice(&crc.to_le_bytes());
        }
        if let Ok((hd, _)) = read(&b) {
            if hd.height as u64 * hd.width as u64 > 64 * 64 && (hd.height as u64 * hd.width as u64) <= MAX_PIXELS {
                skipped += 1; // valid and large: slow to decode, not a finding
                continue;
            }
        }
        match catch_unwind(AssertUnwindSafe(|| decompress(codec.synthesis(), "fuzz", fp, &b))) {
            Ok(Ok(t)) => {
                let _: &Tensor = &t;
                ok += 1
            }
            Ok(Err(_)) => errors += 1,
            Err(_) => {
                panics += 1;
                eprintln!("PANIC on input {it}: {b:02x?}");
            }
        }
    }
    println!(
        "{iterations} mutated .aez files (seed {seed}): {ok} decoded, {errors} refused with an error, {skipped} skipped (valid, > 4096 pixels), {panics} panics"
    );
    if panics > 0 {
        std::process::exit(1);
    }
}
