//! Command-line front end: one file per subcommand, each turning arguments into a library call
//! and the result into text or `--json`. Flags are defined once, here and in those files.

mod apply;
mod benchmark;
mod compress;
mod decompress;
mod diff;
mod info;
mod migrate;
mod mode;
mod repair;
mod reshard;
mod scan;
mod stat;
mod transcode;
mod verify;

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

use bigsmall::error::Error;
use bigsmall::progress::Progress;

/// Lossless compression of AI model weights: bit-identical, smaller than any peer.
#[derive(Parser)]
#[command(name = "bigsmall", version, about, long_about = None)]
#[command(
    after_help = "Examples:\n  bigsmall compress model.safetensors -o model.bs\n  bigsmall decompress model.bs -o back.safetensors\n  bigsmall verify model.bs"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Compress a .safetensors file (or a model directory) to .bs, bit-exact
    Compress(compress::Args),
    /// Decompress a .bs file (or directory) back to the exact original safetensors
    Decompress(decompress::Args),
    /// Everything about a .bs file: sizes, ratio, codecs, layers, best/worst tensors
    Info(info::Args),
    /// Per-tensor table of a .bs file, sortable and filterable
    Stat(stat::Args),
    /// Analyse a safetensors file or directory before compressing it
    Scan(scan::Args),
    /// Check a .bs file: structure (--fast), a random sample, everything, or against the source
    Verify(verify::Args),
    /// Compress + decompress in-process: ratio, throughput, peak RSS, per-role breakdown
    Benchmark(benchmark::Args),
    /// Rebuild a fine-tune from its base and a patch (same as decompress --base)
    Apply(apply::Args),
    /// Compare two models: added / removed / changed tensors; --patch writes the delta
    Diff(diff::Args),
    /// Repair a damaged .bs from its Reed-Solomon .ecc sidecar
    Repair(repair::Args),
    /// Rewrite an older .bs with the current codecs (verified before it replaces the file)
    Migrate(migrate::Args),
    /// Re-encode a .bs into a .bsr tuned for decode speed (or back toward size), verified
    Transcode(transcode::Args),
    /// Split, join or rebalance .bs shards along layer boundaries (blobs copied, verified)
    Reshard(reshard::Args),
}

pub fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Compress(a) => compress::run(a),
        Command::Decompress(a) => decompress::run(a),
        Command::Info(a) => info::run(a),
        Command::Stat(a) => stat::run(a),
        Command::Scan(a) => scan::run(a),
        Command::Verify(a) => verify::run(a),
        Command::Benchmark(a) => benchmark::run(a),
        Command::Apply(a) => apply::run(a),
        Command::Diff(a) => diff::run(a),
        Command::Repair(a) => repair::run(a),
        Command::Migrate(a) => migrate::run(a),
        Command::Transcode(a) => transcode::run(a),
        Command::Reshard(a) => reshard::run(a),
    }
}

/// Parses an output path. `-` is refused as a usage error: every output is written under a
/// temporary name and renamed into place, which standard output cannot be.
pub fn output_path(s: &str) -> Result<PathBuf, String> {
    if s.is_empty() {
        return Err("an empty output path: give a file name".into());
    }
    if s == "-" {
        return Err("writing to standard output is not supported: give a file name (./- for a file named -)".into());
    }
    Ok(PathBuf::from(s))
}

/// A directory path whose last component is its name: `model/` as it is, `.` or `a/..` by
/// where they lead (so that a default output named after it lands beside it, not inside).
pub fn named(dir: &Path) -> PathBuf {
    let p = dir.components().as_path();
    if p.file_name().is_some() {
        p.to_path_buf()
    } else {
        dir.canonicalize().unwrap_or_else(|_| p.to_path_buf())
    }
}

/// A duration as reports print it: `1.23s`, or `0.004s` under a tenth of a second (where two
/// decimals would print the `0.00s` of a run that still took time).
pub fn seconds(s: f64) -> String {
    if s < 0.1 {
        format!("{s:.3}s")
    } else {
        format!("{s:.2}s")
    }
}

/// Ends the run with a usage error (exit 2), as clap does for the errors it finds itself:
/// for argument combinations clap cannot see (what the files given turn out to be).
pub fn usage_error(kind: clap::error::ErrorKind, message: &str) -> ! {
    clap::Error::raw(kind, format!("{message}\n")).exit()
}

/// The error and its causes on one line, control characters escaped (a tensor name with a
/// line break reads as `evil\nname`, not as another name).
pub fn one_line(err: &anyhow::Error) -> String {
    let mut s = err.to_string();
    for cause in err.chain().skip(1) {
        let c = cause.to_string();
        if !s.contains(&c) {
            s.push_str(": ");
            s.push_str(&c);
        }
    }
    printable(&s).into_owned()
}

/// A name (a tensor's, a file's) as it is safe to print: control characters, which a crafted
/// file could use to split a table row or send a terminal escape sequence, shown escaped
/// (`\n`, `\u{1b}`).
pub fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    escape_controls(s, |_| false)
}

/// `s` with its control characters escaped, except those `keep` lets through; the
/// bidirectional overrides and isolates too, which reorder what a terminal shows.
fn escape_controls(s: &str, keep: fn(char) -> bool) -> std::borrow::Cow<'_, str> {
    let escaped = |c: char| (c.is_control() || bidi(c)) && !keep(c);
    if !s.chars().any(escaped) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if escaped(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out.into()
}

pub fn exit_code(err: &anyhow::Error) -> i32 {
    match err.downcast_ref::<Error>() {
        Some(e) if e.is_integrity() => 3,
        // A file that starts as a container but whose structure is damaged (truncated, a bad
        // index) is damage found, from every command, as `verify` reports it.
        Some(Error::BadContainer { path, .. }) if bigsmall::format::is_container(path) => 3,
        // So is a compressed directory's index that does not hold together (unreadable,
        // shards it does not list, paths out of the directory).
        Some(Error::BadContainer { path, .. })
            if path.file_name() == Some(std::ffi::OsStr::new(bigsmall::store_dir::DIR_INDEX)) =>
        {
            3
        }
        _ => 1,
    }
}

/// Writes a text report to stdout. Names are escaped where they are printed (`printable`);
/// this catches any other place a control character from a file could reach the terminal
/// through (newlines and tabs are the report's own).
pub fn emit(text: &str) {
    write_stdout(&escape_controls(text, |c| c == '\n' || c == '\t'));
}

/// Writes a report as JSON. serde escapes the control characters below 0x20; what it leaves
/// raw that a terminal acts on (`terminal_unsafe`) is written as `\u007f`-style escapes:
/// valid JSON all the same.
pub fn emit_json<T: serde::Serialize>(value: &T) {
    let mut s = serde_json::to_string_pretty(value).expect("reports serialise");
    s.push('\n');
    let s = if s.chars().any(terminal_unsafe) {
        let mut out = String::with_capacity(s.len() + 16);
        for c in s.chars() {
            if terminal_unsafe(c) {
                out += &format!("\\u{:04x}", u32::from(c));
            } else {
                out.push(c);
            }
        }
        out
    } else {
        s
    };
    write_stdout(&s);
}

/// Characters serde leaves raw in JSON that a terminal acts on: DEL, the C1 controls, and the
/// bidirectional overrides and isolates.
fn terminal_unsafe(c: char) -> bool {
    (c.is_control() && c > '\u{7e}') || bidi(c)
}

/// The bidirectional overrides and isolates, which reorder what a terminal shows.
fn bidi(c: char) -> bool {
    matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// A closed pipe (`| head`) drops the rest of the output quietly; any other failure is
/// reported once. Either way the command goes on, so that its verdict (exit 3 from `verify`)
/// and its stderr lines are not lost with the report (see `output_failed`).
fn write_stdout(text: &str) {
    if STDOUT.load(Ordering::Relaxed) != STDOUT_OK {
        return;
    }
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            STDOUT.store(STDOUT_CLOSED, Ordering::Relaxed);
        } else {
            eprintln!("bigsmall: cannot write the report to standard output: {e}");
            STDOUT.store(STDOUT_FAILED, Ordering::Relaxed);
        }
    }
}

const STDOUT_OK: u8 = 0;
const STDOUT_CLOSED: u8 = 1;
const STDOUT_FAILED: u8 = 2;
static STDOUT: AtomicU8 = AtomicU8::new(STDOUT_OK);

/// Whether writing the report failed (other than on a closed pipe): a command that found
/// nothing wrong then exits 1, since its caller did not get the report.
pub fn output_failed() -> bool {
    STDOUT.load(Ordering::Relaxed) == STDOUT_FAILED
}

/// Where a failing command's stderr line points for the full report: stdout, unless the
/// report did not get there.
pub fn report_is(where_: &str) -> &str {
    if STDOUT.load(Ordering::Relaxed) == STDOUT_OK {
        where_
    } else {
        "the report could not be written"
    }
}

pub use bigsmall::analysis::counted;

/// `1234567` -> `1,234,567`.
pub fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// Binary-prefixed size: `28.92 MiB`.
pub fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

/// An indicatif bar on stderr, or nothing when hidden or stderr is not a terminal.
pub struct Bar {
    bar: Option<ProgressBar>,
}

impl Bar {
    pub fn new(no_progress: bool) -> Bar {
        let show = !no_progress && std::io::stderr().is_terminal();
        Bar {
            bar: show.then(|| {
                let b = ProgressBar::hidden();
                b.set_draw_target(indicatif::ProgressDrawTarget::stderr());
                b.set_style(
                    ProgressStyle::with_template(
                        "{msg:>10} [{bar:32}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                    )
                    .expect("valid template")
                    .progress_chars("=> "),
                );
                b
            }),
        }
    }
}

impl Progress for Bar {
    fn start(&self, total: u64, what: &str) {
        if let Some(b) = &self.bar {
            b.reset();
            b.set_length(total);
            b.set_position(0);
            b.set_message(what.to_string());
        }
    }

    fn advance(&self, bytes: u64) {
        if let Some(b) = &self.bar {
            b.inc(bytes);
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// True when `p` is a directory made by `compress` on a model directory.
pub fn is_bs_dir(p: &Path) -> bool {
    p.is_dir() && p.join(bigsmall::store_dir::DIR_INDEX).is_file()
}

/// The `.bs` files a report command should look at: the file itself, or every shard of a
/// compressed directory.
pub fn container_files(p: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if is_bs_dir(p) {
        let idx = bigsmall::store_dir::read_dir_index(p)?;
        // Missing, swapped or replaced shards are damage here too, not a wrong report.
        bigsmall::store_dir::check_shards(p, &idx)?;
        Ok(idx.shards.iter().map(|s| p.join(&s.file)).collect())
    } else if p.is_dir() {
        Err(Error::invalid(
            p,
            "is a directory without bigsmall.index.json (not made by bigsmall compress)",
        )
        .into())
    } else {
        Ok(vec![p.to_path_buf()])
    }
}
