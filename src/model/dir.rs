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

/// Lists a model directory. Hidden entries (`.git`, `.cache`) are skipped.
pub fn scan_dir(root: &Path) -> Result<ModelDir> {
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
    check_shard_indexes(root, &out)?;
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

/// Shards named `PREFIX-0000K-of-0000N.safetensors` (Hugging Face's sharding) must all be
/// there, K from 1 to N, for each prefix, count and folder.
fn check_shard_numbers(
    root: &Path,
    weights: &[PathBuf],
    present: &std::collections::HashSet<&Path>,
) -> Result<()> {
    for rel in weights {
        let Some((prefix, width, total)) = rel
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(shard_number)
            .map(|(prefix, _, width, total)| (prefix, width, total))
        else {
            continue;
        };
        let at = rel.parent().unwrap_or(Path::new(""));
        for k in 1..=total {
            let name = format!("{prefix}-{k:0width$}-of-{total:0width$}.safetensors");
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

/// `model-00002-of-00003.safetensors` -> ("model", 2, 5, 3): prefix, shard number, digits,
/// shard count. Both numbers have the same number of digits, and 1 <= K <= N.
fn shard_number(name: &str) -> Option<(&str, u64, usize, u64)> {
    let stem = name.strip_suffix(".safetensors")?;
    let (head, total) = stem.rsplit_once("-of-")?;
    let (prefix, k) = head.rsplit_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.len() <= 9 && s.bytes().all(|b| b.is_ascii_digit());
    if prefix.is_empty() || !digits(k) || !digits(total) || k.len() != total.len() {
        return None;
    }
    let (kn, tn): (u64, u64) = (k.parse().ok()?, total.parse().ok()?);
    (1..=tn).contains(&kn).then_some((prefix, kn, k.len(), tn))
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
            Some(("model", 2, 5, 3))
        );
        assert_eq!(
            shard_number("diffusion_pytorch_model-1-of-2.safetensors"),
            Some(("diffusion_pytorch_model", 1, 1, 2))
        );
        for name in [
            "model.safetensors",
            "model-00004-of-00003.safetensors",
            "model-00000-of-00003.safetensors",
            "model-0002-of-00003.safetensors",
            "-00001-of-00002.safetensors",
            "model-00001-of-00002.bin",
            "model-0000a-of-00002.safetensors",
        ] {
            assert_eq!(shard_number(name), None, "{name}");
        }
    }
}
