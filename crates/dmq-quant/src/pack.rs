//! Bit packing of unsigned codes at 1, 2, 4 and 8 bits.
//!
//! Layout (EfficientDM's nibble order, ALGORITHMS.md §9.4): with `k = 8/b` codes per byte,
//! code `i` goes to byte `i / k` at bit offset `b·(i mod k)` (least significant bits first).
//! A trailing partial byte is zero-padded.

use crate::error::{QuantError, Result};

fn check_pack_bits(bits: u32) -> Result<()> {
    if matches!(bits, 1 | 2 | 4 | 8) {
        Ok(())
    } else {
        Err(QuantError::InvalidBits {
            bits,
            min: 1,
            max: 8,
            context: "bit packing (supported widths: 1, 2, 4, 8; wider codes of 3, 5, 6, 7 bits \
                      are stored in the next supported width)"
                .into(),
        })
    }
}

/// Storage width used for codes of `bits` bits: the next of 1, 2, 4, 8.
pub fn storage_bits(bits: u32) -> u32 {
    match bits {
        0 | 1 => 1,
        2 => 2,
        3 | 4 => 4,
        _ => 8,
    }
}

/// Number of bytes holding `n` codes of `bits` (storage) bits.
pub fn packed_len(n: usize, bits: u32) -> usize {
    (n * storage_bits(bits) as usize).div_ceil(8)
}

/// Packs codes (each `< 2^bits`) into bytes. Widths 3, 5, 6, 7 are stored at the next
/// supported width. A code that does not fit is an error.
pub fn pack_codes(codes: &[u8], bits: u32) -> Result<Vec<u8>> {
    if !(1..=8).contains(&bits) {
        return Err(QuantError::InvalidBits {
            bits,
            min: 1,
            max: 8,
            context: "pack_codes".into(),
        });
    }
    let sb = storage_bits(bits);
    check_pack_bits(sb)?;
    if bits < 8
        && let Some((i, &c)) = codes.iter().enumerate().find(|&(_, &c)| c >> bits != 0)
    {
        return Err(QuantError::ShapeMismatch {
            expected: format!("codes < 2^{bits}"),
            got: format!("code {c} at index {i}"),
            context: "pack_codes".into(),
        });
    }
    if sb == 8 {
        return Ok(codes.to_vec());
    }
    let per = (8 / sb) as usize;
    let mut out = vec![0u8; packed_len(codes.len(), bits)];
    for (i, &c) in codes.iter().enumerate() {
        out[i / per] |= c << (sb as usize * (i % per));
    }
    Ok(out)
}

/// Unpacks `n` codes of `bits` bits. Too few bytes is an error.
pub fn unpack_codes(packed: &[u8], bits: u32, n: usize) -> Result<Vec<u8>> {
    if !(1..=8).contains(&bits) {
        return Err(QuantError::InvalidBits {
            bits,
            min: 1,
            max: 8,
            context: "unpack_codes".into(),
        });
    }
    let sb = storage_bits(bits);
    let need = packed_len(n, bits);
    if packed.len() < need {
        return Err(QuantError::ShapeMismatch {
            expected: format!("{need} packed bytes for {n} codes of {bits} bits"),
            got: packed.len().to_string(),
            context: "unpack_codes".into(),
        });
    }
    if sb == 8 {
        return Ok(packed[..n].to_vec());
    }
    let per = (8 / sb) as usize;
    let mask = ((1u16 << sb) - 1) as u8;
    Ok((0..n)
        .map(|i| (packed[i / per] >> (sb as usize * (i % per))) & mask)
        .collect())
}
