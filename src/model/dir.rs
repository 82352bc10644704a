//! Model directories: the weight files (`*.safetensors`, at any depth) and the side files
//! (config, tokenizer, index JSON) that travel with them.

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A model directory's contents, as paths relative to its root, sorted.
#[derive(Debug, Default)]
pub struct ModelDir {
    pub weights: Vec<PathBuf>,
    pub side_files: Vec<PathBuf>,
    /// Hidden entries (`.git`, `.gitattributes`, `.cache`): not carried, and reported so.
    pub skipped: Vec<PathBuf>,
}

/// The weight files a path names: the file itself, or every `.safetensors` of a model
/// directory (full paths).
pub fn weight_files(path: &Path) -> Result<Vec<PathBuf>> {
    if path.is_dir() {
        Ok(scan_dir(path)?
            .weights
            .into_iter()
            .map(|p| path.join(p))
            .collect())
    } else {
        Ok(vec![path.to_path_buf()])
    }
}

/// Lists a model directory to be read as a model (compressed, scanned, compared): hidden
/// entries (`.git`, `.cache`) skipped, and refused where its shard index or shard names say
/// a shard is missing (`check_shard_indexes`).
pub fn scan_dir(root: &Path) -> Result<ModelDir> {
    let out = list_dir(root)?;
    check_shard_indexes(root, &out)?;
    Ok(out)
}

/// `scan_dir` without the completeness checks: for a directory whose files are checked
/// otherwise (a base, whose tensors a patch checks by their md5 receipts; a source compared
/// file by file).
pub fn list_dir(root: &Path) -> Result<ModelDir> {
    let mut out = ModelDir::default();
    walk(root, Path::new(""), &mut out)?;
    out.weights.sort();
    out.side_files.sort();
    out.skipped.sort();
    if out.weights.is_empty() {
        return Err(Error::invalid(
            root,
            "directory contains no .safetensors files",
        ));
    }
    Ok(out)
}

/// Larger than any real shard index (a few hundred KiB for the largest models).
const MAX_SHARD_INDEX: u64 = 64 << 20;

/// A sharded checkpoint's index (`*.safetensors.index.json`) names every shard in its
/// `weight_map`, and shard names (`model-00002-of-00003.safetensors`) count them: one named
/// but absent means the model is incomplete (an interrupted download), which must not pass
/// for a smaller model. An index that does not read as one is refused too, since what it
/// should vouch for cannot be checked.
fn check_shard_indexes(root: &Path, dir: &ModelDir) -> Result<()> {
    let weights: std::collections::HashSet<&Path> =
        dir.weights.iter().map(PathBuf::as_path).collect();
    for rel in &dir.side_files {
        let is_index = rel
            .file_name()
            .is_some_and(|n| n.to_string_lossy().ends_with(".safetensors.index.json"));
        if !is_index {
            continue;
        }
        let path = root.join(rel);
        let unreadable = |why: &str| {
            Error::invalid(
                &path,
                format!(
                    "is not a readable shard index ({why}): the shards it lists cannot be \
                     checked for completeness; repair or remove it"
                ),
            )
        };
        let len = fs::metadata(&path).map_err(|e| Error::io(&path, e))?.len();
        if len > MAX_SHARD_INDEX {
            return Err(unreadable("larger than any shard index"));
        }
        let bytes = fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let index: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| unreadable(&format!("not JSON: {e}")))?;
        let Some(map) = index.get("weight_map").and_then(|m| m.as_object()) else {
            return Err(unreadable("no weight_map object"));
        };
        let at = rel.parent().unwrap_or(Path::new(""));
        let mut named: Vec<&str> = map.values().filter_map(|v| v.as_str()).collect();
        named.sort_unstable();
        named.dedup();
        if let Some(missing) = named
            .iter()
            .find(|f| !weights.contains(at.join(f).as_path()))
        {
            return Err(Error::invalid(
                root.join(at).join(missing),
                format!(
                    "is a shard that {} names, and it is missing: the model is incomplete",
                    rel.display()
                ),
            ));
        }
    }
    check_shard_numbers(root, &dir.weights, &weights)
}

/// Shards named as Hugging Face names them, `PREFIX-0000K-of-0000N.safetensors` (five digits
/// each), must all be there: K from 1 to N for each prefix, count and folder (0 to N-1 where
/// the numbering starts at 0). Other numberings are not a convention anyone checks against,
/// so they are left alone.
fn check_shard_numbers(
    root: &Path,
    weights: &[PathBuf],
    present: &std::collections::HashSet<&Path>,
) -> Result<()> {
    use std::collections::BTreeMap;
    let mut sets: BTreeMap<(&Path, &str, u64), Vec<u64>> = BTreeMap::new();
    for rel in weights {
        if let Some((prefix, k, total)) = rel
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(shard_number)
        {
            let at = rel.parent().unwrap_or(Path::new(""));
            sets.entry((at, prefix, total)).or_default().push(k);
        }
    }
    for ((at, prefix, total), numbers) in sets {
        let first = u64::from(!numbers.contains(&0));
        for k in first..first + total {
            let name = format!("{prefix}-{k:05}-of-{total:05}.safetensors");
            if !present.contains(at.join(&name).as_path()) {
                return Err(Error::invalid(
                    root.join(at).join(&name),
                    format!(
                        "is missing: the shards' names count {total} and the directory holds \
                         fewer (the model is incomplete)"
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// `model-00002-of-00003.safetensors` -> ("model", 2, 3): prefix, shard number and count,
/// in Hugging Face's form (five digits each, the number below 100000 and at most the count).
fn shard_number(name: &str) -> Option<(&str, u64, u64)> {
    let stem = name.strip_suffix(".safetensors")?;
    let (head, total) = stem.rsplit_once("-of-")?;
    let (prefix, k) = head.rsplit_once('-')?;
    let five = |s: &str| s.len() == 5 && s.bytes().all(|b| b.is_ascii_digit());
    if prefix.is_empty() || !five(k) || !five(total) {
        return None;
    }
    let (kn, tn): (u64, u64) = (k.parse().ok()?, total.parse().ok()?);
    (tn >= 1 && kn <= tn).then_some((prefix, kn, tn))
}

fn walk(root: &Path, rel: &Path, out: &mut ModelDir) -> Result<()> {
    let dir = root.join(rel);
    let entries = fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(&dir, e))?;
        let name = entry.file_name();
        let path = rel.join(&name);
        if name.to_string_lossy().starts_with('.') {
            out.skipped.push(path);
            continue;
        }
        let ty = entry
            .file_type()
            .map_err(|e| Error::io(root.join(&path), e))?;
        if ty.is_dir() {
            walk(root, &path, out)?;
        } else if path.extension().is_some_and(|e| e == "safetensors") {
            out.weights.push(path);
        } else {
            out.side_files.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_numbers_parse_only_the_hugging_face_pattern() {
        assert_eq!(
            shard_number("model-00002-of-00003.safetensors"),
            Some(("model", 2, 3))
        );
        assert_eq!(
            shard_number("shard-00000-of-00002.safetensors"),
            Some(("shard", 0, 2))
        );
        for name in [
            "model.safetensors",
            "model-00004-of-00003.safetensors",
            "model-0002-of-00003.safetensors",
            "model-1-of-10.safetensors",
            "epoch-05-of-10.safetensors",
            "-00001-of-00002.safetensors",
            "model-00001-of-00002.bin",
            "model-0000a-of-00002.safetensors",
            "model-00001-of-00000.safetensors",
        ] {
            assert_eq!(shard_number(name), None, "{name}");
        }
    }

    /// Complete sets pass whichever number they start from; a gap is refused.
    #[test]
    fn shard_sets_are_checked_from_their_first_number() {
        let dir = tempfile::tempdir().expect("tmp");
        let check = |names: &[&str]| {
            let weights: Vec<PathBuf> = names.iter().map(PathBuf::from).collect();
            let present = weights.iter().map(PathBuf::as_path).collect();
            check_shard_numbers(dir.path(), &weights, &present)
        };
        check(&[
            "m-00001-of-00002.safetensors",
            "m-00002-of-00002.safetensors",
        ])
        .expect("1..2");
        check(&[
            "m-00000-of-00002.safetensors",
            "m-00001-of-00002.safetensors",
        ])
        .expect("0..1");
        check(&["m-1-of-10.safetensors", "epoch-05-of-10.safetensors"]).expect("not the pattern");
        let e = check(&[
            "m-00001-of-00003.safetensors",
            "m-00003-of-00003.safetensors",
        ])
        .expect_err("a gap");
        assert!(e.to_string().contains("m-00002-of-00003"), "{e}");
        let e = check(&["m-00001-of-00002.safetensors"]).expect_err("a lone first shard");
        assert!(e.to_string().contains("m-00002-of-00002"), "{e}");
    }
}
