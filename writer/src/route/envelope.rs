//! The envelope in which a row's vector travels inside its value, from
//! where rows are encoded ([`crate::route::vector`]) to the shard builder
//! that takes it apart (the SQLite backend), through the collector, its
//! sort and its spills, which see only bytes:
//!
//! ```text
//! kv length (u32 LE) | kv value | tag (u8)
//!   tag 0: no vector (skipped)
//!   tag 1: id length (u32 LE) | id (vec_id_map text)
//!          | payload length (u32 LE; u32::MAX: no payload) | payload
//!          | dim x f32 LE
//! ```

/// Tag of a row whose vector was skipped (`on_invalid = "skip"`).
const NO_VECTOR: u8 = 0;
/// Tag of a row that carries a vector.
const VECTOR: u8 = 1;
/// Payload length of a vector without payload.
pub const NO_PAYLOAD: u32 = u32::MAX;

/// Starts a row's envelope with its kv value.
pub fn push_value(data: &mut Vec<u8>, value: &[u8]) {
    data.extend_from_slice(&(value.len() as u32).to_le_bytes());
    data.extend_from_slice(value);
}

/// Ends a row's envelope without a vector.
pub fn push_no_vector(data: &mut Vec<u8>) {
    data.push(NO_VECTOR);
}

/// Ends a row's envelope with its vector.
pub fn push_vector(data: &mut Vec<u8>, id: &str, payload: Option<&[u8]>, vector: &[f32]) {
    data.push(VECTOR);
    data.extend_from_slice(&(id.len() as u32).to_le_bytes());
    data.extend_from_slice(id.as_bytes());
    match payload {
        Some(p) => {
            data.extend_from_slice(&(p.len() as u32).to_le_bytes());
            data.extend_from_slice(p);
        }
        None => data.extend_from_slice(&NO_PAYLOAD.to_le_bytes()),
    }
    for x in vector {
        data.extend_from_slice(&x.to_le_bytes());
    }
}

/// One row's vector as the shard builder stores it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VectorRef<'a> {
    /// `vec_id_map.original_id`.
    pub id: &'a str,
    /// `vec_payloads.payload`, if the row has one.
    pub payload: Option<&'a str>,
    /// `dim` little-endian f32.
    pub vector: &'a [u8],
}

/// A wrapped value taken apart: the kv value and the vector, if any.
pub fn split_value(value: &[u8], dim: usize) -> std::result::Result<(&[u8], Option<VectorRef<'_>>), String> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> std::result::Result<&'a [u8], String> {
        if b.len() < n {
            return Err(format!("a wrapped value ends {} bytes early", n - b.len()));
        }
        let (head, tail) = b.split_at(n);
        *b = tail;
        Ok(head)
    }
    fn len(b: &mut &[u8]) -> std::result::Result<u32, String> {
        let raw = take(b, 4)?;
        Ok(u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]))
    }
    let mut b = value;
    let n = len(&mut b)? as usize;
    let kv = take(&mut b, n)?;
    let tag = take(&mut b, 1)?[0];
    if tag == NO_VECTOR {
        return Ok((kv, None));
    }
    let n = len(&mut b)? as usize;
    let id = std::str::from_utf8(take(&mut b, n)?).map_err(|e| e.to_string())?;
    let payload = match len(&mut b)? {
        NO_PAYLOAD => None,
        n => Some(std::str::from_utf8(take(&mut b, n as usize)?).map_err(|e| e.to_string())?),
    };
    let vector = take(&mut b, dim * 4)?;
    if !b.is_empty() {
        return Err(format!("a wrapped value has {} bytes too many", b.len()));
    }
    Ok((kv, Some(VectorRef { id, payload, vector })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_truncated_envelope_is_an_error_not_a_panic() {
        let mut data = Vec::new();
        push_value(&mut data, b"kv");
        push_vector(&mut data, "{\"v\": 1, \"t\": \"int\"}", None, &[1.0, 2.0]);
        assert!(split_value(&data, 2).is_ok());
        for cut in 0..data.len() {
            assert!(split_value(&data[..cut], 2).is_err(), "cut at {cut}");
        }
        assert!(split_value(&data, 3).is_err(), "a wrong dimension is noticed");
    }
}
