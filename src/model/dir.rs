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
    Ok(out)
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
