//! Reading safetensors files: memory-mapped, validated before any slice is taken, tensors in
//! file order. The exact header bytes are kept so a decompressed file can be byte-identical.

use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::tensor::{Dtype, SafeTensors};

use crate::codec::ElemKind;
use crate::error::{Error, Result};

/// One tensor's place in a safetensors file.
#[derive(Debug, Clone)]
pub struct TensorMeta {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Byte range within the data section (after the header).
    pub start: usize,
    pub end: usize,
}

impl TensorMeta {
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// An opened, validated safetensors file.
pub struct SafetensorsFile {
    pub path: PathBuf,
    mmap: Option<Mmap>,
    /// The JSON header exactly as stored (including any padding).
    pub header: Vec<u8>,
    pub tensors: Vec<TensorMeta>,
    pub file_size: u64,
}

/// The safetensors dtype name, as written in headers ("BF16", "F8_E4M3", ...).
pub fn dtype_name(d: Dtype) -> String {
    format!("{d:?}")
}

pub fn parse_dtype(s: &str) -> Option<Dtype> {
    serde_json::from_value(serde_json::Value::String(s.to_string())).ok()
}

/// How the codecs should see a dtype.
pub fn elem_kind(d: Dtype) -> ElemKind {
    match d {
        Dtype::BF16 => ElemKind::Bf16,
        Dtype::F16 => ElemKind::F16,
        Dtype::F32 => ElemKind::F32,
        other => {
            let bits = other.bitsize();
            if bits <= 8 {
                // Sub-byte types (F4, F6) are coded over their packed bytes.
                ElemKind::Byte
            } else {
                ElemKind::Other(bits / 8)
            }
        }
    }
}

/// What a safetensors parse error means for this file, in its own terms where the crate's
/// words are vague: which tensor's offsets are wrong, or how much of the data is missing.
/// The first key a JSON header object holds twice (the safetensors reader keeps one of them
/// and then finds the offsets do not add up, which would be a puzzling error on its own).
fn duplicate_name(header: &[u8]) -> Option<String> {
    use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
    struct Keys;
    impl<'de> Visitor<'de> for Keys {
        type Value = Option<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(
            self,
            mut map: A,
        ) -> std::result::Result<Option<String>, A::Error> {
            let mut seen = std::collections::HashSet::new();
            while let Some((key, IgnoredAny)) = map.next_entry::<String, IgnoredAny>()? {
                if !seen.insert(key.clone()) {
                    return Ok(Some(key));
                }
            }
            Ok(None)
        }
    }
    serde_json::Deserializer::from_slice(header)
        .deserialize_map(Keys)
        .ok()
        .flatten()
}

fn explain(e: &safetensors::SafeTensorError, file: &[u8]) -> String {
    use safetensors::SafeTensorError as E;
    let generic = e.to_string();
    let Some(n) = file
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    else {
        return generic;
    };
    let data_len = (file.len() as u64).saturating_sub(8).saturating_sub(n);
    // The header's bytes where its length fits in the file (a lying length is what the
    // errors below explain).
    let header_bytes = usize::try_from(n)
        .ok()
        .and_then(|n| n.checked_add(8))
        .and_then(|end| file.get(8..end));
    if let Some(name) = header_bytes.and_then(duplicate_name) {
        return format!("names tensor `{name}` twice in its header ({generic})");
    }
    if matches!(e, E::InvalidHeaderLength) {
        return format!(
            "header length {n} does not fit in the file ({} bytes): truncated, or not safetensors",
            file.len()
        );
    }
    if !matches!(
        e,
        E::MetadataIncompleteBuffer | E::TensorInvalidInfo | E::ValidationOverflow
    ) {
        return generic;
    }
    let Some(header) =
        header_bytes.and_then(|h| serde_json::from_slice::<serde_json::Value>(h).ok())
    else {
        return generic;
    };
    let mut declared_end = 0u64;
    for (name, t) in header.as_object().into_iter().flatten() {
        if name == "__metadata__" {
            continue;
        }
        let offsets: Option<Vec<u64>> = t["data_offsets"]
            .as_array()
            .map(|a| a.iter().filter_map(serde_json::Value::as_u64).collect());
        let (Some([start, end]), Ok(dtype)) = (
            offsets
                .as_deref()
                .and_then(|o| <[u64; 2]>::try_from(o).ok()),
            serde_json::from_value::<Dtype>(t["dtype"].clone()),
        ) else {
            return format!("tensor '{name}': its dtype or data_offsets are malformed");
        };
        declared_end = declared_end.max(end);
        let shape: Option<Vec<u64>> = t["shape"]
            .as_array()
            .map(|a| a.iter().filter_map(serde_json::Value::as_u64).collect());
        let need = shape
            .as_deref()
            .and_then(|d| d.iter().try_fold(1u64, |p, &x| p.checked_mul(x)))
            .and_then(|elems| elems.checked_mul(dtype.bitsize() as u64))
            .map(|bits| bits.div_ceil(8));
        match need {
            None => return format!("tensor '{name}': its shape overflows (absurd sizes)"),
            Some(need) if end < start || end - start != need => {
                return format!(
                    "tensor '{name}': its shape and dtype need {need} bytes, its data_offsets [{start}, {end}] give {}",
                    end.saturating_sub(start)
                )
            }
            Some(_) => {}
        }
    }
    if declared_end > data_len {
        format!(
            "truncated: the header declares {declared_end} bytes of tensor data, the file holds {data_len}"
        )
    } else if declared_end < data_len {
        format!(
            "{} bytes after the last tensor's data (the header declares {declared_end} of {data_len})",
            data_len - declared_end
        )
    } else {
        generic
    }
}

impl SafetensorsFile {
    pub fn open(path: &Path) -> Result<SafetensorsFile> {
        if path.is_dir() {
            return Err(Error::invalid(
                path,
                "is a directory, expected a .safetensors file",
            ));
        }
        let file = crate::fsutil::open_regular(path)?;
        let meta = file.metadata().map_err(|e| Error::io(path, e))?;
        if crate::format::is_container(path) {
            return Err(Error::invalid(
                path,
                "is a bigsmall container, not a .safetensors file (decompress it first)",
            ));
        }
        let bad = |why: String| Error::BadSafetensors {
            path: path.to_path_buf(),
            why,
        };
        if meta.len() < 8 {
            return Err(bad(format!("only {} bytes long", meta.len())));
        }
        // SAFETY: the map is read-only; bigsmall never writes to its inputs. Changed bytes are
        // only wrong data; another process truncating it while mapped makes a read past its new
        // end a SIGBUS, which `fsutil::stop_on_sigbus` turns into a one-line error.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let (n, metadata) =
            SafeTensors::read_metadata(&mmap).map_err(|e| bad(explain(&e, &mmap)))?;
        let mut tensors = Vec::new();
        let infos = metadata.tensors();
        for name in metadata.offset_keys() {
            let info = infos[&name];
            tensors.push(TensorMeta {
                name,
                dtype: info.dtype,
                shape: info.shape.clone(),
                start: info.data_offsets.0,
                end: info.data_offsets.1,
            });
        }
        // Empty tensors share offsets; order ties by name so every parse agrees.
        tensors.sort_by(|a, b| (a.start, a.end, &a.name).cmp(&(b.start, b.end, &b.name)));
        let header = mmap[8..8 + n].to_vec();
        Ok(SafetensorsFile {
            path: path.to_path_buf(),
            mmap: Some(mmap),
            header,
            tensors,
            file_size: meta.len(),
        })
    }

    /// Offset of the data section within the file.
    pub fn data_offset(&self) -> usize {
        8 + self.header.len()
    }

    /// The whole file's bytes.
    pub fn bytes(&self) -> &[u8] {
        self.mmap.as_deref().unwrap_or(&[])
    }

    pub fn tensor_bytes(&self, t: &TensorMeta) -> &[u8] {
        let base = self.data_offset();
        &self.bytes()[base + t.start..base + t.end]
    }

    /// Tells the kernel the given file range is done with, so resident memory stays bounded by
    /// the working window rather than the file size.
    pub fn release(&self, file_start: usize, file_end: usize) {
        if let Some(m) = &self.mmap {
            crate::fsutil::release_pages(m, file_start, file_end);
        }
    }
}
