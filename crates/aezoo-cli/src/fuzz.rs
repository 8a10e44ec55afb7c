//! `aezoo fuzz`: every parser of the workspace under mutated inputs. Each
//! target ([`crate::fuzz_targets`]) starts from valid seed inputs and feeds
//! its reader mutations of them — byte noise (flips, cuts, inserts,
//! splices) and structure-aware ones (JSON values, header integers, numbers
//! in text set to 0, −1, 2³² − 1, 10¹², …) — in a worker process of its own
//! under an address-space limit (`ulimit -v`). A target fails on a panic, an
//! abort (an allocation the budget let through), an input that runs longer
//! than `--timeout`, or an error that is not one line naming the file; the
//! input is kept in `--out` to replay (`aezoo fuzz --replay FILE --targets T`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aezoo_nn::Rng;
use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::Value;

use crate::fuzz_targets::{targets, Target};

#[derive(Args)]
pub(crate) struct FuzzArgs {
    /// Seconds of mutated inputs per target.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Stop a target after this many inputs (0: only --seconds).
    #[arg(long, default_value_t = 0)]
    inputs: u64,
    /// Only these targets (comma-separated; `aezoo fuzz --list` names them).
    #[arg(long, value_delimiter = ',')]
    targets: Vec<String>,
    /// List the targets and exit.
    #[arg(long)]
    list: bool,
    /// The address-space limit of each worker (`ulimit -v`), e.g. 6GiB.
    #[arg(long, default_value = "6GiB")]
    memory: String,
    /// Seconds one input may take before it counts as a hang.
    #[arg(long, default_value_t = 20)]
    timeout: u64,
    /// Seed of the mutations.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where failing inputs are written.
    #[arg(long, default_value = "fuzz-failures")]
    out: PathBuf,
    /// Also write the run's table (per target: inputs, accepted, refused,
    /// failures) to this Markdown file, with the command that made it.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// Run one input file through the targets named (no mutation).
    #[arg(long, value_name = "FILE")]
    replay: Option<PathBuf>,
    /// (internal) the worker of one target.
    #[arg(long, hide = true)]
    worker: Option<String>,
}

/// What a worker reports on its last stdout line.
const DONE: &str = "fuzz-done";

pub(crate) fn cmd_fuzz(a: FuzzArgs) -> Result<()> {
    let all = targets();
    if a.list {
        for t in &all {
            println!("{:<18} {}", t.name, t.about);
        }
        return Ok(());
    }
    let chosen: Vec<&Target> = if a.targets.is_empty() {
        all.iter().collect()
    } else {
        a.targets
            .iter()
            .map(|n| {
                all.iter().find(|t| t.name == n).with_context(|| {
                    format!(
                        "--targets: no target `{n}`; one of {}",
                        all.iter().map(|t| t.name).collect::<Vec<_>>().join(", ")
                    )
                })
            })
            .collect::<Result<_>>()?
    };
    if let Some(name) = &a.worker {
        let t = chosen
            .iter()
            .find(|t| t.name == name)
            .context("--worker: unknown target")?;
        return worker(t, &a);
    }
    if let Some(file) = &a.replay {
        let input = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
        for t in &chosen {
            let scratch = tempfile::tempdir()?;
            (t.seeds)(scratch.path()).with_context(|| format!("{}: cannot make the seed inputs", t.name))?;
            let case = scratch.path().join("case0");
            std::fs::create_dir_all(&case)?;
            let verdict = check(t, &input, &case);
            println!("{}: {}", t.name, verdict.map_or_else(|f| f, |m| format!("fine ({m})")));
        }
        return Ok(());
    }
    let kib = crate::bench::parse_bytes(&a.memory)? / 1024;
    std::fs::create_dir_all(&a.out).with_context(|| format!("cannot create {}", a.out.display()))?;
    let exe = std::env::current_exe().context("cannot find the aezoo binary")?;
    let mut failed = Vec::new();
    let mut rows = Vec::new();
    let run_started = Instant::now();
    for t in &chosen {
        let started = Instant::now();
        let child = Command::new("sh")
            .arg("-c")
            .arg(format!("ulimit -v {kib} && exec \"$0\" \"$@\""))
            .arg(&exe)
            .args(["fuzz", "--worker", t.name, "--targets", t.name])
            .args(["--seconds", &a.seconds.to_string(), "--inputs", &a.inputs.to_string()])
            .args(["--timeout", &a.timeout.to_string(), "--seed", &a.seed.to_string()])
            .arg("--out")
            .arg(&a.out)
            .env("RUST_LOG", "off")
            .env_remove("RUST_BACKTRACE")
            .env_remove("RUST_LIB_BACKTRACE")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start a fuzz worker")?;
        let o = child.wait_with_output()?;
        let stdout = String::from_utf8_lossy(&o.stdout);
        for line in stdout.lines().filter(|l| l.starts_with("FAIL")) {
            println!("{}: {line}", t.name);
        }
        let done = stdout.lines().find_map(|l| l.strip_prefix(DONE)).map(str::trim);
        rows.push(report_row(t.name, done));
        match (o.status.success(), done) {
            (true, Some(counts)) => println!(
                "{:<18} {counts} in {:.0} s: no failure",
                t.name,
                started.elapsed().as_secs_f64()
            ),
            (false, Some(counts)) => {
                println!("{:<18} {counts}: FAILED (inputs in {})", t.name, a.out.display());
                failed.push(t.name);
            }
            (_, None) => {
                // Killed (an abort or the watchdog): its input is the last one it saved.
                let why = String::from_utf8_lossy(&o.stderr);
                let why = why
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty() && !l.starts_with("note: "))
                    .unwrap_or("no message");
                let input = match std::fs::read(current_file(&a.out, t)) {
                    Ok(bytes) => format!("input in {}", keep(&a.out, t, &bytes)?.display()),
                    Err(_) => "before its first input".to_string(),
                };
                println!("{:<18} FAILED: the worker died ({}; {why}); {input}", t.name, o.status);
                failed.push(t.name);
            }
        }
    }
    if let Some(path) = &a.report {
        write_report(path, &a, &rows, run_started.elapsed().as_secs_f64())?;
    }
    if !failed.is_empty() {
        bail!("fuzz: {} target(s) failed: {}", failed.len(), failed.join(", "));
    }
    Ok(())
}

/// A row of the report: the target and its worker's counts (`N inputs, A
/// accepted, R refused, F failures`), or a death.
fn report_row(name: &str, done: Option<&str>) -> String {
    let cells = match done {
        Some(counts) => {
            let n: Vec<String> = counts
                .split(", ")
                .map(|c| c.split(' ').next().unwrap_or("?").to_string())
                .collect();
            n.join(" | ")
        }
        None => "— | — | — | the worker died".to_string(),
    };
    format!("| `{name}` | {cells} |\n")
}

/// `--report`: the table of a run and the command that re-makes it.
fn write_report(path: &Path, a: &FuzzArgs, rows: &[String], secs: f64) -> Result<()> {
    let mut cmd = format!("cargo xtask fuzz --seconds {} --seed {}", a.seconds, a.seed);
    if a.inputs > 0 {
        cmd += &format!(" --inputs {}", a.inputs);
    }
    if !a.targets.is_empty() {
        cmd += &format!(" --targets {}", a.targets.join(","));
    }
    let day = crate::common::timestamp();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut md = format!(
        "# Fuzzing: every parser under mutated inputs\n\nWritten by `{cmd} --report {}` on {}-{}-{} ({cores} cores, {:.0} min, workers limited to {}). Each target feeds the command's own function structure-aware mutations and byte noise of its seed files; a failure is a panic, an abort, a hang or an error that is not one line naming the file. Accepted inputs are those the command took; the rest it refused, as it should.\n\n| target | inputs | accepted | refused | failures |\n|---|---:|---:|---:|---:|\n",
        path.display(),
        &day[..4],
        &day[4..6],
        &day[6..8],
        secs / 60.0,
        a.memory,
    );
    md.extend(rows.iter().map(String::as_str));
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(path, md).with_context(|| format!("cannot write {}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(())
}

/// The file a worker keeps its current input in (read by the parent when
/// the worker dies on it).
fn current_file(out: &Path, t: &Target) -> PathBuf {
    out.join(format!(".current-{}.{}", t.name, t.ext))
}

/// Saves a failing input under `out`, named by target and content.
fn keep(out: &Path, t: &Target, input: &[u8]) -> Result<PathBuf> {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for &b in input {
        h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
    }
    let path = out.join(format!("{}-{h:016x}.{}", t.name, t.ext));
    std::fs::write(&path, input).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// Runs one input through a target and judges what came back: `Ok` with a
/// note (accepted, or refused with a proper message), `Err` with the fault.
fn check(t: &Target, input: &[u8], scratch: &Path) -> std::result::Result<String, String> {
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (t.run)(input, scratch)));
    match outcome {
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(format!("panic: {msg}"))
        }
        Ok(Ok(())) => Ok("accepted".into()),
        Ok(Err(e)) => {
            // Each cause on one line as it is written (not only once the
            // command has joined them), and the line the command prints
            // naming the file.
            let raw = without_backtrace(&format!("{e:#}"));
            let line = crate::error_line(&e);
            if raw.contains('\n') {
                Err(format!("an error of several lines: {raw:?}"))
            } else if !line.contains(&scratch.display().to_string()) {
                Err(format!("an error that names no file: {line}"))
            } else {
                Ok("refused".into())
            }
        }
    }
}

/// An error's text up to the backtrace candle appends under RUST_BACKTRACE
/// (its first frame line, `0: …`).
fn without_backtrace(text: &str) -> String {
    let mut kept = Vec::new();
    for line in text.split('\n') {
        let t = line.trim_start();
        if t.starts_with("0: ") || t == "stack backtrace:" {
            break;
        }
        kept.push(line);
    }
    kept.join("\n").trim_end().to_string()
}

/// One target in this process: mutated seeds until the time or input
/// budget is spent; each input saved first, so that the parent finds the
/// one it died on; a watchdog ends the process on an input that hangs.
fn worker(t: &Target, a: &FuzzArgs) -> Result<()> {
    // Panics are judged by `check`; their default report would only be noise.
    std::panic::set_hook(Box::new(|_| {}));
    let scratch = tempfile::tempdir()?;
    let seeds = (t.seeds)(scratch.path()).with_context(|| format!("{}: cannot make the seed inputs", t.name))?;
    let current = current_file(&a.out, t);
    let started_at = Arc::new(AtomicU64::new(u64::MAX));
    {
        let (started_at, limit) = (started_at.clone(), a.timeout);
        let epoch = Instant::now();
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_millis(500));
            let s = started_at.load(Ordering::Relaxed);
            if s != u64::MAX && epoch.elapsed().as_secs().saturating_sub(s) > limit {
                eprintln!("an input ran longer than {limit} s");
                std::process::abort();
            }
        });
    }
    let epoch = Instant::now();
    let mut rng = Rng::new(a.seed ^ fnv(t.name));
    let (mut n, mut accepted, mut failures) = (0u64, 0u64, 0u64);
    let deadline = Duration::from_secs(a.seconds);
    while epoch.elapsed() < deadline && (a.inputs == 0 || n < a.inputs) {
        // The seeds themselves first, then mutations of them.
        let input = if (n as usize) < seeds.len() {
            seeds[n as usize].clone()
        } else {
            mutate(&seeds, t.structure, &mut rng)
        };
        std::fs::write(&current, &input)?;
        started_at.store(epoch.elapsed().as_secs(), Ordering::Relaxed);
        let case = scratch.path().join(format!("case{}", n % 2));
        let _ = std::fs::remove_dir_all(&case);
        std::fs::create_dir_all(&case)?;
        let verdict = check(t, &input, &case);
        started_at.store(u64::MAX, Ordering::Relaxed);
        match verdict {
            Ok(m) => accepted += u64::from(m == "accepted"),
            Err(fault) => {
                failures += 1;
                let kept = keep(&a.out, t, &input)?;
                println!("FAIL {fault} (input {})", kept.display());
                if failures >= 10 {
                    break;
                }
            }
        }
        n += 1;
    }
    let _ = std::fs::remove_file(&current);
    println!(
        "{DONE} {n} inputs, {accepted} accepted, {} refused, {failures} failures",
        n - accepted - failures
    );
    std::io::stdout().flush()?;
    if failures > 0 {
        std::process::exit(1);
    }
    Ok(())
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// How a target's inputs are built, for the structure-aware mutations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Structure {
    /// JSON text (configs, states).
    Json,
    /// Lines of JSON (`metrics.jsonl`).
    JsonLines,
    /// Text with numbers in it (edge and feature lists).
    Text,
    /// A safetensors file: 8-byte length, JSON header, data.
    Safetensors,
    /// Big-endian u32 header fields from byte 4 (IDX).
    Idx,
    /// PNG chunks (IHDR's sizes), or other image bytes.
    Image,
    /// `.npy`: a text header of a dict.
    Npy,
    /// `.aez`: header fields after the model id, a CRC-32 at the end
    /// (recomputed after half the mutations, so the checks behind it and
    /// the entropy decoder are reached).
    Aez,
}

/// Numbers that break sizes: zero, one, signs, the edges of u32 and i64,
/// and large counts.
const INTERESTING: &[&str] = &[
    "0",
    "1",
    "-1",
    "2",
    "255",
    "65536",
    "4294967295",
    "4294967296",
    "2147483648",
    "1000000000000",
    "18446744073709551615",
    "99999999999999999999999",
    "1e300",
    "-0",
    "0.5",
];

fn pick<'a, T>(v: &'a [T], rng: &mut Rng) -> &'a T {
    &v[rng.below(v.len() as u64) as usize]
}

/// One mutated input from a seed: a structure-aware change half of the
/// time, byte noise otherwise (and sometimes both).
pub(crate) fn mutate(seeds: &[Vec<u8>], s: Structure, rng: &mut Rng) -> Vec<u8> {
    let mut x = pick(seeds, rng).clone();
    let rounds = 1 + rng.below(3);
    for _ in 0..rounds {
        x = if rng.below(2) == 0 {
            structural(&x, s, rng).unwrap_or_else(|| bytes(&x, seeds, rng))
        } else {
            bytes(&x, seeds, rng)
        };
    }
    if s == Structure::Aez && x.len() >= 4 && rng.below(2) == 0 {
        let n = x.len() - 4;
        let crc = crc32(&x[..n]);
        x[n..].copy_from_slice(&crc.to_le_bytes());
    }
    x
}

/// Byte noise: flips, special bytes, cuts, inserts, deletions, copies, splices.
fn bytes(x: &[u8], seeds: &[Vec<u8>], rng: &mut Rng) -> Vec<u8> {
    let mut v = x.to_vec();
    let at = |rng: &mut Rng, len: usize| rng.below(len as u64 + 1) as usize;
    match rng.below(7) {
        0 if !v.is_empty() => {
            for _ in 0..1 + rng.below(8) {
                let i = at(rng, v.len() - 1);
                v[i] ^= 1 << rng.below(8);
            }
        }
        1 if !v.is_empty() => {
            let i = at(rng, v.len() - 1);
            v[i] = *pick(&[0u8, 0xff, 0x7f, 0x80, b'9', b'\n', b'"'], rng);
        }
        2 => v.truncate(at(rng, v.len())),
        3 => {
            let i = at(rng, v.len());
            let n = 1 + rng.below(64) as usize;
            let junk: Vec<u8> = (0..n).map(|_| rng.below(256) as u8).collect();
            v.splice(i..i, junk);
        }
        4 if !v.is_empty() => {
            let i = at(rng, v.len() - 1);
            let n = (1 + rng.below(64) as usize).min(v.len() - i);
            v.drain(i..i + n);
        }
        5 if !v.is_empty() => {
            let i = at(rng, v.len() - 1);
            let n = (1 + rng.below(256) as usize).min(v.len() - i);
            let copy = v[i..i + n].to_vec();
            let j = at(rng, v.len());
            v.splice(j..j, copy);
        }
        _ => {
            let other = pick(seeds, rng);
            let (i, j) = (at(rng, v.len()), at(rng, other.len()));
            v.truncate(i);
            v.extend_from_slice(&other[j..]);
        }
    }
    v
}

/// A structure-aware change, where the input still has its structure.
fn structural(x: &[u8], s: Structure, rng: &mut Rng) -> Option<Vec<u8>> {
    match s {
        Structure::Json => {
            let mut v: Value = serde_json::from_slice(x).ok()?;
            json_change(&mut v, rng);
            Some(serde_json::to_vec(&v).ok()?)
        }
        Structure::JsonLines => {
            let text = std::str::from_utf8(x).ok()?;
            let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
            if lines.is_empty() {
                return None;
            }
            let i = rng.below(lines.len() as u64) as usize;
            let mut v: Value = serde_json::from_str(&lines[i]).ok()?;
            json_change(&mut v, rng);
            lines[i] = serde_json::to_string(&v).ok()?;
            Some((lines.join("\n") + "\n").into_bytes())
        }
        Structure::Text | Structure::Npy => numbers_in_text(x, rng),
        Structure::Safetensors => {
            let n = u64::from_le_bytes(x.get(..8)?.try_into().ok()?) as usize;
            let header = x.get(8..8usize.checked_add(n)?)?;
            let mut v: Value = serde_json::from_slice(header).ok()?;
            json_change(&mut v, rng);
            let h = serde_json::to_vec(&v).ok()?;
            let len = if rng.below(8) == 0 {
                h.len() as u64 + rng.below(16)
            } else {
                h.len() as u64
            };
            Some([&len.to_le_bytes()[..], &h, &x[8 + n..]].concat())
        }
        Structure::Idx => {
            let mut v = x.to_vec();
            let fields = (v.len().min(16).saturating_sub(4)) / 4;
            if fields == 0 {
                return None;
            }
            let at = 4 + 4 * rng.below(fields as u64) as usize;
            let val: u32 = *pick(
                &[0, 1, 2, 27, 29, 0xffff, 0x7fff_ffff, 0xffff_ffff, 60000, 1 << 20],
                rng,
            );
            v[at..at + 4].copy_from_slice(&val.to_be_bytes());
            Some(v)
        }
        Structure::Image => {
            // PNG: IHDR's width or height (bytes 16..24), its CRC fixed.
            if x.len() < 33 || &x[12..16] != b"IHDR" {
                return numbers_in_text(x, rng);
            }
            let mut v = x.to_vec();
            let at = 16 + 4 * rng.below(2) as usize;
            let val: u32 = *pick(&[0, 1, 20000, 65535, 65536, 1 << 20, 0x7fff_ffff, 0xffff_ffff], rng);
            v[at..at + 4].copy_from_slice(&val.to_be_bytes());
            let crc = crc32(&v[12..29]);
            v[29..33].copy_from_slice(&crc.to_be_bytes());
            Some(v)
        }
        Structure::Aez => {
            // Channels (u8), height, width (u32), tile height, width (u16),
            // word count (u32), after the 6 + n bytes of magic, version and id.
            let base = 6 + *x.get(5)? as usize + 8;
            let (off, len) = *pick(&[(0, 1), (1, 4), (5, 4), (9, 2), (11, 2), (13, 4)], rng);
            let at = base + off;
            if at + len > x.len() {
                return None;
            }
            let val: u64 = *pick(
                &[
                    0,
                    1,
                    2,
                    3,
                    7,
                    28,
                    29,
                    255,
                    256,
                    4096,
                    65535,
                    65536,
                    1 << 24,
                    0xffff_ffff,
                ],
                rng,
            );
            let mut v = x.to_vec();
            v[at..at + len].copy_from_slice(&val.to_le_bytes()[..len]);
            Some(v)
        }
    }
}

/// A JSON value changed somewhere: a number, string, array or object
/// replaced by an edge value, a key dropped, or a type swapped.
fn json_change(v: &mut Value, rng: &mut Rng) {
    let mut paths = Vec::new();
    collect_paths(v, &mut Vec::new(), &mut paths);
    if paths.is_empty() {
        *v = edge_value(rng);
        return;
    }
    let path = pick(&paths, rng).clone();
    let (last, parent) = match path.split_last() {
        Some((l, p)) => (l.clone(), p.to_vec()),
        None => return,
    };
    let mut node = &mut *v;
    for k in &parent {
        node = match (node, k) {
            (Value::Object(o), Key::Name(n)) => o.get_mut(n).expect("a collected path"),
            (Value::Array(a), Key::Index(i)) => &mut a[*i],
            _ => return,
        };
    }
    match (node, last) {
        (Value::Object(o), Key::Name(n)) => {
            if rng.below(5) == 0 {
                o.remove(&n);
            } else {
                o.insert(n, edge_value(rng));
            }
        }
        (Value::Array(a), Key::Index(i)) => {
            if rng.below(5) == 0 {
                a.remove(i);
            } else {
                a[i] = edge_value(rng);
            }
        }
        _ => {}
    }
}

#[derive(Clone, Debug)]
enum Key {
    Name(String),
    Index(usize),
}

fn collect_paths(v: &Value, prefix: &mut Vec<Key>, out: &mut Vec<Vec<Key>>) {
    match v {
        Value::Object(o) => {
            for (k, x) in o {
                prefix.push(Key::Name(k.clone()));
                out.push(prefix.clone());
                collect_paths(x, prefix, out);
                prefix.pop();
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                prefix.push(Key::Index(i));
                out.push(prefix.clone());
                collect_paths(x, prefix, out);
                prefix.pop();
            }
        }
        _ => {}
    }
}

fn edge_value(rng: &mut Rng) -> Value {
    match rng.below(6) {
        0 => serde_json::from_str(pick::<&str>(INTERESTING, rng)).unwrap_or(Value::Null),
        1 => Value::String(pick(&["", "x", "NaN", "-1", "F32", "I32", "U8", "codec", "../../etc"], rng).to_string()),
        2 => Value::Null,
        3 => Value::Array(vec![]),
        4 => Value::Bool(true),
        _ => serde_json::json!({}),
    }
}

/// A number in text replaced by an interesting one.
fn numbers_in_text(x: &[u8], rng: &mut Rng) -> Option<Vec<u8>> {
    let runs: Vec<(usize, usize)> = {
        let mut runs = Vec::new();
        let mut i = 0;
        while i < x.len() {
            if x[i].is_ascii_digit() {
                let j = x[i..]
                    .iter()
                    .position(|b| !b.is_ascii_digit())
                    .map_or(x.len(), |k| i + k);
                runs.push((i, j));
                i = j;
            } else {
                i += 1;
            }
        }
        runs
    };
    if runs.is_empty() {
        return None;
    }
    let (i, j) = *pick(&runs, rng);
    Some([&x[..i], pick(INTERESTING, rng).as_bytes(), &x[j..]].concat())
}

/// CRC-32 (PNG's and gzip's polynomial).
pub(crate) fn crc32(bytes: &[u8]) -> u32 {
    let mut c = 0xffff_ffffu32;
    for &b in bytes {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 == 1 { 0xedb8_8320 ^ (c >> 1) } else { c >> 1 };
        }
    }
    !c
}
