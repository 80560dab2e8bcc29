//! Routing artifacts as NumPy `.npy` files: the centroids and hyperplanes
//! of a vector snapshot (`vector_meta/run_id=<run>/centroids.npy`), as the
//! reference writes them with `np.save`.
//!
//! Only what those artifacts use is read: format versions 1.0 to 3.0, a
//! C-ordered two-dimensional array of little-endian `f4` or `f8` (the
//! reference writes `<f4`; arrays a user supplied keep their own dtype).
//! Everything is checked against the bytes: the header's length, the
//! shape against the data that follows, sizes against overflow. A hostile
//! or broken file is one [`Error::Corrupt`], never a panic or an
//! allocation the file did not pay for.
//!
//! [`write_f32`] writes version 1.0 `<f4`, the form the reference writes.

use crate::error::{Error, Result};

const MAGIC: &[u8] = b"\x93NUMPY";
/// The largest header accepted; NumPy's own are well under 1 KiB.
const MAX_HEADER: usize = 64 * 1024;

/// A row-major matrix of `rows` x `cols` values, widened to `f32` (the
/// precision the reference routes in).
#[derive(Debug, Clone, PartialEq)]
pub struct Matrix {
    /// Rows (centroids, hyperplanes).
    pub rows: usize,
    /// Columns (the vector dimension).
    pub cols: usize,
    /// `rows * cols` values, row after row.
    pub values: Vec<f32>,
}

impl Matrix {
    /// Row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.values[i * self.cols..(i + 1) * self.cols]
    }
}

/// Reads a two-dimensional `.npy` array; `location` names it in errors.
pub fn read(bytes: &[u8], location: &str) -> Result<Matrix> {
    let bad = |reason: String| Error::Corrupt {
        what: "routing artifact (.npy)",
        location: location.to_string(),
        reason,
    };
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err(bad("not a NumPy .npy file (no \\x93NUMPY magic)".into()));
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err(bad("truncated header length".into()));
            }
            (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            )
        }
        v => {
            return Err(bad(format!(
                "format version {v}.{} is not one this build reads",
                bytes[7]
            )));
        }
    };
    if header_len > MAX_HEADER || start + header_len > bytes.len() {
        return Err(bad(format!(
            "a header of {header_len} bytes in a file of {}",
            bytes.len()
        )));
    }
    let header =
        std::str::from_utf8(&bytes[start..start + header_len]).map_err(|_| bad("the header is not text".into()))?;
    let descr = dict_value(header, "descr").ok_or_else(|| bad(format!("no 'descr' in header {header:?}")))?;
    let width = match descr.trim_matches(|c| c == '\'' || c == '"') {
        "<f4" => 4,
        "<f8" => 8,
        other => {
            return Err(bad(format!(
                "dtype {other} (only little-endian float32 and float64 are read)"
            )));
        }
    };
    let fortran = dict_value(header, "fortran_order").ok_or_else(|| bad("no 'fortran_order' in header".into()))?;
    if fortran.trim() != "False" {
        return Err(bad("Fortran-ordered arrays are not read".into()));
    }
    let shape = dict_value(header, "shape").ok_or_else(|| bad("no 'shape' in header".into()))?;
    let dims: Vec<usize> = shape
        .trim()
        .trim_start_matches('(')
        .trim_end_matches(')')
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().map_err(|_| bad(format!("shape {shape}"))))
        .collect::<Result<_>>()?;
    let [rows, cols] = dims[..] else {
        return Err(bad(format!("shape {shape} is not two-dimensional")));
    };
    let data = &bytes[start + header_len..];
    let want = rows
        .checked_mul(cols)
        .and_then(|n| n.checked_mul(width))
        .ok_or_else(|| bad(format!("shape {shape} is too large")))?;
    if data.len() != want {
        return Err(bad(format!(
            "shape {shape} of {width}-byte values needs {want} data bytes, the file has {}",
            data.len()
        )));
    }
    let values = if width == 4 {
        data.chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    } else {
        data.chunks_exact(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
            .collect()
    };
    Ok(Matrix { rows, cols, values })
}

/// The text after `'key':` in a header dict, up to the next top-level
/// comma (a tuple's commas are inside its parentheses).
fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let at = header
        .find(&format!("'{key}':"))
        .map(|i| i + key.len() + 3)
        .or_else(|| header.find(&format!("\"{key}\":")).map(|i| i + key.len() + 3))?;
    let rest = &header[at..];
    let mut depth = 0usize;
    for (i, c) in rest.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' | '}' if depth == 0 => return Some(rest[..i].trim()),
            _ => {}
        }
    }
    None
}

/// `m` as a version 1.0 `.npy` file of `<f4`, as `np.save` writes it (the
/// header padded with spaces to a multiple of 64 bytes, ending in `\n`).
pub fn write_f32(m: &Matrix) -> Vec<u8> {
    let dict = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({}, {}), }}",
        m.rows, m.cols
    );
    let unpadded = MAGIC.len() + 4 + dict.len() + 1;
    let header_len = dict.len() + 1 + (64 - unpadded % 64) % 64;
    let mut out = Vec::with_capacity(10 + header_len + m.values.len() * 4);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header_len as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out.resize(10 + header_len - 1, b' ');
    out.push(b'\n');
    for v in &m.values {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
        let dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}\n");
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&[1, 0]);
        out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
        out.extend_from_slice(dict.as_bytes());
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn writes_what_it_reads_with_numpys_padding() {
        let m = Matrix {
            rows: 2,
            cols: 3,
            values: vec![1.0, -2.5, 3.0, 0.0, f32::MIN_POSITIVE, 7.25],
        };
        let bytes = write_f32(&m);
        assert_eq!((bytes.len() - 6 * 4) % 64, 0, "header padded to 64 bytes");
        assert_eq!(&bytes[8..10], &118u16.to_le_bytes());
        assert_eq!(bytes[10 + 117], b'\n');
        assert_eq!(read(&bytes, "m").unwrap(), m);
    }

    #[test]
    fn reads_f8_as_f32() {
        let data: Vec<u8> = [0.5f64, -1.25].iter().flat_map(|v| v.to_le_bytes()).collect();
        let m = read(&npy("<f8", "(1, 2)", &data), "m").unwrap();
        assert_eq!(m.values, vec![0.5, -1.25]);
        assert_eq!(m.row(0), &[0.5, -1.25]);
    }

    #[test]
    fn broken_files_are_errors_naming_the_problem() {
        let four = [0u8; 16];
        for (bytes, want) in [
            (b"PK\x03\x04 not numpy".to_vec(), "magic"),
            (
                npy("<f4", "(2, 2)", &four[..12]),
                "needs 16 data bytes, the file has 12",
            ),
            (npy("<f4", "(2, 2)", &[0u8; 20]), "the file has 20"),
            (npy(">f4", "(2, 2)", &four), "dtype >f4"),
            (npy("<i8", "(2, 1)", &four), "dtype <i8"),
            (npy("<f4", "(4,)", &four), "not two-dimensional"),
            (npy("<f4", "(4611686018427387904, 4)", &four), "too large"),
        ] {
            let e = read(&bytes, "s3://b/p/centroids.npy").unwrap_err().to_string();
            assert!(e.contains(want) && e.contains("centroids.npy"), "{want}: {e}");
        }
        let mut long = npy("<f4", "(1, 1)", &[0; 4]);
        long[8..10].copy_from_slice(&u16::MAX.to_le_bytes());
        assert!(
            read(&long, "x")
                .unwrap_err()
                .to_string()
                .contains("header of 65535 bytes")
        );
    }
}
