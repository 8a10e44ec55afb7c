//! TensorBoard event files, written directly: TFRecord framing (length,
//! masked CRC-32C of the length, data, masked CRC-32C of the data) around
//! `tensorflow.Event` protobufs with scalar and PNG-image summaries. No
//! TensorFlow or protobuf dependency; `aezoo-zoo/tests/zoo.rs` reads the files back
//! with a decoder of its own and, where it is installed, with the
//! `tensorboard` Python package.
//!
//! Messages used (field numbers from tensorflow/core/util/event.proto and
//! summary.proto): `Event { double wall_time = 1; int64 step = 2;
//! string file_version = 3; Summary summary = 5; }`,
//! `Summary { repeated Value value = 1; }`,
//! `Value { string tag = 1; float simple_value = 2; Image image = 4; }`,
//! `Image { int32 height = 1; int32 width = 2; int32 colorspace = 3;
//! bytes encoded_image_string = 4; }`.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{io_err, Result};

/// CRC-32C (Castagnoli), as TFRecord uses.
pub fn crc32c(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, e) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 { 0x82F6_3B78 ^ (c >> 1) } else { c >> 1 };
            }
            *e = c;
        }
        t
    });
    let mut crc = !0u32;
    for &b in data {
        crc = table[((crc ^ b as u32) & 0xff) as usize] ^ (crc >> 8);
    }
    !crc
}

/// TFRecord's masked CRC.
pub fn masked_crc(data: &[u8]) -> u32 {
    let c = crc32c(data);
    (c.rotate_right(15)).wrapping_add(0xa282_ead8)
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn key(out: &mut Vec<u8>, field: u32, wire: u32) {
    varint(out, ((field << 3) | wire) as u64);
}

fn bytes_field(out: &mut Vec<u8>, field: u32, data: &[u8]) {
    key(out, field, 2);
    varint(out, data.len() as u64);
    out.extend_from_slice(data);
}

fn event(wall_time: f64, step: i64, body: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut e = Vec::new();
    key(&mut e, 1, 1);
    e.extend_from_slice(&wall_time.to_le_bytes());
    key(&mut e, 2, 0);
    varint(&mut e, step as u64);
    body(&mut e);
    e
}

/// One summary value.
pub enum Summary<'a> {
    Scalar {
        tag: &'a str,
        value: f32,
    },
    /// A PNG image.
    Image {
        tag: &'a str,
        png: &'a [u8],
        height: u32,
        width: u32,
        channels: u32,
    },
}

fn value(s: &Summary) -> Vec<u8> {
    let mut v = Vec::new();
    match s {
        Summary::Scalar { tag, value } => {
            bytes_field(&mut v, 1, tag.as_bytes());
            key(&mut v, 2, 5);
            v.extend_from_slice(&value.to_le_bytes());
        }
        Summary::Image {
            tag,
            png,
            height,
            width,
            channels,
        } => {
            bytes_field(&mut v, 1, tag.as_bytes());
            let mut img = Vec::new();
            key(&mut img, 1, 0);
            varint(&mut img, *height as u64);
            key(&mut img, 2, 0);
            varint(&mut img, *width as u64);
            key(&mut img, 3, 0);
            varint(&mut img, *channels as u64);
            bytes_field(&mut img, 4, png);
            bytes_field(&mut v, 4, &img);
        }
    }
    v
}

/// An open event file.
pub struct EventWriter {
    path: PathBuf,
    file: File,
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl EventWriter {
    /// Creates `dir/events.out.tfevents.<time>.<host>` and writes the
    /// file-version record.
    pub fn create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let host = std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "aezoo".into());
        let t = now();
        let path = dir.join(format!("events.out.tfevents.{}.{host}", t as u64));
        let file = File::create(&path).map_err(io_err(&path))?;
        let mut w = Self { path, file };
        let e = event(t, 0, |e| bytes_field(e, 3, b"brain.Event:2"));
        w.record(&e)?;
        Ok(w)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn record(&mut self, data: &[u8]) -> Result<()> {
        let len = (data.len() as u64).to_le_bytes();
        let mut rec = Vec::with_capacity(data.len() + 16);
        rec.extend_from_slice(&len);
        rec.extend_from_slice(&masked_crc(&len).to_le_bytes());
        rec.extend_from_slice(data);
        rec.extend_from_slice(&masked_crc(data).to_le_bytes());
        self.file.write_all(&rec).map_err(io_err(&self.path))?;
        self.file.flush().map_err(io_err(&self.path))
    }

    /// Writes one event with these summary values at `step`.
    pub fn write(&mut self, step: u64, values: &[Summary]) -> Result<()> {
        let mut summary = Vec::new();
        for v in values {
            bytes_field(&mut summary, 1, &value(v));
        }
        let e = event(now(), step as i64, |e| bytes_field(e, 5, &summary));
        self.record(&e)
    }

    /// Scalars `(tag, value)` at `step`.
    pub fn scalars(&mut self, step: u64, values: &[(String, f64)]) -> Result<()> {
        let v: Vec<Summary> = values
            .iter()
            .map(|(tag, value)| Summary::Scalar {
                tag,
                value: *value as f32,
            })
            .collect();
        self.write(step, &v)
    }
}
