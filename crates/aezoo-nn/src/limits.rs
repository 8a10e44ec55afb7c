//! The size budget: every size a file or a config gives — tensor shapes and
//! counts, image dimensions, node and feature counts, clip counts, header
//! and decompressed lengths — is checked against these limits before
//! anything of that size is allocated, and refused with an error naming the
//! file and the field. They sit far above what the zoo uses (the largest
//! shipped model has 84 M parameters, the largest photograph 25 MP) and
//! below what a 24 GiB machine can hold.

/// Values in one parameter tensor (1 GiB of f32).
pub const MAX_TENSOR_ELEMS: usize = 1 << 28;
/// Parameters of one model (4 GiB of f32; Adam's moments triple it).
pub const MAX_MODEL_PARAMS: usize = 1 << 30;
/// Any single size in a model config (a width, a latent size, a side).
pub const MAX_CONFIG_SIZE: u64 = 1 << 24;
/// Pixels of one image read from a file or coded into `.aez`.
pub const MAX_IMAGE_PIXELS: usize = 1 << 25;
/// Height or width of one image.
pub const MAX_IMAGE_SIDE: usize = 1 << 16;
/// Channels of one image (clips: frames).
pub const MAX_CHANNELS: usize = 1 << 12;
/// Bytes of one data set held in memory (u8 pixels).
pub const MAX_DATASET_BYTES: u64 = 1 << 33;
/// Bytes a gzip file may inflate to.
pub const MAX_DECOMPRESSED_BYTES: u64 = 1 << 32;
/// Nodes of one graph.
pub const MAX_GRAPH_NODES: usize = 1 << 22;
/// Values of a graph's dense feature matrix (nodes × features).
pub const MAX_GRAPH_FEATURE_VALUES: usize = 1 << 30;
/// Bytes of a JSON or text file read whole (configs, logs, states).
pub const MAX_TEXT_BYTES: u64 = 1 << 28;

/// The product of `dims`, or `None` when it overflows.
pub fn product(dims: &[usize]) -> Option<usize> {
    dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d))
}

/// `Ok` when `n` (what `what` counts) is within `limit`, else a message
/// naming both (the caller adds the file and field).
pub fn within(what: &str, n: u64, limit: u64) -> Result<(), String> {
    if n <= limit {
        Ok(())
    } else {
        Err(format!("{what} {n} is above the limit of {limit} (aezoo_nn::limits)"))
    }
}

/// A shape's element count within `limit`, or a message naming the shape.
pub fn elems_within(what: &str, dims: &[usize], limit: usize) -> Result<usize, String> {
    match product(dims) {
        Some(n) if n <= limit => Ok(n),
        Some(n) => Err(format!(
            "{what} of shape {dims:?} has {n} values, above the limit of {limit} (aezoo_nn::limits)"
        )),
        None => Err(format!(
            "{what} of shape {dims:?} has more values than a usize can count"
        )),
    }
}

/// Reads a whole text file of at most [`MAX_TEXT_BYTES`], checking its size
/// before reading.
pub fn read_text(path: &std::path::Path) -> std::io::Result<String> {
    let len = std::fs::metadata(path)?.len();
    if len > MAX_TEXT_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{len} bytes, above the limit of {MAX_TEXT_BYTES} for a text file (aezoo_nn::limits)"),
        ));
    }
    std::fs::read_to_string(path)
}

/// An error's text on one line: a backtrace some libraries append (candle
/// with `RUST_BACKTRACE` set) dropped, other line breaks folded into spaces.
pub fn one_line(text: &str) -> String {
    let mut parts = Vec::new();
    for line in text.lines() {
        let t = line.trim();
        let frame = t
            .split_once(':')
            .is_some_and(|(n, _)| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
            || t.starts_with("at ")
            || t == "stack backtrace:";
        if frame {
            break;
        }
        if !t.is_empty() {
            parts.push(t.to_string());
        }
    }
    parts.join(" ")
}
