//! Graph data sets: Cora and Citeseer (Planetoid node order, as in the GAE
//! reference code) bundled gzipped in the crate, and a loader for a user's own
//! graph in the same two-file text format:
//!
//! - `<name>.edges.txt`: one undirected edge `u v` per line (ids from 0);
//!   `#` lines are comments, and a `# …: N nodes` header declares the node count.
//! - `<name>.features.txt` (optional): line `i` lists the indices of node `i`'s
//!   non-zero binary features (an empty line is a node without features);
//!   a `# …: N nodes, F … features` header declares both counts.
//!
//! Both directions of an edge, or an edge listed twice, count once. Self-loops,
//! ids that are not integers and nodes out of range are errors naming the file,
//! the line and the token.

use std::io::Read;
use std::path::{Path, PathBuf};

/// A data error naming the file (and line) at fault.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    #[error("{file}: {msg}")]
    Io { file: String, msg: String },
    #[error("{file}:{line}: {msg}")]
    Parse { file: String, line: usize, msg: String },
    #[error("{file}: {msg}")]
    Invalid { file: String, msg: String },
    #[error(
        "no graph named `{name}`: looked for {name}.edges.txt in {searched}; the bundled graphs are cora and citeseer"
    )]
    NotFound { name: String, searched: String },
}

pub type Result<T> = std::result::Result<T, GraphError>;

/// Binary node features as compressed rows: row `i` holds the indices of the
/// features node `i` has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Features {
    pub dim: usize,
    pub indptr: Vec<usize>,
    pub indices: Vec<u32>,
}

impl Features {
    pub fn rows(&self) -> usize {
        self.indptr.len() - 1
    }
    pub fn nnz(&self) -> usize {
        self.indices.len()
    }
    /// Feature indices of node `i`.
    pub fn row(&self, i: usize) -> &[u32] {
        &self.indices[self.indptr[i]..self.indptr[i + 1]]
    }
}

/// An undirected graph with optional binary node features.
#[derive(Clone, Debug)]
pub struct Graph {
    pub name: String,
    pub num_nodes: usize,
    /// Unique undirected edges `(u, v)` with `u < v`, sorted.
    pub edges: Vec<(u32, u32)>,
    pub features: Option<Features>,
    /// Where it was read from (`bundled`, or the edge-list path).
    pub source: String,
    /// Lines that repeated an edge already listed (either direction).
    pub repeated_edges: usize,
}

impl Graph {
    /// Builds a graph from parsed parts, checking every id against the node count.
    pub fn new(name: &str, num_nodes: usize, edges: Vec<(u32, u32)>, features: Option<Features>) -> Result<Self> {
        let (edges, repeated) = normalise_edges(edges, num_nodes, name)?;
        if let Some(f) = &features {
            if f.rows() != num_nodes {
                return Err(GraphError::Invalid {
                    file: name.into(),
                    msg: format!("features have {} rows but the graph has {num_nodes} nodes", f.rows()),
                });
            }
        }
        Ok(Self {
            name: name.into(),
            num_nodes,
            edges,
            features,
            source: "memory".into(),
            repeated_edges: repeated,
        })
    }

    /// One line: name, sizes and source.
    pub fn describe(&self) -> String {
        let feats = match &self.features {
            Some(f) => format!("{} binary features", f.dim),
            None => "no features".into(),
        };
        format!(
            "{}: {} nodes, {} edges, {feats}, from {}",
            self.name,
            self.num_nodes,
            self.edges.len(),
            self.source
        )
    }
}

fn normalise_edges(mut edges: Vec<(u32, u32)>, n: usize, origin: &str) -> Result<(Vec<(u32, u32)>, usize)> {
    for e in edges.iter_mut() {
        if e.0 == e.1 {
            return Err(GraphError::Invalid {
                file: origin.into(),
                msg: format!("self-loop on node {}", e.0),
            });
        }
        if e.0 as usize >= n || e.1 as usize >= n {
            return Err(GraphError::Invalid {
                file: origin.into(),
                msg: format!("edge ({}, {}) names a node out of range 0..{n}", e.0, e.1),
            });
        }
        if e.0 > e.1 {
            *e = (e.1, e.0);
        }
    }
    let before = edges.len();
    edges.sort_unstable();
    edges.dedup();
    let repeated = before - edges.len();
    Ok((edges, repeated))
}

/// The text without a leading UTF-8 byte-order mark (editors on Windows
/// write one).
fn strip_bom(text: &str) -> &str {
    text.strip_prefix('\u{feff}').unwrap_or(text)
}

/// A node count between 1 and [`aezoo_nn::limits::MAX_GRAPH_NODES`], or an
/// error at `line` (`how`: where the count comes from).
fn check_nodes(n: usize, file: &str, line: usize, how: &str) -> Result<()> {
    let limit = aezoo_nn::limits::MAX_GRAPH_NODES;
    if n == 0 || n > limit {
        return Err(GraphError::Parse {
            file: file.into(),
            line,
            msg: format!("{how} {n} nodes; a graph has 1 to {limit} (aezoo_nn::limits)"),
        });
    }
    Ok(())
}

/// `N nodes` and `F … features` declared in a `#` header line.
fn header_counts(line: &str) -> (Option<usize>, Option<usize>) {
    let words: Vec<&str> = line
        .split(|c: char| c.is_whitespace() || c == ',' || c == ':' || c == ';')
        .filter(|w| !w.is_empty())
        .collect();
    let mut nodes = None;
    let mut feats = None;
    for (i, w) in words.iter().enumerate().skip(1) {
        let num = words[i - 1].parse::<usize>().ok();
        if *w == "nodes" {
            nodes = nodes.or(num);
        }
        if w.starts_with("feature") {
            // "3703 binary features" or "3703 features"
            let n2 = if i >= 2 {
                words[i - 2].parse::<usize>().ok()
            } else {
                None
            };
            feats = feats.or(num).or(n2);
        }
    }
    (nodes, feats)
}

/// Parses an edge list. Returns the edges (as listed) and the node count its
/// header declares, if any.
pub fn parse_edges(text: &str, file: &str) -> Result<(Vec<(u32, u32)>, Option<usize>)> {
    let mut edges = Vec::new();
    let mut declared = None;
    for (i, line) in strip_bom(text).lines().enumerate() {
        let lineno = i + 1;
        let t = line.trim();
        if t.is_empty() {
            continue;
        }
        if let Some(h) = t.strip_prefix('#') {
            if declared.is_none() {
                declared = header_counts(h).0;
                if let Some(n) = declared {
                    check_nodes(n, file, lineno, "the header declares")?;
                }
            }
            continue;
        }
        let toks: Vec<&str> = t.split_whitespace().collect();
        if toks.len() != 2 {
            return Err(GraphError::Parse {
                file: file.into(),
                line: lineno,
                msg: format!("expected two node ids `u v`, found {} fields: `{t}`", toks.len()),
            });
        }
        let id = |tok: &str| {
            tok.parse::<u32>().map_err(|_| GraphError::Parse {
                file: file.into(),
                line: lineno,
                msg: format!("bad node id `{tok}`: expected an integer 0..{}", u32::MAX),
            })
        };
        let (u, v) = (id(toks[0])?, id(toks[1])?);
        if u == v {
            return Err(GraphError::Parse {
                file: file.into(),
                line: lineno,
                msg: format!("self-loop `{u} {v}`: the model adds self-loops itself; remove this line"),
            });
        }
        if let Some(n) = declared {
            if u as usize >= n || v as usize >= n {
                return Err(GraphError::Parse {
                    file: file.into(),
                    line: lineno,
                    msg: format!(
                        "node {} is out of range: the header declares {n} nodes (ids 0..{})",
                        u.max(v),
                        n - 1
                    ),
                });
            }
        }
        edges.push((u, v));
    }
    Ok((edges, declared))
}

/// Parses a feature list: one line per node (an empty line is a node without
/// features). The feature count is the header's, else the largest index + 1.
pub fn parse_features(text: &str, file: &str) -> Result<Features> {
    let mut indptr = vec![0usize];
    let mut indices: Vec<u32> = Vec::new();
    let (mut nodes, mut dim) = (None, None);
    let mut seen_data = false;
    let mut lines: Vec<(usize, &str)> = strip_bom(text).lines().enumerate().map(|(i, l)| (i + 1, l)).collect();
    // A trailing empty line is the end of the file, not a node.
    while matches!(lines.last(), Some((_, l)) if l.trim().is_empty()) {
        lines.pop();
    }
    for (lineno, line) in lines {
        let t = line.trim();
        if !seen_data {
            if let Some(h) = t.strip_prefix('#') {
                let (n, f) = header_counts(h);
                if let Some(n) = n {
                    check_nodes(n, file, lineno, "the header declares")?;
                }
                if let Some(f) = f.filter(|&f| f == 0 || f > aezoo_nn::limits::MAX_GRAPH_FEATURE_VALUES) {
                    return Err(GraphError::Parse {
                        file: file.into(),
                        line: lineno,
                        msg: format!(
                            "the header declares {f} features; 1 to {} (aezoo_nn::limits)",
                            aezoo_nn::limits::MAX_GRAPH_FEATURE_VALUES
                        ),
                    });
                }
                nodes = nodes.or(n);
                dim = dim.or(f);
                continue;
            }
        }
        seen_data = true;
        if indptr.len() > aezoo_nn::limits::MAX_GRAPH_NODES {
            return Err(GraphError::Parse {
                file: file.into(),
                line: lineno,
                msg: format!(
                    "more than {} feature lines (nodes; aezoo_nn::limits)",
                    aezoo_nn::limits::MAX_GRAPH_NODES
                ),
            });
        }
        let start = indices.len();
        for tok in t.split_whitespace() {
            let j = tok.parse::<u32>().map_err(|_| GraphError::Parse {
                file: file.into(),
                line: lineno,
                msg: format!("bad feature index `{tok}`: expected a non-negative integer"),
            })?;
            if let Some(d) = dim {
                if j as usize >= d {
                    return Err(GraphError::Parse {
                        file: file.into(),
                        line: lineno,
                        msg: format!("feature index {j} is out of range: the header declares {d} features"),
                    });
                }
            }
            indices.push(j);
        }
        indices[start..].sort_unstable();
        let mut row = indices.split_off(start);
        row.dedup();
        indices.extend(row);
        indptr.push(indices.len());
    }
    let rows = indptr.len() - 1;
    if let Some(n) = nodes {
        if n != rows {
            return Err(GraphError::Invalid {
                file: file.into(),
                msg: format!("the header declares {n} nodes but there are {rows} feature lines"),
            });
        }
    }
    let dim = dim.unwrap_or_else(|| indices.iter().map(|&j| j as usize + 1).max().unwrap_or(0));
    // The dense matrix the encoder reads: nodes × features, within budget.
    let limit = aezoo_nn::limits::MAX_GRAPH_FEATURE_VALUES;
    if rows.saturating_mul(dim) > limit {
        return Err(GraphError::Invalid {
            file: file.into(),
            msg: format!("{rows} nodes × {dim} features is above the limit of {limit} values (aezoo_nn::limits)"),
        });
    }
    Ok(Features { dim, indptr, indices })
}

fn gunzip(bytes: &[u8], file: &str) -> Result<String> {
    let limit = aezoo_nn::limits::MAX_TEXT_BYTES;
    let mut s = String::new();
    flate2::read::GzDecoder::new(bytes)
        .take(limit + 1)
        .read_to_string(&mut s)
        .map_err(|e| GraphError::Io {
            file: file.into(),
            msg: format!("cannot decompress: {e}"),
        })?;
    if s.len() as u64 > limit {
        return Err(GraphError::Io {
            file: file.into(),
            msg: format!("inflates to more than {limit} bytes (aezoo_nn::limits)"),
        });
    }
    Ok(s)
}

/// The graphs bundled in the crate (the whole data sets, gzipped text).
pub const BUNDLED: &[(&str, &[u8], &[u8])] = &[
    (
        "cora",
        include_bytes!("../data/cora.edges.txt.gz"),
        include_bytes!("../data/cora.features.txt.gz"),
    ),
    (
        "citeseer",
        include_bytes!("../data/citeseer.edges.txt.gz"),
        include_bytes!("../data/citeseer.features.txt.gz"),
    ),
];

fn assemble(name: &str, edges_text: &str, edges_file: &str, feats: Option<(String, String)>) -> Result<Graph> {
    let (edges, declared) = parse_edges(edges_text, edges_file)?;
    let features = match feats {
        Some((text, file)) => Some(parse_features(&text, &file)?),
        None => None,
    };
    let n = match (&features, declared) {
        (Some(f), Some(d)) if f.rows() != d => {
            return Err(GraphError::Invalid {
                file: edges_file.into(),
                msg: format!("declares {d} nodes but the feature file has {} rows", f.rows()),
            })
        }
        (Some(f), _) => f.rows(),
        (None, Some(d)) => d,
        (None, None) => {
            // Without a header the count is the largest id + 1: within budget
            // before anything of that size exists.
            let n = edges.iter().map(|&(u, v)| u.max(v) as usize + 1).max().unwrap_or(0);
            if n > aezoo_nn::limits::MAX_GRAPH_NODES {
                return Err(GraphError::Invalid {
                    file: edges_file.into(),
                    msg: format!(
                        "node id {} makes {n} nodes, above the limit of {} (aezoo_nn::limits); ids count from 0",
                        n - 1,
                        aezoo_nn::limits::MAX_GRAPH_NODES
                    ),
                });
            }
            n
        }
    };
    let (edges, repeated) = normalise_edges(edges, n, edges_file)?;
    if edges.is_empty() {
        return Err(GraphError::Invalid {
            file: edges_file.into(),
            msg: "no edges".into(),
        });
    }
    Ok(Graph {
        name: name.into(),
        num_nodes: n,
        edges,
        features,
        source: edges_file.into(),
        repeated_edges: repeated,
    })
}

/// A bundled graph by name.
pub fn bundled(name: &str) -> Option<Result<Graph>> {
    let (_, e, f) = BUNDLED.iter().find(|(n, _, _)| *n == name)?;
    let load = || {
        let ef = format!("<bundled>/{name}.edges.txt.gz");
        let ff = format!("<bundled>/{name}.features.txt.gz");
        let edges = gunzip(e, &ef)?;
        let feats = gunzip(f, &ff)?;
        let mut g = assemble(name, &edges, &ef, Some((feats, ff)))?;
        g.source = "bundled (the whole data set)".into();
        Ok(g)
    };
    Some(load())
}

fn read_text(path: &Path) -> Result<String> {
    let io = |e: std::io::Error| GraphError::Io {
        file: path.display().to_string(),
        msg: e.to_string(),
    };
    let len = std::fs::metadata(path).map_err(io)?.len();
    if len > aezoo_nn::limits::MAX_TEXT_BYTES {
        return Err(GraphError::Io {
            file: path.display().to_string(),
            msg: format!(
                "{len} bytes, above the limit of {} (aezoo_nn::limits)",
                aezoo_nn::limits::MAX_TEXT_BYTES
            ),
        });
    }
    let bytes = std::fs::read(path).map_err(|e| GraphError::Io {
        file: path.display().to_string(),
        msg: e.to_string(),
    })?;
    if path.extension().is_some_and(|x| x == "gz") {
        return gunzip(&bytes, &path.display().to_string());
    }
    String::from_utf8(bytes).map_err(|e| GraphError::Io {
        file: path.display().to_string(),
        msg: format!("not UTF-8 text (byte {})", e.utf8_error().valid_up_to()),
    })
}

/// Reads `<dir>/<name>.edges.txt[.gz]` and, if present, `<dir>/<name>.features.txt[.gz]`.
pub fn load_dir(dir: &Path, name: &str) -> Result<Option<Graph>> {
    let find = |stem: &str| {
        [format!("{name}.{stem}.txt"), format!("{name}.{stem}.txt.gz")]
            .into_iter()
            .map(|f| dir.join(f))
            .find(|p| p.is_file())
    };
    let Some(edges_path) = find("edges") else {
        return Ok(None);
    };
    let edges = read_text(&edges_path)?;
    let feats = match find("features") {
        Some(p) => Some((read_text(&p)?, p.display().to_string())),
        None => None,
    };
    assemble(name, &edges, &edges_path.display().to_string(), feats).map(Some)
}

/// A graph by name: the first of `dirs` holding `<name>.edges.txt`, else the
/// bundled copy; or an edge-list path itself (`…/<name>.edges.txt`).
pub fn load(name_or_path: &str, dirs: &[PathBuf]) -> Result<Graph> {
    if let Some(stem) = name_or_path
        .strip_suffix(".edges.txt")
        .or_else(|| name_or_path.strip_suffix(".edges.txt.gz"))
    {
        let p = Path::new(stem);
        let dir = p
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let name = p
            .file_name()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_default();
        return load_dir(dir, &name)?.ok_or_else(|| GraphError::Io {
            file: name_or_path.into(),
            msg: "no such file".into(),
        });
    }
    for d in dirs {
        if let Some(g) = load_dir(d, name_or_path)? {
            return Ok(g);
        }
    }
    if let Some(g) = bundled(name_or_path) {
        return g;
    }
    let mut searched: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    searched.push("the bundled graphs".into());
    Err(GraphError::NotFound {
        name: name_or_path.into(),
        searched: searched.join(", "),
    })
}
