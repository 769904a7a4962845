//! SIMD plumbing shared by the kernels: CPU feature detection, the fixed accumulation orders,
//! the numpy rounding rules lane-wise, and the AVX2 helpers. (The row loops and the choice of
//! instruction set are `dispatch.rs`.)
//!
//! The accumulation orders are part of the numerics contract, because the scalar references
//! (`vec_dot_scalar`) follow them step by step and tests assert exact equality:
//! - float rows (F32, F16, BF16 weights): 32 partial sums; element `i` is added into lane
//!   `i % 32` in increasing `i`; then [`reduce32`].
//! - block rows (the quantized families): integer dot product per block (exact), then that
//!   block's f32 term is added into lane `b % 8` for block `b`; then [`reduce8`].
//!
//! Every float step is a separate IEEE f32 multiply or add (Rust never contracts `a * b + c`
//! into an FMA), so the AVX2 build and the portable build give the same bits.
//! Missing lanes of a ragged last chunk are padded with zeros: they add `+0.0` to their lane,
//! which leaves it unchanged (a lane starting at `+0.0` can never become `-0.0`).

use std::simd::prelude::*;
use std::simd::Select;

/// Elements per float-row chunk (4 accumulators of 8 lanes, enough to hide add latency).
pub(crate) const FLOAT_LANES: usize = 32;
/// Blocks per block-row group (one f32x8 accumulator, one lane per block).
pub(crate) const BLOCK_LANES: usize = 8;

/// Fixed reduction of 8 partial sums: halves folded onto each other, then pairs.
#[inline(always)]
pub(crate) fn reduce8(v: [f32; 8]) -> f32 {
    let a = [v[0] + v[4], v[1] + v[5], v[2] + v[6], v[3] + v[7]];
    let b = [a[0] + a[2], a[1] + a[3]];
    b[0] + b[1]
}

/// Fixed reduction of 32 partial sums: lanes `j, j+8, j+16, j+24` first (as a pairwise tree),
/// then [`reduce8`].
#[inline(always)]
pub(crate) fn reduce32(acc: &[f32; FLOAT_LANES]) -> f32 {
    let v: [f32; 8] = std::array::from_fn(|j| (acc[j] + acc[8 + j]) + (acc[16 + j] + acc[24 + j]));
    reduce8(v)
}

/// An instruction-set level of the kernels, lowest first. Each level's kernels give the same
/// bits as the others (the numerics contract), so the level changes only speed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Plain std::simd, any CPU.
    Portable,
    /// AVX2 + FMA + F16C.
    Avx2,
    /// AVX-512 F/BW/VL/VNNI on top of AVX2.
    Avx512,
    /// AMX-INT8 tiles for matrix x matrix products, on top of AVX-512.
    Amx,
}

/// The variable that forces a lower level (for tests and comparisons).
pub const ISA_ENV: &str = "LLAMA_RS_ISA";

impl Level {
    pub const ALL: [Level; 4] = [Level::Portable, Level::Avx2, Level::Avx512, Level::Amx];

    pub fn name(self) -> &'static str {
        match self {
            Level::Portable => "portable",
            Level::Avx2 => "avx2",
            Level::Avx512 => "avx512",
            Level::Amx => "amx",
        }
    }

    /// What the level needs of the CPU, for messages.
    pub fn features(self) -> &'static str {
        match self {
            Level::Portable => "no particular instruction set",
            Level::Avx2 => "AVX2, FMA and F16C",
            Level::Avx512 => "AVX-512 F/BW/VL/VNNI, AVX2, FMA and F16C",
            Level::Amx => "AMX-INT8 (with the kernel's tile permission) and AVX-512",
        }
    }

    /// The highest level this CPU supports (detected once).
    pub fn cpu() -> Level {
        use std::sync::OnceLock;
        static CPU: OnceLock<Level> = OnceLock::new();
        *CPU.get_or_init(detect_cpu)
    }

    /// The level [`ISA_ENV`] asks for, if set: an error for an unknown name and for a level
    /// this CPU lacks.
    pub fn requested() -> Result<Option<Level>, String> {
        let Ok(v) = std::env::var(ISA_ENV) else {
            return Ok(None);
        };
        let names = Level::ALL.map(Level::name).join(", ");
        let want = match v.trim().to_ascii_lowercase().as_str() {
            "" => return Ok(None),
            s => Level::ALL
                .into_iter()
                .find(|l| l.name() == s)
                .ok_or_else(|| format!("{ISA_ENV}={v:?} is not a kernel level ({names})"))?,
        };
        if want > Level::cpu() {
            return Err(format!(
                "{ISA_ENV}={}: this CPU lacks {} (its level is {})",
                want.name(),
                want.features(),
                Level::cpu().name()
            ));
        }
        Ok(Some(want))
    }

    /// The level the kernels run at: the CPU's, or a valid [`ISA_ENV`] request (an invalid
    /// one is refused where models load, [`Level::requested`]; here it is ignored).
    pub fn active() -> Level {
        use std::sync::OnceLock;
        static ACTIVE: OnceLock<Level> = OnceLock::new();
        *ACTIVE.get_or_init(|| Level::requested().ok().flatten().unwrap_or(Level::cpu()))
    }
}

#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
fn detect_cpu() -> Level {
    let avx2 = is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c");
    let avx512 = avx2
        && is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512vnni");
    if avx512 && super::amx::cpu_has_amx() {
        Level::Amx
    } else if avx512 {
        Level::Avx512
    } else if avx2 {
        Level::Avx2
    } else {
        Level::Portable
    }
}

#[cfg(not(any(target_arch = "x86", target_arch = "x86_64")))]
fn detect_cpu() -> Level {
    Level::Portable
}

/// Whether the AVX2 kernels may run here (the CPU has them and [`ISA_ENV`] allows them).
#[inline(always)]
pub(crate) fn has_avx2() -> bool {
    Level::active() >= Level::Avx2
}

/// Whether the AMX tile kernels may run here (see `amx.rs`).
#[inline(always)]
pub(crate) fn has_amx() -> bool {
    Level::active() >= Level::Amx
}

/// Whether the AVX-512 kernels may run here: AVX-512 F, BW, VL and VNNI (`vpdpbusd`), on top
/// of everything [`has_avx2`] asks for, and allowed by [`ISA_ENV`].
#[inline(always)]
pub(crate) fn has_avx512() -> bool {
    Level::active() >= Level::Avx512
}

/// Whether the AVX-512 kernels may also use VBMI's byte permutes (`vpermt2b`): Ice Lake and
/// later Xeons, Zen 4 and later. Part of the AVX-512 level, not a level of its own: the
/// kernels that use it give the bits of those that do not.
#[inline(always)]
pub(crate) fn has_avx512_vbmi() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static VBMI: OnceLock<bool> = OnceLock::new();
        has_avx512() && *VBMI.get_or_init(|| is_x86_feature_detected!("avx512vbmi"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// How far ahead of the current read position the row kernels prefetch weights, into L2.
/// Generation streams every weight once from memory, and without the hint the cores left part
/// of their read bandwidth unused (7B-shaped Q4_0 at one thread on the Xeon: 1.5 tok/s without,
/// 2.2 with 2 KiB into L1, the best L1 distance since issue 7). Into L2, which keeps more lines
/// in flight, 8 KiB gave another 10% at one thread (TinyLlama and 7B shapes), the same at two.
pub(crate) const PREFETCH_AHEAD: usize = 8192;

/// The variable that turns the one-token repacked kernels' prefetch hints off (`0`) or on
/// (`1`) whatever the CPU ([`column_hints`]), for comparisons. Hints never change a result.
pub const PREFETCH_ENV: &str = "LLAMA_RS_PREFETCH";

/// What [`PREFETCH_ENV`] asks for, if set: an error for anything but `0` or `1`.
pub fn prefetch_requested() -> Result<Option<bool>, String> {
    match std::env::var(PREFETCH_ENV).as_deref().map(str::trim) {
        Err(_) | Ok("") => Ok(None),
        Ok("0") => Ok(Some(false)),
        Ok("1") => Ok(Some(true)),
        Ok(v) => Err(format!(
            "{PREFETCH_ENV}={v:?} must be 0 (no prefetch hints) or 1"
        )),
    }
}

/// Whether the one-token kernels over repacked weights send prefetch hints ([`column_hints`];
/// decided once): as [`PREFETCH_ENV`] says, else on except where the CPU's own prefetchers
/// stream those weights better alone ([`hints_help`], [`column_hints`]). An invalid [`PREFETCH_ENV`] is refused
/// where models load.
#[inline(always)]
pub fn prefetch_hints() -> bool {
    use std::sync::OnceLock;
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        prefetch_requested()
            .ok()
            .flatten()
            .unwrap_or_else(|| hints_help(&cpu_id()))
    })
}

/// The CPU's vendor string and family/model word (`cpuid` leaves 0 and 1), and whether it has
/// AVX-512 F (whatever [`ISA_ENV`] allows the kernels).
#[derive(Clone, Copy, Debug)]
pub(crate) struct CpuId {
    pub vendor: [u8; 12],
    pub signature: u32,
    pub avx512: bool,
}

#[cfg(target_arch = "x86_64")]
fn cpu_id() -> CpuId {
    use std::arch::x86_64::__cpuid;
    // Leaves 0 and 1 exist on every x86_64 CPU.
    let (l0, l1) = (__cpuid(0), __cpuid(1));
    let mut vendor = [0u8; 12];
    for (i, r) in [l0.ebx, l0.edx, l0.ecx].into_iter().enumerate() {
        vendor[4 * i..4 * i + 4].copy_from_slice(&r.to_le_bytes());
    }
    CpuId {
        vendor,
        signature: l1.eax,
        avx512: is_x86_feature_detected!("avx512f"),
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn cpu_id() -> CpuId {
    CpuId {
        vendor: [0; 12],
        signature: 0,
        avx512: false,
    }
}

/// Whether software prefetch speeds up the one-token kernels over repacked weights on this
/// CPU. Prefetch does on the Xeon ([`PREFETCH_AHEAD`]), and stays on for Zen 5, whose kernels
/// were tuned with it (not measured without it there; Zen 3 has no repacked kernels). On Zen 4
/// (AMD family 0x19 with AVX-512) the hardware prefetchers do better alone: generation ran
/// up to 1.2x faster without the hints (BENCHMARKS.md, session 14).
pub(crate) fn hints_help(cpu: &CpuId) -> bool {
    let base = (cpu.signature >> 8) & 0xf;
    let family = if base == 0xf {
        base + ((cpu.signature >> 20) & 0xff)
    } else {
        base
    };
    let zen4 = &cpu.vendor == b"AuthenticAMD" && family == 0x19 && cpu.avx512;
    !zen4
}

/// Hint that the cache lines of `[p + PREFETCH_AHEAD, .. + bytes)` will be read soon (to L2).
/// A hint only: the address may lie past the end of the data, and nothing is dereferenced.
#[inline(always)]
pub(crate) fn prefetch_ahead(p: *const u8, bytes: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        let mut off = 0;
        while off < bytes {
            // SAFETY: prefetch is SSE (baseline on x86_64) and never faults.
            #[allow(unused_unsafe)]
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T1 }>(
                    p.wrapping_add(PREFETCH_AHEAD + off).cast(),
                )
            };
            off += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, bytes);
}

/// Whether a kernel over repacked weights (`x16`) taking `N` tokens per call sends prefetch
/// hints ([`prefetch_column`]; asked once per call, outside its loop): one-token calls
/// (generation) where [`prefetch_hints`] says so, calls for several tokens (prompts, batches)
/// always. On Zen 4 the one-token kernels stream faster without them, the 4- and 8-token ones
/// faster with them (BENCHMARKS.md, session 14).
#[inline(always)]
pub(crate) fn column_hints<const N: usize>() -> bool {
    N > 1 || prefetch_hints()
}

/// [`prefetch_ahead`] where `on` ([`column_hints`]).
#[inline(always)]
pub(crate) fn prefetch_column(on: bool, p: *const u8, bytes: usize) {
    if on {
        prefetch_ahead(p, bytes);
    }
}

/// [`prefetch_ahead`] of one weight block, for kernels that call it block by block as they
/// read: a burst of hints for a whole group of K-quant blocks (18 to 27 cache lines) at the
/// group's start slowed the stream from memory (x16 Q4_K on Zen 5: tg 1.2x once spread).
#[inline(always)]
pub(crate) fn prefetch_block<B>(b: &B) {
    prefetch_ahead((b as *const B).cast(), std::mem::size_of::<B>());
}

/// f16 bits to f32, lane-wise, in plain std::simd (same values as `f16_bits_to_f32`).
#[inline(always)]
pub(crate) fn f16_to_f32_portable(h: u16x8) -> f32x8 {
    let h = h.cast::<u32>();
    let sign = (h & Simd::splat(0x8000)) << Simd::splat(16);
    let exp = h & Simd::splat(0x7c00);
    let man = h & Simd::splat(0x03ff);
    // Normal numbers: rebias the exponent (127 - 15 = 112 = 0x1c000 >> 10).
    let normal = ((h & Simd::splat(0x7fff)) + Simd::splat(0x1c000)) << Simd::splat(13);
    // Subnormals: man * 2^-24 is exact in f32.
    let sub = (man.cast::<f32>() * Simd::splat(1.0 / 16_777_216.0)).to_bits();
    let infnan = Simd::splat(0x7f80_0000) | (man << Simd::splat(13));
    let bits = exp
        .simd_eq(Simd::splat(0))
        .select(sub, exp.simd_eq(Simd::splat(0x7c00)).select(infnan, normal));
    Simd::from_bits(bits | sign)
}

/// 8 little-endian f32 from 32 bytes (no alignment needed).
#[inline(always)]
pub(crate) fn load_f32x8_le(b: &[u8; 32]) -> f32x8 {
    // SAFETY: `b` is exactly 32 readable bytes and any bit pattern is a valid u32x8.
    let v: u32x8 = unsafe { std::ptr::read_unaligned(b.as_ptr().cast::<u32x8>()) };
    #[cfg(target_endian = "big")]
    let v = v.swap_bytes();
    f32x8::from_bits(v)
}

/// `max |x|` over a block, or `None` if the block holds a NaN. Lane-wise max then a lane
/// reduction: no serial dependency chain, and the maximum of a set is the same whatever the
/// order (`|x|` has no negative zeros).
#[inline(always)]
pub(crate) fn block_abs_max(x: &[f32; 32]) -> Option<f32> {
    let v: [f32x8; 4] = std::array::from_fn(|k| f32x8::from_slice(&x[8 * k..]).abs());
    if (v[0].is_nan() | v[1].is_nan() | v[2].is_nan() | v[3].is_nan()).any() {
        return None;
    }
    Some(
        v[0].simd_max(v[1])
            .simd_max(v[2].simd_max(v[3]))
            .reduce_max(),
    )
}

/// `(min, max)` over a block, or `None` if the block holds a NaN. Only the sign of a zero
/// result can depend on the order; callers fix it up.
#[inline(always)]
pub(crate) fn block_min_max(x: &[f32; 32]) -> Option<(f32, f32)> {
    let v: [f32x8; 4] = std::array::from_fn(|k| f32x8::from_slice(&x[8 * k..]));
    if (v[0].is_nan() | v[1].is_nan() | v[2].is_nan() | v[3].is_nan()).any() {
        return None;
    }
    let min = v[0]
        .simd_min(v[1])
        .simd_min(v[2].simd_min(v[3]))
        .reduce_min();
    let max = v[0]
        .simd_max(v[1])
        .simd_max(v[2].simd_max(v[3]))
        .reduce_max();
    Some((min, max))
}

/// numpy's `abs(x).argmax()` over a block: the first index of the largest magnitude, or the
/// first NaN if the block holds one (the choice of the gguf encoders that scale by the signed
/// extreme: Q4_0, Q5_0).
#[inline(always)]
pub(crate) fn np_abs_argmax(x: &[f32; 32]) -> usize {
    match block_abs_max(x) {
        Some(amax) => x.iter().position(|v| v.abs() == amax).unwrap(),
        None => x.iter().position(|v| v.is_nan()).unwrap(),
    }
}

/// numpy's `(x.min(), x.max())` over a block (Q4_1, Q5_1): NaN propagates (we keep the first
/// NaN). Between equal values the first one wins, which only decides the sign of a zero:
/// numpy's SIMD reduction picks one by position in a machine-dependent way; ggml's C
/// reference keeps the first, as we do.
#[inline(always)]
pub(crate) fn np_min_max(x: &[f32; 32]) -> (f32, f32) {
    match block_min_max(x) {
        Some((min, max)) => {
            let first_zero = || *x.iter().find(|v| **v == 0.0).unwrap();
            (
                if min == 0.0 { first_zero() } else { min },
                if max == 0.0 { first_zero() } else { max },
            )
        }
        None => {
            let nan = *x.iter().find(|v| v.is_nan()).unwrap();
            (nan, nan)
        }
    }
}

// numpy float32 semantics the quantizers need, scalar (the readable definition, test-only:
// checked against the lane-wise versions) and 8 lanes at a time (what the quantizers use:
// Rust's saturating `f32 as i32` does not vectorize).

/// `np.trunc(t).astype(np.uint8)` as numpy does it on x86: truncate to int32 and keep the
/// low byte; NaN and values outside the int32 range give 0 (any such finite f32 is a multiple
/// of 256, so the low byte is 0 whichever integer width numpy goes through).
#[cfg(test)]
pub(crate) fn np_trunc_u8(t: f32) -> u8 {
    if t.abs() < 2_147_483_648.0 {
        t as i32 as u8
    } else {
        0
    }
}

/// gguf's `np_roundf`: round half away from zero, computed the way it does:
/// `sign(n) * (floor(|n|) + floor(2 * (|n| - floor(|n|))))`; NaN for NaN and infinities.
#[cfg(test)]
pub(crate) fn np_roundf(n: f32) -> f32 {
    let a = n.abs();
    let floored = a.floor();
    let b = floored + (2.0 * (a - floored)).floor();
    let sign = if n > 0.0 {
        1.0
    } else if n < 0.0 {
        -1.0
    } else if n.is_nan() {
        f32::NAN
    } else {
        0.0
    };
    sign * b
}

/// `np_trunc_u8`, lane-wise.
#[inline(always)]
pub(crate) fn np_trunc_u8_x8(t: f32x8) -> u8x8 {
    let in_range = t.abs().simd_lt(f32x8::splat(2_147_483_648.0));
    // Clamp into the i32 range first (simd_max/min return the non-NaN operand, so NaN lanes
    // become finite too); those lanes are then replaced by 0.
    let c = t
        .simd_max(f32x8::splat(-2_147_483_520.0))
        .simd_min(f32x8::splat(2_147_483_520.0));
    // SAFETY: every lane of `c` is finite and within the i32 range.
    let i: i32x8 = unsafe { c.to_int_unchecked() };
    in_range.select(i, i32x8::splat(0)).cast::<u8>()
}

/// `floor` of lanes that are `>= 0` or NaN: below 2^23 truncation is floor; from 2^23 on
/// every f32 is an integer (inf and NaN stay themselves).
#[inline(always)]
fn floor_nonneg_x8(a: f32x8) -> f32x8 {
    let small = a.simd_lt(f32x8::splat(8_388_608.0));
    // Finite for every lane, NaN included (simd_min returns the non-NaN operand).
    let c = a.simd_min(f32x8::splat(8_388_607.0));
    // SAFETY: every lane of `c` is finite and within the i32 range.
    let t: i32x8 = unsafe { c.to_int_unchecked() };
    small.select(t.cast::<f32>(), a)
}

/// `np_roundf`, lane-wise, up to the sign of a zero result (`copysign` instead of
/// `sign(n) * b`), which the integer cast that always follows erases.
#[inline(always)]
pub(crate) fn np_roundf_x8(n: f32x8) -> f32x8 {
    let a = n.abs();
    let floored = floor_nonneg_x8(a);
    let b = floored + floor_nonneg_x8(f32x8::splat(2.0) * (a - floored));
    b.copysign(n)
}

#[cfg(any(target_arch = "x86", target_arch = "x86_64"))]
pub(crate) mod x86 {
    //! AVX2 (and AVX-512) helpers. They are `#[inline(always)]` without `#[target_feature]`
    //! of their own: they are only ever inlined into `#[target_feature(enable = "avx2,fma,f16c")]`
    //! entry points (`dispatch::dot_avx2` and the like; `dispatch::dot_avx512` enables a
    //! superset), where the intrinsics then inline too. (A `#[target_feature]`
    //! helper cannot be `inline(always)`, and LLVM declined to inline the group kernels.)
    use std::simd::prelude::*;

    #[cfg(target_arch = "x86")]
    pub(crate) use std::arch::x86::*;
    #[cfg(target_arch = "x86_64")]
    pub(crate) use std::arch::x86_64::*;

    /// Lane `b` of the result = sum of the 8 i32 lanes of `v[b]` (exact: integer adds).
    #[inline(always)]
    pub(crate) unsafe fn hsum8_epi32(v: [__m256i; 8]) -> i32x8 {
        // hadd twice gives each vector's low-half and high-half sums; a cross-lane permute
        // lines them up per vector and one add finishes.
        let h01 = _mm256_hadd_epi32(v[0], v[1]);
        let h23 = _mm256_hadd_epi32(v[2], v[3]);
        let h45 = _mm256_hadd_epi32(v[4], v[5]);
        let h67 = _mm256_hadd_epi32(v[6], v[7]);
        let h0123 = _mm256_hadd_epi32(h01, h23);
        let h4567 = _mm256_hadd_epi32(h45, h67);
        let lo = _mm256_permute2x128_si256(h0123, h4567, 0x20);
        let hi = _mm256_permute2x128_si256(h0123, h4567, 0x31);
        i32x8::from(_mm256_add_epi32(lo, hi))
    }

    /// 64 bytes from two unaligned 32-byte halves (`lo` in bytes 0..32). AVX-512 F.
    #[inline(always)]
    pub(crate) unsafe fn load32x2(lo: &[u8; 32], hi: &[u8; 32]) -> __m512i {
        _mm512_inserti64x4::<1>(_mm512_castsi256_si512(load32(lo)), load32(hi))
    }

    /// Lane `b` of the result = sum of the 8 i32 lanes of block `b`, where `z[k]` holds block
    /// `2k` in its low 256 bits and block `2k + 1` in its high 256 bits (exact: integer adds,
    /// in any order). AVX-512 F.
    #[inline(always)]
    pub(crate) unsafe fn hsum_pairs_epi32(z: [__m512i; 4]) -> i32x8 {
        // Per 128-bit lane: a = [z0 0+2, z1 0+2, z0 1+3, z1 1+3], b the same for z2, z3.
        let a = _mm512_add_epi32(
            _mm512_unpacklo_epi32(z[0], z[1]),
            _mm512_unpackhi_epi32(z[0], z[1]),
        );
        let b = _mm512_add_epi32(
            _mm512_unpacklo_epi32(z[2], z[3]),
            _mm512_unpackhi_epi32(z[2], z[3]),
        );
        // 128-bit lane j of c: the sums of lane j of z0, z1, z2, z3.
        let c = _mm512_add_epi32(_mm512_unpacklo_epi64(a, b), _mm512_unpackhi_epi64(a, b));
        // Lane 0 of s: lanes 0 + 1 (the low blocks 2k); lane 2: lanes 2 + 3 (blocks 2k + 1).
        let s = _mm512_add_epi32(c, _mm512_shuffle_i64x2::<0b10_11_00_01>(c, c));
        let idx = _mm512_setr_epi32(0, 8, 1, 9, 2, 10, 3, 11, 0, 0, 0, 0, 0, 0, 0, 0);
        i32x8::from(_mm512_castsi512_si256(_mm512_permutexvar_epi32(idx, s)))
    }

    /// f16 bits to f32 with F16C. Equal to the portable conversion except for signalling NaN
    /// inputs, which the hardware quiets (results are NaN either way).
    #[inline(always)]
    pub(crate) unsafe fn f16x8_to_f32(h: u16x8) -> f32x8 {
        f32x8::from(_mm256_cvtph_ps(__m128i::from(h)))
    }

    /// 16 unaligned bytes.
    #[inline(always)]
    pub(crate) unsafe fn load16(b: &[u8; 16]) -> __m128i {
        _mm_loadu_si128(b.as_ptr().cast())
    }

    /// 32 unaligned bytes.
    #[inline(always)]
    pub(crate) unsafe fn load32(b: &[u8; 32]) -> __m256i {
        _mm256_loadu_si256(b.as_ptr().cast())
    }
}

/// `&b[start..start + N]` as an array reference (bounds-checked).
#[inline(always)]
pub(crate) fn arr<const N: usize>(b: &[u8], start: usize) -> &[u8; N] {
    b[start..start + N].try_into().unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::tests_util::Rng;

    /// Prefetch hints go off on Zen 4 only: AMD, family 0x19 (base 0xf + extended 0x0a), with
    /// AVX-512; the same family without AVX-512 is Zen 3.
    #[test]
    fn prefetch_hints_stay_on_except_on_zen_4() {
        let cpu = |vendor: &[u8; 12], signature: u32, avx512: bool| CpuId {
            vendor: *vendor,
            signature,
            avx512,
        };
        let (amd, intel) = (b"AuthenticAMD", b"GenuineIntel");
        assert!(
            !hints_help(&cpu(amd, 0x00a1_0f11, true)),
            "Zen 4 EPYC (Genoa)"
        );
        assert!(!hints_help(&cpu(amd, 0x00a6_0f12, true)), "Zen 4 Ryzen");
        assert!(
            hints_help(&cpu(amd, 0x00a0_0f11, false)),
            "Zen 3 EPYC (Milan)"
        );
        assert!(
            hints_help(&cpu(amd, 0x00b0_0f21, true)),
            "Zen 5 EPYC (family 0x1a)"
        );
        assert!(
            hints_help(&cpu(intel, 0x0008_06f8, true)),
            "Sapphire Rapids Xeon"
        );
        assert!(hints_help(&cpu(intel, 0x00a1_0f11, true)), "not AMD");
        eprintln!(
            "this CPU ({:?}): prefetch hints {}",
            cpu_id(),
            hints_help(&cpu_id())
        );
    }

    fn interesting_f32(rng: &mut Rng) -> Vec<f32> {
        let mut v = vec![
            0.0,
            -0.0,
            0.5,
            -0.5,
            1.5,
            -2.5,
            0.49999997,
            126.5,
            127.49999,
            -127.5,
            255.9,
            256.0,
            -1.0,
            8_388_607.5,
            8_388_608.0,
            16_777_217.0,
            2_147_483_520.0,
            -2_147_483_520.0,
            2_147_483_648.0,
            -2_147_483_648.0,
            1e10,
            -1e10,
            1e38,
            f32::MAX,
            f32::MIN,
            f32::MIN_POSITIVE,
            1e-45,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            -f32::NAN,
        ];
        for _ in 0..200_000 {
            v.push(f32::from_bits(rng.next_u64() as u32));
            v.push((rng.unit() - 0.5) * 300.0);
            v.push(((rng.next_u64() % 600) as f32 - 300.0) * 0.5);
        }
        while v.len() % 8 != 0 {
            v.push(0.0);
        }
        v
    }

    #[test]
    fn lane_wise_numpy_helpers_match_scalar() {
        let mut rng = Rng::new(5);
        let v = interesting_f32(&mut rng);
        for c in v.chunks_exact(8) {
            let x = f32x8::from_slice(c);
            let t = np_trunc_u8_x8(x).to_array();
            let r = np_roundf_x8(x).to_array();
            for i in 0..8 {
                assert_eq!(t[i], np_trunc_u8(c[i]), "trunc {:e}", c[i]);
                let s = np_roundf(c[i]);
                if s.is_nan() {
                    assert!(r[i].is_nan(), "roundf {:e}", c[i]);
                } else if s == 0.0 {
                    assert_eq!(r[i], 0.0);
                } else {
                    assert_eq!(r[i].to_bits(), s.to_bits(), "roundf {:e}", c[i]);
                }
                assert_eq!(np_trunc_u8(r[i]), np_trunc_u8(s));
            }
        }
    }

    #[test]
    fn block_reductions_match_scalar() {
        let mut rng = Rng::new(6);
        let v = interesting_f32(&mut rng);
        for c in v.chunks_exact(32) {
            let x: &[f32; 32] = c.try_into().unwrap();
            let has_nan = x.iter().any(|v| v.is_nan());
            let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
            let min = x.iter().fold(f32::INFINITY, |m, &v| m.min(v));
            let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            match block_abs_max(x) {
                None => assert!(has_nan),
                Some(a) => assert!(!has_nan && a == amax),
            }
            match block_min_max(x) {
                None => assert!(has_nan),
                Some((lo, hi)) => assert!(!has_nan && lo == min && hi == max),
            }
        }
    }

    #[test]
    fn reductions_follow_the_documented_tree() {
        // Values chosen so that any other association gives a different f32.
        let v = [1e8, 1.0, -1e8, 1.0, 3.0, 1.0, 5.0, 1.0];
        // ((v0+v4) + (v2+v6)) + ((v1+v5) + (v3+v7))
        let expect = ((1e8f32 + 3.0) + (-1e8f32 + 5.0)) + ((1.0f32 + 1.0) + (1.0f32 + 1.0));
        assert_eq!(reduce8(v), expect);
        let mut acc = [0f32; 32];
        acc[0] = 1e8;
        acc[8] = 1.0;
        acc[16] = -1e8;
        acc[24] = 1.0;
        assert_eq!(reduce32(&acc), (1e8f32 + 1.0) + (-1e8f32 + 1.0));
    }
}
