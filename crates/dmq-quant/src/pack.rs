//! Bit packing of unsigned codes at 1, 2, 4 and 8 bits.
//!
//! Layout (EfficientDM's nibble order, docs/algorithms.md §9.4): with `k = 8/b` codes per byte,
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

/// Number of bytes holding `n` codes of `bits` (storage) bits (never overflows).
pub fn packed_len(n: usize, bits: u32) -> usize {
    n.div_ceil((8 / storage_bits(bits)) as usize)
}

/// What [`check_packed`] found wrong with packed codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PackedDefect {
    /// The byte count is not [`packed_len`]`(n, bits)`.
    Length {
        /// Bytes present.
        got: usize,
        /// Bytes needed.
        need: usize,
    },
    /// Code `index` is `code ≥ 2^bits` (possible for 3, 5, 6 and 7 bits, stored wider).
    CodeTooLarge {
        /// Element index.
        index: usize,
        /// The stored code.
        code: u8,
    },
    /// The unused bits after the last code of the trailing byte are not zero.
    Padding {
        /// The trailing byte.
        byte: u8,
    },
}

/// Checks packed codes without unpacking them: exactly [`packed_len`]`(n, bits)` bytes,
/// every code `< 2^bits`, and zero padding bits in the trailing byte. `bits` must be in
/// 1..=8 (a checked spec).
pub fn check_packed(packed: &[u8], bits: u32, n: usize) -> std::result::Result<(), PackedDefect> {
    let need = packed_len(n, bits);
    if packed.len() != need {
        return Err(PackedDefect::Length {
            got: packed.len(),
            need,
        });
    }
    let sb = storage_bits(bits);
    if sb == 8 {
        return Ok(());
    }
    let per = (8 / sb) as usize;
    let mask = ((1u16 << sb) - 1) as u8;
    if bits < sb {
        for (b, &byte) in packed.iter().enumerate() {
            for j in 0..per {
                let index = b * per + j;
                if index >= n {
                    break;
                }
                let code = (byte >> (sb as usize * j)) & mask;
                if code >> bits != 0 {
                    return Err(PackedDefect::CodeTooLarge { index, code });
                }
            }
        }
    }
    let used = n % per;
    if used != 0 {
        let byte = packed[need - 1];
        if byte >> (sb as usize * used) != 0 {
            return Err(PackedDefect::Padding { byte });
        }
    }
    Ok(())
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
