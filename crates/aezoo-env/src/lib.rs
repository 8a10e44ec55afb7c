//! Every environment variable aezoo reads, in one table ([`VARS`]), and one
//! rule for reading them: a flag is true for `1`, `true`, `yes`, `on` and
//! false for `0`, `false`, `no`, `off` or the empty string (any case); any
//! other value is reported once on stderr and the flag keeps its default.
//! Nothing else in the workspace calls `std::env::var` on these names (the
//! tidy test `every_environment_variable_is_in_the_table` checks it).

#![forbid(unsafe_code)]

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Mutex;

/// What a variable holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// On or off by [`flag`]'s rule; `default` when unset.
    Flag { default: bool },
    /// A small number ([`level`]).
    Level,
    /// A folder or file.
    Path,
    /// Set by aezoo itself for a library it links (documented here so the
    /// table is complete); a value the user sets wins.
    Foreign,
}

/// One variable of the table.
#[derive(Clone, Copy, Debug)]
pub struct Var {
    pub name: &'static str,
    pub kind: Kind,
    /// Which crate reads it.
    pub read_by: &'static str,
    /// What it does, one line.
    pub doc: &'static str,
}

/// Every variable aezoo reads or sets. Off switches of the CPU fast paths
/// compute the same function the slow way (docs/perf.md).
pub static VARS: &[Var] = &[
    Var {
        name: "AEZOO_DATA",
        kind: Kind::Path,
        read_by: "aezoo-data",
        doc: "a folder of data sets, searched after --data and before the user cache",
    },
    Var {
        name: "AEZOO_DOWNLOAD",
        kind: Kind::Flag { default: false },
        read_by: "aezoo-data",
        doc: "allow Hub downloads of missing data sets (as --download)",
    },
    Var {
        name: "AEZOO_NO_FUSED",
        kind: Kind::Flag { default: false },
        read_by: "aezoo-kernels",
        doc: "turn every fused CPU kernel off: layers run as composites of candle ops",
    },
    Var {
        name: "AEZOO_NO_SGEMM",
        kind: Kind::Flag { default: false },
        read_by: "aezoo-kernels",
        doc: "use the gemm crate instead of aezoo's f32 GEMM",
    },
    Var {
        name: "AEZOO_NO_SUBPIXEL",
        kind: Kind::Flag { default: false },
        read_by: "aezoo-kernels",
        doc: "upsample-then-conv blocks run as written instead of in sub-pixel form",
    },
    Var {
        name: "AEZOO_SIMD",
        kind: Kind::Level,
        read_by: "aezoo-kernels",
        doc: "cap the SIMD level of the kernels: 0 baseline, 1 AVX2, 2 AVX-512 (default: what the CPU has)",
    },
    Var {
        name: "AEZOO_ON_POOL",
        kind: Kind::Flag { default: true },
        read_by: "aezoo-kernels",
        doc: "run each command on a worker of the compute pool (off: on the calling thread)",
    },
    Var {
        name: "AEZOO_LINGER",
        kind: Kind::Flag { default: true },
        read_by: "aezoo-kernels",
        doc: "idle workers linger 30 ms between parallel regions (off: they sleep at once)",
    },
    Var {
        name: "AEZOO_KEEP_DENORMALS",
        kind: Kind::Flag { default: false },
        read_by: "aezoo-kernels",
        doc: "keep subnormal floats (default: flushed to zero on compute threads)",
    },
    Var {
        name: "AEZOO_REQUIRE_DATA",
        kind: Kind::Flag { default: false },
        read_by: "tests",
        doc: "tests fail instead of skipping when weights/, a full data set, data/photos, cwebp or cjpeg is missing (CI sets it)",
    },
    Var {
        name: "AEZOO_REQUIRE_TENSORBOARD",
        kind: Kind::Flag { default: false },
        read_by: "tests",
        doc: "the TensorBoard read-back test fails instead of skipping without the tensorboard package (CI sets it)",
    },
    Var {
        name: "HF_HUB_OFFLINE",
        kind: Kind::Flag { default: false },
        read_by: "aezoo-data, aezoo-train",
        doc: "hf-hub's own switch: no Hub downloads, the cache only",
    },
    Var {
        name: "XDG_CACHE_HOME",
        kind: Kind::Path,
        read_by: "aezoo-data",
        doc: "the user cache root (data sets in $XDG_CACHE_HOME/aezoo)",
    },
    Var {
        name: "HOME",
        kind: Kind::Path,
        read_by: "aezoo-data",
        doc: "the user cache root without XDG_CACHE_HOME ($HOME/.cache/aezoo)",
    },
    Var {
        name: "CANDLE_NUM_THREADS",
        kind: Kind::Foreign,
        read_by: "aezoo-cli",
        doc: "candle's element-wise pool size; the binary sets 1 unless set",
    },
    Var {
        name: "CANDLE_BARRIER_POOL_SPIN_LIMIT",
        kind: Kind::Foreign,
        read_by: "aezoo-cli",
        doc: "how long candle's pool spins after an op; the binary sets 100 unless set",
    },
];

/// The table's entry for `name`.
///
/// # Panics
/// When `name` is not in [`VARS`]: a variable read anywhere is in the table.
pub fn var(name: &str) -> &'static Var {
    VARS.iter()
        .find(|v| v.name == name)
        .unwrap_or_else(|| panic!("environment variable {name} is not in aezoo_env::VARS"))
}

/// The one rule for true: `Some(true)` for 1/true/yes/on, `Some(false)` for
/// 0/false/no/off/empty (any case), `None` for anything else.
pub fn parse_flag(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Some(true),
        "" | "0" | "false" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// Says once per variable on stderr that its value was not understood.
fn warn_once(name: &'static str, value: &str, what: &str) {
    static SEEN: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    if !seen.contains(&name) {
        seen.push(name);
        eprintln!("warning: {name}={value:?} is not {what}; ignored");
    }
}

/// A flag of the table by the one rule; its default when unset or not
/// understood (which is reported once).
pub fn flag(name: &'static str) -> bool {
    let v = var(name);
    let Kind::Flag { default } = v.kind else {
        panic!("{name} is not a flag in aezoo_env::VARS");
    };
    match std::env::var(name) {
        Ok(s) => parse_flag(&s).unwrap_or_else(|| {
            warn_once(v.name, &s, "a flag (1/0, true/false, yes/no, on/off)");
            default
        }),
        Err(_) => default,
    }
}

/// A level of the table (a small number), if set and a number.
pub fn level(name: &'static str) -> Option<u8> {
    let v = var(name);
    assert!(v.kind == Kind::Level, "{name} is not a level in aezoo_env::VARS");
    let s = std::env::var(name).ok()?;
    let n = s.trim().parse().ok();
    if n.is_none() && !s.trim().is_empty() {
        warn_once(v.name, &s, "a number");
    }
    n
}

/// A path of the table, if set and not empty.
pub fn path(name: &'static str) -> Option<PathBuf> {
    let v = var(name);
    assert!(v.kind == Kind::Path, "{name} is not a path in aezoo_env::VARS");
    std::env::var_os(name).filter(|s| !s.is_empty()).map(PathBuf::from)
}

/// A foreign variable of the table, as set (for the binary, which sets
/// defaults for the libraries it links).
pub fn foreign(name: &'static str) -> Option<OsString> {
    let v = var(name);
    assert!(
        v.kind == Kind::Foreign,
        "{name} is not a foreign variable in aezoo_env::VARS"
    );
    std::env::var_os(name)
}
