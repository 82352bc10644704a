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
/// `weight_map`: one named but absent means the model is incomplete (an interrupted
/// download), which must not pass for a smaller model. An index that does not read as one is
/// left alone: it is carried as a side file like any other.
fn check_shard_indexes(root: &Path, dir: &ModelDir) -> Result<()> {
    let weights: std::collections::HashSet<&Path> =
        dir.weights.iter().map(PathBuf::as_path).collect();
    for rel in &dir.side_files {
        let is_index = rel
            .file_name()
            .is_some_and(|n| n.to_string_lossy().ends_with(".safetensors.index.json"));
        let path = root.join(rel);
        if !is_index || fs::metadata(&path).map_or(true, |m| m.len() > MAX_SHARD_INDEX) {
            continue;
        }
        let index: Option<serde_json::Value> = fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let Some(map) = index
            .as_ref()
            .and_then(|i| i.get("weight_map"))
            .and_then(|m| m.as_object())
        else {
            continue;
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
    Ok(())
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
