//! The 12-byte packed scales of Q4_K and Q5_K: 8 six-bit sub-block scales and 8 six-bit
//! sub-block minimums (ggml's `get_scale_min_k4` layout):
//!
//! ```text
//! byte 0..4 : scale j (low 6 bits)      | scale j+4 bits 4..6 in bits 6..8
//! byte 4..8 : min j   (low 6 bits)      | min j+4   bits 4..6 in bits 6..8
//! byte 8..12: scale j+4 bits 0..4 (low) | min j+4 bits 0..4 (high nibble)   (j = 0..4)
//! ```

/// Bytes of the packed scales and minimums.
pub(crate) const K_SCALE_SIZE: usize = 12;

/// ggml's `get_scale_min_k4`: scale and minimum of sub-block `j` (0..8), each 0..=63.
#[inline(always)]
pub(crate) fn get_scale_min_k4(j: usize, q: &[u8; K_SCALE_SIZE]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// All 8 scales and all 8 minimums at once (the word trick of llama.cpp's kernels; the same
/// values as [`get_scale_min_k4`], checked in the tests).
#[inline(always)]
pub(crate) fn unpack_scales_mins(q: &[u8; K_SCALE_SIZE]) -> ([u8; 8], [u8; 8]) {
    const M6: u32 = 0x3f3f_3f3f;
    const M4: u32 = 0x0f0f_0f0f;
    const M2: u32 = 0x0303_0303;
    let w = |k: usize| u32::from_le_bytes([q[4 * k], q[4 * k + 1], q[4 * k + 2], q[4 * k + 3]]);
    let (a, b, c) = (w(0), w(1), w(2));
    let sc_lo = a & M6;
    let sc_hi = (c & M4) | (((a >> 6) & M2) << 4);
    let m_lo = b & M6;
    let m_hi = ((c >> 4) & M4) | (((b >> 6) & M2) << 4);
    let join = |lo: u32, hi: u32| {
        let (l, h) = (lo.to_le_bytes(), hi.to_le_bytes());
        [l[0], l[1], l[2], l[3], h[0], h[1], h[2], h[3]]
    };
    (join(sc_lo, sc_hi), join(m_lo, m_hi))
}

/// The inverse of [`get_scale_min_k4`] for values 0..=63, in the order
/// `quantize_row_q4_K_ref` writes the bytes.
pub(crate) fn pack_scales_mins(ls: &[u8; 8], lm: &[u8; 8]) -> [u8; K_SCALE_SIZE] {
    let mut s = [0u8; K_SCALE_SIZE];
    for j in 0..8 {
        let (l, m) = (ls[j], lm[j]);
        if j < 4 {
            s[j] = l;
            s[j + 4] = m;
        } else {
            s[j + 4] = (l & 0x0f) | ((m & 0x0f) << 4);
            s[j - 4] |= (l >> 4) << 6;
            s[j] |= (m >> 4) << 6;
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::tests_util::Rng;

    #[test]
    fn pack_unpack_round_trip_and_word_trick() {
        let mut rng = Rng::new(77);
        for round in 0..2000 {
            let ls: [u8; 8] = std::array::from_fn(|_| (rng.next_u64() % 64) as u8);
            let lm: [u8; 8] = std::array::from_fn(|_| (rng.next_u64() % 64) as u8);
            let q = pack_scales_mins(&ls, &lm);
            for j in 0..8 {
                assert_eq!(
                    get_scale_min_k4(j, &q),
                    (ls[j], lm[j]),
                    "round {round} j {j}"
                );
            }
            assert_eq!(unpack_scales_mins(&q), (ls, lm));
            // Any 12 bytes (not only packed ones): the word trick reads what ggml reads.
            let r: [u8; 12] = std::array::from_fn(|_| rng.next_u64() as u8);
            let (s, m) = unpack_scales_mins(&r);
            for j in 0..8 {
                assert_eq!(get_scale_min_k4(j, &r), (s[j], m[j]));
            }
        }
        // Hand-checked: scale 4 = 0b10_0101 (low nibble in byte 8, top bits in byte 0).
        let mut ls = [0u8; 8];
        ls[4] = 0b10_0101;
        let q = pack_scales_mins(&ls, &[0; 8]);
        assert_eq!((q[0], q[8]), (0b1000_0000, 0b0101));
    }
}
